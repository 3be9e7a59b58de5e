"""Catalogue publishing: WooCommerce products become Mirakl offers, and stop being offers.

WooCommerce is the master of the catalogue. For one marketplace a cycle has two steps:

:meth:`CataloguePublish.follow_imports`
    Settles the offer imports (OF24 → OF02, OF03) and product imports (P41 → P42, P44, P45)
    of earlier cycles: per SKU, what Mirakl accepted becomes the offer the ledger keeps; what it
    refused becomes an exception with the operator's reason. An offer refused because the
    operator does not know its product goes to the product import (when enabled); a product
    the operator integrated becomes an offer at the next publish.

:meth:`CataloguePublish.publish`
    Reads the selected products (``catalogue.select`` in ``marketplaces.yaml``: categories,
    tags, SKUs; nothing by default), builds each sellable unit's **complete** offer (OF24 resets
    every field it is not sent) and sends, in one OF24 call, the offers to create, those whose
    fields changed and those to retire (deselected, deleted or not published: deleted, or kept
    at zero stock, per the marketplace's policy). Products the operator lacks go out in one P41
    file. With ``dry_run`` it only says what it would do.

Stock belongs to the inventory flow (STO01): an offer is created with its available-to-promise
quantity, and later updates carry the quantity the ledger says Mirakl holds, never a new one.
Every call asks the ledger's call budget (OF24 once a minute, P41 every 15 minutes): a cycle
that comes too early sends nothing and the next one sends it all. A SKU with an import in
flight is not sent again, and an offer Mirakl refused is sent again only once it changed.

Writes (OF24, P41) go through the shared write path (:mod:`include.woo_mirakl.writes`). One
record's failure stays with it: a variable product whose variations cannot be read (404, 403,
persistent 5xx) is an exception on that product, and the cycle retires nothing it could not see;
an import whose status or report keeps failing is given up on after a few cycles (its complete
offers are sent again) without holding up the others. Only refused credentials or an
unreachable API fail the task.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from include.woo_mirakl.budgets import BudgetExceeded, LedgerCallBudget
from include.woo_mirakl.clients.http import ApiError, ClientError
from include.woo_mirakl.clients.mirakl import MiraklClient
from include.woo_mirakl.config import CONFIG_DIR, CataloguePolicy, CatalogueSelection, ConfigError, Marketplace
from include.woo_mirakl.ledger import Ledger
from include.woo_mirakl.stock import NOT_OFFERS, WooItem, offer_target, offer_targets
from include.woo_mirakl.writes import DONE, FINAL, UNCERTAIN, Write, WriteResult, Writer, concerns_every_record

log = logging.getLogger(__name__)

FLOW = "mirakl_catalogue_publish"

# Exception kinds this flow raises, and resolves when they clear.
SKU_MISSING = "catalogue_sku_missing"  # key: WooCommerce id
REFERENCE_MISSING = "catalogue_product_reference_missing"  # key: SKU
PRICE_MISSING = "catalogue_price_missing"
OFFER_REJECTED = "catalogue_offer_rejected"
PRODUCT_UNKNOWN = "catalogue_product_unknown"  # the operator lacks the product and product import is off
PRODUCT_REJECTED = "catalogue_product_rejected"
PRODUCT_UNREADABLE = "catalogue_product_unreadable"  # one product's variations could not be read: key its id
IMPORT_UNREADABLE = "catalogue_import_unreadable"  # one import's status or report kept failing
# The inventory flow's "no offer on Mirakl" exception: a created offer clears it.
INVENTORY_MISSING_IN_MIRAKL = "unmatched_sku_missing_in_mirakl"
# Mirakl orders whose units WooCommerce has not reserved yet (as the inventory flow counts them).
OPEN_ORDER_STATES = ("STAGING", "WAITING_ACCEPTANCE", "WAITING_DEBIT", "WAITING_DEBIT_PAYMENT", "SHIPPING")

OFFER_BATCH = 1000  # lines per OF24 call; the rest waits for the next minute
DESCRIPTION_MAX = 2000
_UNKNOWN_PRODUCT = re.compile(r"product (does not|doesn't) exist|unknown product|product .*not found", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")


# ---- pure functions: selection, offers, products -------------------------------------------------

def _names(terms: Iterable[dict]) -> set[str]:
    """Every way a category or tag can be named in the configuration: id, slug, name."""
    out: set[str] = set()
    for term in terms or []:
        for key in ("id", "slug", "name"):
            if term.get(key) not in (None, ""):
                out.add(str(term[key]).casefold())
    return out


def selected(product: Mapping[str, Any], selection: CatalogueSelection) -> bool:
    """Whether a WooCommerce product (a parent for variations) is in the marketplace's selection."""
    wanted_categories = {c.casefold() for c in selection.categories}
    wanted_tags = {t.casefold() for t in selection.tags}
    return bool(
        (wanted_categories & _names(product.get("categories") or []))
        or (wanted_tags & _names(product.get("tags") or []))
        or (product.get("sku") and str(product["sku"]) in selection.skus)
    )


def plain_text(value: Any, limit: int = DESCRIPTION_MAX) -> str:
    """WooCommerce HTML as the plain text an offer description takes."""
    text = _SPACES.sub(" ", html.unescape(_TAGS.sub(" ", str(value or "")))).strip()
    return text[:limit]


def _meta(item: Mapping[str, Any], key: str) -> str:
    for entry in item.get("meta_data") or []:
        if entry.get("key") == key and entry.get("value") not in (None, ""):
            return str(entry["value"]).strip()
    return ""


def product_reference(item: Mapping[str, Any], parent: Mapping[str, Any] | None, policy: CataloguePolicy) -> str:
    """The product an offer points at (``product_id``), or "" when the product has none."""
    if policy.product_id_source == "shop_sku":
        return str(item.get("sku") or "").strip()
    if policy.product_id_source == "meta":
        return _meta(item, policy.product_id_meta_key)
    return str(item.get("global_unique_id") or "").strip()


def offer_digest(offer: Mapping[str, Any]) -> str:
    """What identifies an offer's content, quantity left out (stock belongs to the inventory flow)."""
    content = {k: v for k, v in offer.items() if k not in ("quantity", "update_delete")}
    text = repr(sorted((k, str(v)) for k, v in content.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Unit:
    """One sellable unit of the selection: a simple product or a variation, with its parent."""

    item: dict
    parent: dict | None = None

    @property
    def sku(self) -> str:
        return str(self.item.get("sku") or "").strip()

    @property
    def woo_id(self) -> int:
        return int(self.item["id"])

    def inherited(self, key: str) -> Any:
        """A field of the unit, or of its parent when the unit has none (variations)."""
        value = self.item.get(key)
        if value in (None, "", []) and self.parent is not None:
            value = self.parent.get(key)
        return value

    def meta(self, key: str) -> str:
        return _meta(self.item, key) or (_meta(self.parent, key) if self.parent else "")

    @property
    def woo(self) -> WooItem:
        """The unit's stock and price fields."""
        return WooItem.from_api({**self.item, "type": self.item.get("type") or ("variation" if self.parent else "simple")})

    @property
    def sellable(self) -> bool:
        statuses = [self.item.get("status") or "publish"]
        if self.parent is not None:
            statuses.append(self.parent.get("status") or "publish")
        return all(s == "publish" for s in statuses)


def build_offer(unit: Unit, marketplace: Marketplace, product_id: str, quantity: int) -> dict[str, Any]:
    """The complete OF24 line for a unit: every field the flow manages, defaults filled in."""
    policy = marketplace.catalogue
    target = offer_target(unit.woo, marketplace)
    if target.price is None:
        raise ValueError(f"WooCommerce product {unit.woo_id} ({unit.sku}) has no price")
    description = unit.item.get("short_description") or unit.item.get("description")
    if not description and unit.parent is not None:
        description = unit.parent.get("short_description") or unit.parent.get("description")
    leadtime = unit.meta(policy.leadtime_meta_key) if policy.leadtime_meta_key else ""
    offer: dict[str, Any] = {
        "shop_sku": unit.sku,
        "product_id": product_id,
        "product_id_type": policy.product_id_type,
        "price": float(target.price),
        "quantity": int(quantity),
        "state_code": policy.state_code,
        "update_delete": "update",
        "description": plain_text(description),
        "leadtime_to_ship": int(leadtime) if leadtime.isdigit() else policy.leadtime_to_ship,
    }
    if policy.logistic_class:
        offer["logistic_class"] = policy.logistic_class
    return offer


@dataclass(frozen=True)
class AttributeMapping:
    """WooCommerce fields → the operator's product attribute codes (``include/config``)."""

    identifier: str
    attributes: tuple[tuple[str, str], ...]  # (operator code, WooCommerce source), in column order

    @classmethod
    def load(cls, filename: str) -> AttributeMapping:
        path = Path(filename) if Path(filename).is_absolute() else CONFIG_DIR / filename
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"product attribute mapping not found: {path}") from exc
        attributes = data.get("attributes")
        if not isinstance(attributes, dict) or not attributes:
            raise ConfigError(f"{path}: 'attributes' must map operator attribute codes to WooCommerce fields")
        identifier = str(data.get("identifier") or "")
        if attributes.get(identifier) != "sku":
            raise ConfigError(f"{path}: 'identifier' must name the attribute mapped to the WooCommerce sku")
        return cls(identifier, tuple((str(k), str(v)) for k, v in attributes.items()))

    def row(self, unit: Unit, product_id: str) -> dict[str, str]:
        return {code: _source(unit, source, product_id) for code, source in self.attributes}

    def file(self, rows: Iterable[Mapping[str, str]]) -> bytes:
        """The P41 file: the operator's codes as header, one product a line."""
        out = io.StringIO()
        writer = csv.writer(out, delimiter=";", lineterminator="\n")
        writer.writerow([code for code, _ in self.attributes])
        for row in rows:
            writer.writerow([row.get(code, "") for code, _ in self.attributes])
        return out.getvalue().encode("utf-8")


def _source(unit: Unit, source: str, product_id: str) -> str:
    """One WooCommerce value named by an attribute mapping source."""
    if source == "product_id":
        return product_id
    if source.startswith("meta:"):
        return unit.meta(source[5:])
    if source.startswith("attribute:"):
        name = source[10:].casefold()
        for attribute in unit.item.get("attributes") or []:
            if str(attribute.get("name", "")).casefold() == name:
                return str(attribute.get("option") or ", ".join(attribute.get("options") or []))
        return ""
    if source == "category":
        categories = unit.inherited("categories") or []
        return str(categories[0].get("name") or "") if categories else ""
    if source == "tags":
        return ", ".join(str(t.get("name") or "") for t in unit.inherited("tags") or [])
    if source == "image":
        images = unit.item.get("images") or ([unit.item["image"]] if unit.item.get("image") else [])
        if not images and unit.parent is not None:
            images = unit.parent.get("images") or []
        return str(images[0].get("src") or "") if images else ""
    if source in ("description", "short_description"):
        return plain_text(unit.inherited(source))
    if source == "name" and unit.parent is not None:
        return str(unit.item.get("name") or unit.parent.get("name") or "")
    return str(unit.inherited(source) or "")


# ---- planning -----------------------------------------------------------------------------------

@dataclass
class Desired:
    """What the selection says a SKU's offer should be (or why it cannot be one)."""

    sku: str
    unit: Unit
    product_id: str
    offer: dict[str, Any]


@dataclass
class Plan:
    """One cycle's decisions: OF24 lines by SKU and action, and the products for P41."""

    create: dict[str, dict] = field(default_factory=dict)
    update: dict[str, dict] = field(default_factory=dict)
    retire: dict[str, dict] = field(default_factory=dict)
    products: dict[str, Desired] = field(default_factory=dict)

    def lines(self) -> list[tuple[str, str, dict]]:
        """(action, sku, OF24 line), creations first."""
        return ([("create", s, o) for s, o in self.create.items()] + [("update", s, o) for s, o in self.update.items()]
                + [("retire", s, o) for s, o in self.retire.items()])

    def summary(self, limit: int = 200) -> dict[str, Any]:
        return {
            "create": sorted(self.create)[:limit], "update": sorted(self.update)[:limit],
            "retire": sorted(self.retire)[:limit], "product_import": sorted(self.products)[:limit],
            "counts": {"create": len(self.create), "update": len(self.update), "retire": len(self.retire),
                       "product_import": len(self.products)},
        }


def retire_line(offer: Mapping[str, Any], policy: str) -> dict[str, Any]:
    """The complete offer, deleted or at zero stock."""
    if policy == "delete":
        return {**offer, "update_delete": "delete"}
    return {**offer, "quantity": 0, "update_delete": "update"}


def plan_changes(
    desired: Mapping[str, Desired], states: Mapping[str, dict], retire_policy: str, product_import: bool,
    retire: bool = True,
) -> Plan:
    """Compare the selection with what the ledger says Mirakl holds; pure, so it can be tested alone.

    ``states`` is the flow's per-SKU state: ``offer`` (the complete offer Mirakl accepted, or
    None), ``retired``, ``pending`` (an import in flight), ``refused`` (digest and reason of
    the last refused offer), ``product`` (None, needed, importing, rejected, integrated) and
    ``product_digest`` (of the product row last refused). With ``retire`` False (a product of
    the selection could not be read) no offer is retired: its variations may be among them.
    """
    plan = Plan()
    for sku, want in desired.items():
        state = states.get(sku) or {}
        if state.get("pending"):
            continue
        digest = offer_digest(want.offer)
        product = state.get("product")
        if product in ("needed", "importing", "rejected") and state.get("refused_reference") == want.product_id:
            if product == "needed" and product_import:
                plan.products[sku] = want
            elif product == "rejected" and product_import and state.get("product_digest") != _row_digest(want):
                plan.products[sku] = want
            continue
        live = state.get("offer") if not state.get("retired") else None
        if live is not None:
            if offer_digest(live) != digest:
                plan.update[sku] = want.offer
            continue
        refused = state.get("refused") or {}
        if refused.get("digest") == digest:
            continue
        plan.create[sku] = want.offer
    for sku, state in states.items() if retire else ():
        if sku in desired or state.get("pending") or state.get("retired") or not state.get("offer"):
            continue
        plan.retire[sku] = retire_line(state["offer"], retire_policy)
    return plan


def _row_digest(want: Desired) -> str:
    return hashlib.sha256(repr(sorted(want.unit.item.items(), key=lambda kv: kv[0])).encode()).hexdigest()


# ---- the flow -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchOutcome:
    """What became of one OF24 import: refused lines with the reason, and lines to send again."""

    refused: Mapping[str, str] = field(default_factory=dict)
    retry: frozenset[str] = frozenset()
    retry_all: bool = False


@dataclass(frozen=True)
class CatalogueSettings:
    """Tuning of the flow."""

    # An OF24 slot opening within this many seconds is waited for (scheduler jitter).
    send_wait: float = 10.0
    # Cycles in a row one import's status or report may fail before its lines are sent again.
    follow_attempts: int = 5


class CataloguePublish:
    """The catalogue publish flow of one marketplace (plain Python: no scheduler needed)."""

    def __init__(
        self,
        marketplace: Marketplace,
        woo: Any,
        mirakl: MiraklClient,
        ledger: Ledger,
        budget: LedgerCallBudget,
        *,
        settings: CatalogueSettings | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.marketplace = marketplace
        self.policy = marketplace.catalogue
        self.woo = woo
        self.mirakl = mirakl
        self.ledger = ledger
        self.budget = budget
        self.settings = settings or CatalogueSettings()
        self.clock = clock or budget.clock
        self._mapping: AttributeMapping | None = None
        self.writer = Writer(ledger, marketplace.name)

    @property
    def name(self) -> str:
        return self.marketplace.name

    @property
    def mapping(self) -> AttributeMapping:
        if self._mapping is None:
            self._mapping = AttributeMapping.load(self.policy.attributes_file)
        return self._mapping

    # ---- ledger state --------------------------------------------------------------------------
    def states(self) -> dict[str, dict]:
        """Per SKU: the offer Mirakl holds and what is in flight (see :func:`plan_changes`)."""
        return self.ledger.get_cursor(FLOW, self.name, "offers", {}) or {}

    def _save_states(self, states: Mapping[str, dict]) -> None:
        self.ledger.set_cursor(FLOW, self.name, "offers", dict(states))

    def _pending(self, name: str) -> list[dict]:
        return self.ledger.get_cursor(FLOW, self.name, name, []) or []

    def _raise(self, kind: str, key: str, detail: Mapping[str, Any], severity: str = "warning") -> None:
        self.ledger.raise_exception(kind, key, dict(detail), self.name, severity=severity)

    def _resolve(self, kinds: Iterable[str], key: str) -> None:
        for kind in kinds:
            self.ledger.resolve_exception(kind, key, self.name)

    # ---- step 1: follow earlier imports ------------------------------------------------------------
    def follow_imports(self) -> dict[str, int]:
        """Settle finished OF24 and P41 imports; unfinished ones (or budget-bound calls) wait."""
        summary = {"offers_accepted": 0, "offers_refused": 0, "products_integrated": 0, "products_rejected": 0,
                   "waiting": 0}
        states = self.states()
        batches = self._follow_offer_batches(states, summary)
        products = self._follow_product_imports(states, summary)
        self._save_states(states)
        self.ledger.set_cursor(FLOW, self.name, "offer_batches", batches)
        self.ledger.set_cursor(FLOW, self.name, "product_imports", products)
        summary["waiting"] = len(batches) + len(products)
        return summary

    def _follow_offer_batches(self, states: dict[str, dict], summary: dict[str, int]) -> list[dict]:
        waiting = []
        for batch in _failing_last(self._pending("offer_batches")):
            try:
                outcome = self._offer_batch_outcome(batch, states)
            except (BudgetExceeded, ClientError) as error:  # OF02/OF03 once a minute: the next cycle asks again
                # OF24 sends complete offers: sending them again after giving up on one is harmless
                outcome = BatchOutcome(retry_all=True) if self._give_up(batch, "OF24", error) else None
            if outcome is None:
                waiting.append(batch)
                continue
            for sku in batch["skus"]:
                state = states.setdefault(sku, {})
                pending = state.get("pending")
                if not pending or pending.get("batch") != batch["key"]:
                    continue
                del state["pending"]
                if outcome.retry_all or sku in outcome.retry:
                    continue  # not applied: planned (and sent) again by the next publish
                if sku in outcome.refused:
                    self._refused(sku, state, pending, outcome.refused[sku])
                    summary["offers_refused"] += 1
                else:
                    self._accepted(sku, state, pending)
                    summary["offers_accepted"] += 1
        return waiting

    def _offer_batch_outcome(self, batch: dict, states: Mapping[str, dict]) -> BatchOutcome | None:
        """What became of an OF24 import, or None while Mirakl is still at it."""
        if not batch.get("import_id"):
            return self._verify_uncertain(batch, states)
        try:
            status = self.mirakl.offer_import_status(batch["import_id"])
        except ApiError as error:
            if error.status == 404:
                return BatchOutcome(retry_all=True)
            raise
        if not status.finished:
            return None
        if (status.status or "").upper() != "COMPLETE":
            log.warning("%s: OF24 import %s ended %s (%s); its offers are sent again", self.name,
                        batch["import_id"], status.status, status.reason_status)
            return BatchOutcome(retry_all=True)
        if not status.has_error_report:
            return BatchOutcome()
        report = self.mirakl.offer_error_report(batch["import_id"])
        return BatchOutcome(refused={line.offer_sku: line.error or "refused" for line in report if line.offer_sku})

    def _verify_uncertain(self, batch: dict, states: Mapping[str, dict]) -> BatchOutcome:
        """An OF24 whose answer was lost (or never sent): what Mirakl shows decides; the rest is sent again."""
        missing = set()
        for sku in batch["skus"]:
            sent = ((states.get(sku) or {}).get("pending") or {}).get("offer") or {}
            found = next(iter(self.mirakl.iter_offers(sku=sku)), None)
            if sent.get("update_delete") == "delete":
                landed = found is None
            else:
                landed = (found is not None and found.price is not None and sent.get("price") is not None
                          and Decimal(str(found.price)) == Decimal(str(sent["price"])))
            if not landed:
                missing.add(sku)
        return BatchOutcome(retry=frozenset(missing))

    def _accepted(self, sku: str, state: dict, pending: dict) -> None:
        sent, action = pending["offer"], pending["action"]
        state.pop("refused", None)
        state.pop("refused_reference", None)
        if action == "retire":
            state["retired"] = True
            if sent.get("update_delete") != "delete":
                state["offer"] = sent
        else:
            state["retired"] = False
            state["offer"] = sent
            if state.get("product") in ("integrated", "needed", "importing", "rejected"):
                state.pop("product", None)
        self._resolve((OFFER_REJECTED, PRODUCT_UNKNOWN, PRODUCT_REJECTED), sku)
        if action == "create":
            self.ledger.resolve_exception(INVENTORY_MISSING_IN_MIRAKL, sku, self.name)
        self._record_offer_state(sku, sent, action)

    def _record_offer_state(self, sku: str, sent: dict, action: str) -> None:
        """Tell the inventory flow what Mirakl now holds, unless one of its own imports is in flight."""
        record = self.ledger.offer_states(self.name, [sku]).get(sku)
        row: dict[str, Any] = {"sku": sku}
        deleted = sent.get("update_delete") == "delete"
        if not deleted and (record is None or not record.pending_price_import_id):
            price = Decimal(str(sent["price"]))
            row.update(last_pushed_price=price, last_accepted_price=price)
        if action in ("create", "retire") and (record is None or not record.pending_quantity_import_id):
            quantity = 0 if deleted else int(sent.get("quantity") or 0)
            row.update(last_pushed_quantity=quantity, last_accepted_quantity=quantity)
        if len(row) > 1:
            self.ledger.upsert_offer_states(self.name, [row])

    def _refused(self, sku: str, state: dict, pending: dict, reason: str) -> None:
        sent = pending["offer"]
        if _UNKNOWN_PRODUCT.search(reason) and pending["action"] == "create":
            state["product"] = "needed"
            state["refused_reference"] = sent.get("product_id")
            if not self.policy.product_import:
                self._raise(PRODUCT_UNKNOWN, sku, {
                    "sku": sku, "product_id": sent.get("product_id"), "product_id_type": sent.get("product_id_type"),
                    "reason": reason, "hint": "the operator has no such product: enable catalogue.product_import "
                                              "or fix the product reference in WooCommerce"})
            return
        state["refused"] = {"digest": offer_digest(sent), "reason": reason, "action": pending["action"]}
        self._raise(OFFER_REJECTED, sku, {"sku": sku, "action": pending["action"], "reason": reason,
                                          "hint": "sent again once the product changes in WooCommerce"},
                    severity="error")

    def _follow_product_imports(self, states: dict[str, dict], summary: dict[str, int]) -> list[dict]:
        waiting = []
        for entry in _failing_last(self._pending("product_imports")):
            try:
                status = self.mirakl.product_import_status(entry["import_id"])
                if not status.finished:
                    waiting.append(entry)
                    continue
                failed = (status.status or "").upper() != "COMPLETE"
                identifier = self.mapping.identifier
                rejected = {row.get(identifier, ""): _report_reason(row, self.mapping)
                            for row in (self.mirakl.product_error_report(entry["import_id"])
                                        if status.has_error_report and not failed else [])}
                added = {row.get(identifier, "") for row in (self.mirakl.product_integration_report(entry["import_id"])
                                                             if status.has_new_product_report and not failed else [])}
            except (BudgetExceeded, ClientError) as error:  # P42 once a minute
                if not self._give_up(entry, "P41", error):
                    waiting.append(entry)
                    continue
                failed = True
            if failed:
                for sku in entry["skus"]:  # the file failed as a whole (or cannot be followed): sent again
                    if (states.get(sku) or {}).get("product") == "importing":
                        states[sku]["product"] = "needed"
                continue
            for sku in entry["skus"]:
                state = states.setdefault(sku, {})
                if sku in added:
                    state["product"] = "integrated"
                    state.pop("refused", None)
                    state.pop("refused_reference", None)
                    self._resolve((PRODUCT_REJECTED, PRODUCT_UNKNOWN), sku)
                    summary["products_integrated"] += 1
                    continue
                reason = rejected.get(sku) or "the operator did not integrate the product (no report line)"
                state["product"] = "rejected"
                state["product_digest"] = entry.get("digests", {}).get(sku)
                self._raise(PRODUCT_REJECTED, sku, {"sku": sku, "import_id": entry["import_id"], "reason": reason,
                                                    "hint": "fix the product in WooCommerce; it is sent again"},
                            severity="error")
                summary["products_rejected"] += 1
        return waiting

    def _give_up(self, entry: dict, operation: str, error: Exception) -> bool:
        """One import's status or report failed: True once it failed ``follow_attempts`` cycles in a
        row (its lines are sent again, with an exception on the import), False while it waits.
        A call budget used up by others is no failure of this import's."""
        if isinstance(error, BudgetExceeded) and not error.retry_stopped:
            return False
        if concerns_every_record(error):
            raise error
        entry["failures"] = int(entry.get("failures") or 0) + 1
        log.warning("%s: %s import %s could not be followed (%s), attempt %d", self.name, operation,
                    entry.get("import_id") or entry.get("key"), error, entry["failures"])
        if entry["failures"] < self.settings.follow_attempts:
            return False
        key = str(entry.get("import_id") or entry.get("key"))
        self._raise(IMPORT_UNREADABLE, key, {
            "import_id": entry.get("import_id"), "import": operation, "skus": list(entry.get("skus") or [])[:50],
            "error": str(error), "attempts": entry["failures"], "action": "its lines are sent again"})
        return True

    # ---- step 2: publish ----------------------------------------------------------------------------
    def publish(self, dry_run: bool = False) -> dict[str, Any]:
        """One publish cycle; returns counts (and, for a dry run, the SKUs) for the run's XCom."""
        states = self.states()
        unread: set[int] = set()
        desired, problems = self._desired(states, unread)
        plan = plan_changes(desired, states, self.policy.retire, self.policy.product_import, retire=not unread)
        if dry_run:
            return {"dry_run": True, **plan.summary(), "exceptions": {k: sorted(v)[:200] for k, v in problems.items()}}
        self._report_problems(problems)
        sent = {"offer_import": None, "product_import": None, "reason": None}
        if plan.lines():
            sent["offer_import"], sent["reason"] = self._send_offers(plan, states)
        if plan.products:
            import_id, reason = self._send_products(plan, states)
            sent["product_import"] = import_id
            sent["reason"] = "; ".join(r for r in (sent["reason"], reason) if r) or None
        summary = {**plan.summary(limit=0)["counts"], **sent, "selected": len(desired),
                   "exceptions": sum(len(v) for v in problems.values())}
        self.ledger.set_cursor(FLOW, self.name, "last_cycle", summary)
        if sent["reason"]:
            self.ledger.record_sync_failure(FLOW, self.name, sent["reason"])
        else:
            self.ledger.record_sync_success(FLOW, self.name, summary=summary)
        return summary

    def _desired(self, states: Mapping[str, dict], unread: set[int]) -> tuple[dict[str, Desired], dict[str, set[str]]]:
        """The complete offer of every sellable selected unit, and the units that cannot be offers;
        ``unread`` collects the variable products whose variations could not be read."""
        problems: dict[str, set[str]] = {SKU_MISSING: set(), REFERENCE_MISSING: set(), PRICE_MISSING: set()}
        desired: dict[str, Desired] = {}
        if self.policy.selection.empty:
            return desired, problems
        units = list(self._selected_units(unread))
        self.ledger.resolve_missing(PRODUCT_UNREADABLE, self.name, {str(i) for i in unread})
        demand = self.ledger.pending_demand(self.name, OPEN_ORDER_STATES) if units else {}
        known = self.ledger.offer_states(self.name, [u.sku for u in units if u.sku]) if units else {}
        # new offers start at their available to promise, a shared stock pool split between them
        targets = offer_targets([u.woo for u in units if u.sellable and u.sku], self.marketplace, demand)
        for unit in units:
            if not unit.sellable:
                continue
            if not unit.sku:
                problems[SKU_MISSING].add(str(unit.woo_id))
                continue
            reference = product_reference(unit.item, unit.parent, self.policy)
            if not reference:
                problems[REFERENCE_MISSING].add(unit.sku)
                continue
            quantity = self._quantity(states.get(unit.sku) or {}, known.get(unit.sku), targets[unit.sku].quantity)
            try:
                offer = build_offer(unit, self.marketplace, reference, quantity)
            except ValueError:
                problems[PRICE_MISSING].add(unit.sku)
                continue
            desired[unit.sku] = Desired(unit.sku, unit, reference, offer)
        return desired, problems

    @staticmethod
    def _quantity(state: dict, record: Any, available: int) -> int:
        """A new offer starts at its available to promise; an existing one keeps what Mirakl holds.

        Stock changes belong to the inventory flow (STO01), but OF24 resets a quantity it is not
        sent, so an update carries the quantity Mirakl has (or is getting from an import in flight).
        """
        live = state.get("offer") if not state.get("retired") else None
        if live is None:
            return available
        if record is not None:
            current = record.last_pushed_quantity if record.pending_quantity_import_id else record.last_accepted_quantity
            if current is not None:
                return int(current)
        return int(live.get("quantity") or 0)

    def _variations(self, product: Mapping[str, Any], unread: set[int]) -> list[dict]:
        """A variable product's variations; a failure on this product alone is an exception on it
        (``unread`` collects it, and the cycle retires nothing it may not have seen)."""
        product_id = int(product["id"])
        try:
            found = list(self.woo.iter_variations(product_id))
        except ClientError as error:
            if concerns_every_record(error):
                raise
            unread.add(product_id)
            self._raise(PRODUCT_UNREADABLE, str(product_id), {
                "woocommerce_id": product_id, "sku": product.get("sku") or "", "error": str(error),
                "status": getattr(error, "status", None),
                "action": "its offers are left as they are this cycle; read again by the next"}, severity="error")
            return []
        return found

    def _selected_units(self, unread: set[int]) -> Iterator[Unit]:
        """Simple products and variations of the selection (a variable product's parent is never one)."""
        selection = self.policy.selection
        wanted_skus = set(selection.skus)
        params = {"orderby": "id", "order": "asc"}
        for product in self.woo.iter_pages("/products", "woo.products.list", params):
            ptype = product.get("type") or "simple"
            if ptype == "variable":
                parent_selected = selected(product, selection)
                for variation in self._variations(product, unread):
                    variation = {**variation, "type": "variation", "parent_id": int(product["id"])}
                    if parent_selected or str(variation.get("sku") or "") in wanted_skus:
                        yield Unit(variation, product)
            elif ptype not in NOT_OFFERS and selected(product, selection):
                yield Unit(product)

    def _report_problems(self, problems: Mapping[str, set[str]]) -> None:
        hints = {
            SKU_MISSING: ("woocommerce_id", "give it its own SKU so it can become an offer"),
            REFERENCE_MISSING: ("sku", f"fill the product reference ({self.policy.product_id_source}"
                                       f"{':' + self.policy.product_id_meta_key if self.policy.product_id_meta_key else ''})"),
            PRICE_MISSING: ("sku", "give it a price in WooCommerce"),
        }
        for kind, keys in problems.items():
            field_name, hint = hints[kind]
            open_keys = {e.key for e in self.ledger.open_exceptions(self.name, kind)}
            for key in keys - open_keys:
                self._raise(kind, key, {field_name: key, "hint": hint})
            self.ledger.resolve_missing(kind, self.name, keys)

    def _send_offers(self, plan: Plan, states: dict[str, dict]) -> tuple[str | None, str | None]:
        """One OF24 call. Its SKUs are marked in flight *before* it, so a crash cannot lead to a
        blind resend: the next cycle checks what Mirakl shows (see :meth:`_verify_uncertain`)."""
        lines = plan.lines()[:OFFER_BATCH]
        body = [offer for _, _, offer in lines]
        digest = hashlib.sha256(repr(body).encode()).hexdigest()
        key = f"{self.name}:OF24:{self.clock().isoformat()}:{digest[:16]}"
        for action, sku, offer in lines:
            states.setdefault(sku, {})["pending"] = {"batch": key, "action": action, "offer": offer}
        batches = self._pending("offer_batches")
        batch = {"key": key, "import_id": None, "skus": [sku for _, sku, _ in lines]}
        self._save_states(states)
        self.ledger.set_cursor(FLOW, self.name, "offer_batches", [*batches, batch])
        result = self._write(Write(
            key=key, kind="OF24", target=None, request={"lines": len(body), "digest": digest},
            send=lambda: self.mirakl.import_offers(body),
            outcome=lambda import_id: {"import_id": import_id, "lines": len(body)},
        ))
        if result.status == UNCERTAIN:
            return None, f"OF24 outcome unknown ({result.error}); checked against Mirakl next cycle"
        if result.status != DONE:  # surely not applied: nothing is in flight
            self._unsend(states, lines, batches)
            return None, self._not_sent("OF24", result, "sent again next cycle")
        import_id = (result.outcome or {}).get("import_id")
        self.ledger.set_cursor(FLOW, self.name, "offer_batches", [*batches, {**batch, "import_id": import_id}])
        return import_id, None

    def _write(self, write: Write) -> WriteResult:
        """One Mirakl write through the shared write path, waiting a little for its call slot."""
        previous_max_wait, self.budget.max_wait = self.budget.max_wait, self.settings.send_wait
        try:
            return self.writer.write(write)
        finally:
            self.budget.max_wait = previous_max_wait

    @staticmethod
    def _not_sent(operation: str, result: WriteResult, then: str) -> str:
        """Why a write did not go through; a refusal for good (a 4xx on the file) fails the task."""
        if result.status == FINAL:
            raise result.exception or RuntimeError(f"{operation} refused: {result.error}")
        if isinstance(result.exception, BudgetExceeded):
            return f"coalesced: {operation} allowed again at {result.exception.retry_at.isoformat()}"
        return f"{operation} failed ({result.error}); {then}"

    def _unsend(self, states: dict[str, dict], lines: list[tuple[str, str, dict]], batches: list[dict]) -> None:
        """The call surely did not happen: nothing is in flight."""
        for _, sku, _ in lines:
            states[sku].pop("pending", None)
        self._save_states(states)
        self.ledger.set_cursor(FLOW, self.name, "offer_batches", batches)

    def _send_products(self, plan: Plan, states: dict[str, dict]) -> tuple[str | None, str | None]:
        rows = {sku: self.mapping.row(want.unit, want.product_id) for sku, want in plan.products.items()}
        content = self.mapping.file(rows.values())
        digest = hashlib.sha256(content).hexdigest()
        result = self._write(Write(
            key=f"{self.name}:P41:{self.clock().isoformat()}:{digest[:16]}", kind="P41", target=None,
            request={"products": len(rows), "digest": digest}, send=lambda: self.mirakl.import_products(content),
            outcome=lambda import_id: {"import_id": import_id, "products": len(rows)},
        ))
        if result.status == UNCERTAIN:
            # A product file sent twice is harmless for the operator (same references): send again.
            return None, f"P41 outcome unknown ({result.error}); sent again next time"
        if result.status != DONE:
            return None, self._not_sent("P41", result, "sent again next time")
        import_id = (result.outcome or {}).get("import_id")
        digests = {sku: _row_digest(want) for sku, want in plan.products.items()}
        for sku in plan.products:
            states.setdefault(sku, {})["product"] = "importing"
        self._save_states(states)
        entry = {"import_id": import_id, "skus": sorted(plan.products), "digests": digests}
        self.ledger.set_cursor(FLOW, self.name, "product_imports", [*self._pending("product_imports"), entry])
        return import_id, None


def _failing_last(entries: list[dict]) -> list[dict]:
    """Imports in order, those that failed to be followed last: one cannot hold up the others."""
    return sorted(entries, key=lambda e: int(e.get("failures") or 0))


def _report_reason(row: Mapping[str, str], mapping: AttributeMapping) -> str:
    """The operator's reason in a P44 line: its error column, or whatever the mapping did not send."""
    for name in ("errors", "error", "error-message", "error_message"):
        if row.get(name):
            return row[name]
    ours = {code for code, _ in mapping.attributes}
    extra = [f"{k}: {v}" for k, v in row.items() if k not in ours and k and v]
    return "; ".join(extra) or "rejected by the operator"


def for_marketplace(name: str, *, settings: CatalogueSettings | None = None) -> CataloguePublish:
    """The flow for a configured marketplace, with clients from its Airflow connections."""
    from include.woo_mirakl.wiring import wire

    w = wire(name)
    return CataloguePublish(w.marketplace, w.woo(), w.mirakl(), w.ledger, w.budget, settings=settings)


__all__ = [
    "FLOW", "OFFER_REJECTED", "PRICE_MISSING", "PRODUCT_REJECTED", "PRODUCT_UNKNOWN", "REFERENCE_MISSING",
    "SKU_MISSING", "AttributeMapping", "CataloguePublish", "CatalogueSettings", "Desired", "Plan", "Unit",
    "build_offer", "for_marketplace", "offer_digest", "plan_changes", "plain_text", "product_reference",
    "retire_line", "selected",
]
