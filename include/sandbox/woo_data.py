"""State and domain logic of the simulated WooCommerce store (no HTTP here).

Records are compact dicts (JSON-serialisable, so ``to_state`` is a dump) and are
rendered into the REST shapes of ``shared/reference/woocommerce-examples`` only
when answered. Products, variations, orders and refunds each live in a
:class:`Collection` that keeps sorted indexes on the created and modified dates
(epoch seconds, as WordPress stores them), so a 100,000-item catalogue pages and
filters by ``modified_after`` without a full sort per request.

Like WordPress, products, variations, orders and refunds share one id sequence;
order items, notes and meta have their own.
"""
from __future__ import annotations

import bisect
import copy
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from collections.abc import Sequence
from typing import Any, Callable, Iterable

from include.sandbox.core import ApiError

UTC = timezone.utc

STOCK_REDUCING_STATUSES = {"on-hold", "processing", "completed"}
# An update carrying any of these makes core recalculate the order's totals and taxes.
RECALCULATING_FIELDS = frozenset({"billing", "shipping", "line_items", "shipping_lines", "fee_lines", "coupon_lines"})
STOCK_RESTORING_STATUSES = {"cancelled", "pending"}
ORDER_STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed",
                  "checkout-draft", "trash")
# What a write may set (the order schema's enum, in its order).
ORDER_WRITE_STATUSES = ("auto-draft", "pending", "processing", "on-hold", "completed", "cancelled", "refunded",
                        "failed", "checkout-draft")
PRODUCT_STATUSES = ("draft", "pending", "private", "publish")
STOCK_STATUSES = ("instock", "outofstock", "onbackorder")
BACKORDERS = ("no", "notify", "yes")
PRODUCT_TYPES = ("simple", "variable", "grouped", "external")
LIST_FIELDS = frozenset({"categories", "tags", "attributes", "default_attributes"})
# Stored as given and echoed back; the sandbox gives them no behaviour.
EXTRA_FIELDS = frozenset({"description", "short_description", "weight", "dimensions", "images", "image",
                          "menu_order", "tax_status", "tax_class", "shipping_class", "virtual", "downloadable",
                          "featured", "catalog_visibility", "slug", "low_stock_amount"})
KNOWN_GATEWAYS = {"bacs": "Direct bank transfer", "cheque": "Check payments", "cod": "Cash on delivery",
                  "stripe": "Credit Card (Stripe)"}
TRACKING_PROVIDER_LINKS = {
    "ups": "https://www.ups.com/track?tracknum=%1$s",
    "usps": "https://tools.usps.com/go/TrackConfirmAction?tLabels=%1$s",
    "fedex": "https://www.fedex.com/fedextrack/?tracknumbers=%1$s",
    "dhl": "https://www.dhl.com/en/express/tracking.html?AWB=%1$s",
    "colissimo": "https://www.laposte.fr/outils/suivre-vos-envois?code=%1$s",
    "chronopost": "https://www.chronopost.fr/tracking-no-cms/suivi-page?listeNumerosLT=%1$s",
    "dpd": "https://tracking.dpd.de/parcelstatus?query=%1$s",
    "gls": "https://gls-group.com/track/%1$s",
}


class WooError(ApiError):
    """A WordPress REST error: ``{"code", "message", "data": {"status", ...}}``."""

    def __init__(self, status: int, code: str, message: str, bare_status: bool = False, **data: Any):
        super().__init__(status, message, code)
        self.data = data
        self.bare_status = bare_status  # a few core errors carry ``"data": <status>`` instead of an object


def invalid_param(name: str, reason: str) -> WooError:
    """WordPress's schema error: ``params`` says why, ``details`` carries the validator's own code."""
    if " is not one of " in reason:
        code = "rest_not_in_enum"
    elif "must be between" in reason or "greater than" in reason:
        code = "rest_out_of_bounds"
    elif "is not of type" in reason:
        code = "rest_invalid_type"
    else:
        code = "rest_invalid_param"
    return WooError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                    params={name: reason}, details={name: {"code": code, "message": reason, "data": None}})


def one_of(name: str, allowed: Iterable[str]) -> str:
    """WordPress's enum message: ``x is not one of a, b, and c.``"""
    values = list(allowed)
    listed = values[0] if len(values) == 1 else ", ".join(values[:-1]) + f", and {values[-1]}"
    return f"{name} is not one of {listed}."


# Values ----------------------------------------------------------------------------
def epoch(dt: datetime) -> int:
    return int(dt.timestamp())


def wp_date(ts: int | None) -> str | None:
    """WordPress REST dates: no zone suffix; the sandbox site's timezone is UTC."""
    return None if ts is None else _wp_date(ts)


@lru_cache(maxsize=4096)  # bulk loads and pages share a handful of distinct seconds
def _wp_date(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def money(value: Any, name: str = "amount") -> Decimal:
    try:
        return Decimal(str(value if value not in (None, "") else "0"))
    except InvalidOperation:
        raise invalid_param(name, f"{name} is not a number.") from None


def fmt_money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise invalid_param(name, f"{name} is not of type integer.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise invalid_param(name, f"{name} is not of type integer.")


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (1, 0) or (isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no")):
        return str(value).lower() in ("true", "1", "yes")
    raise invalid_param(name, f"{name} is not of type boolean.")


def as_price(value: Any, name: str) -> str:
    """Prices are strings in the schema; WordPress rejects numbers (``rest_invalid_type``)."""
    if not isinstance(value, str):
        raise invalid_param(name, f"{name} is not of type string.")
    if value != "":
        money(value, name)
    return value


def as_enum(value: Any, name: str, allowed: Iterable[str]) -> str:
    if value not in allowed:
        raise invalid_param(name, one_of(name, allowed))
    return value


# Collections -----------------------------------------------------------------------
class Collection:
    """Records by id with sorted (timestamp, id) indexes on created and modified dates."""

    def __init__(self) -> None:
        self.records: dict[int, dict] = {}
        self.ids: list[int] = []
        self.by_created: list[tuple[int, int]] = []
        self.by_modified: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.records)

    def get(self, record_id: int) -> dict | None:
        return self.records.get(record_id)

    def add(self, record: dict) -> None:
        rid = record["id"]
        self.records[rid] = record
        _insort(self.ids, rid)
        _insort(self.by_created, (record["created"], rid))
        _insort(self.by_modified, (record["modified"], rid))

    def touch(self, record: dict, ts: int) -> None:
        """Move a record's modified date (and its index entry) to ``ts``."""
        if record["modified"] == ts:
            return
        _remove(self.by_modified, (record["modified"], record["id"]))
        record["modified"] = ts
        _insort(self.by_modified, (ts, record["id"]))

    def remove(self, record_id: int) -> dict | None:
        record = self.records.pop(record_id, None)
        if record is not None:
            _remove(self.ids, record_id)
            _remove(self.by_created, (record["created"], record_id))
            _remove(self.by_modified, (record["modified"], record_id))
        return record

    def load(self, records: list[dict]) -> None:
        self.records = {r["id"]: r for r in records}
        self.ids = sorted(self.records)
        self.by_created = sorted((r["created"], r["id"]) for r in records)
        self.by_modified = sorted((r["modified"], r["id"]) for r in records)


def _insort(seq: list, item: Any) -> None:
    if not seq or seq[-1] <= item:  # the common case: appending in date/id order
        seq.append(item)
    else:
        bisect.insort(seq, item)


def _remove(seq: list, item: Any) -> None:
    pos = bisect.bisect_left(seq, item)
    if pos < len(seq) and seq[pos] == item:
        del seq[pos]


@dataclass
class Query:
    """Parsed collection parameters shared by every list route."""

    page: int = 1
    per_page: int = 10
    offset: int | None = None
    order_desc: bool = True
    orderby: str = "date"
    created_after: int | None = None
    created_before: int | None = None
    modified_after: int | None = None
    modified_before: int | None = None
    include: list[int] | None = None
    exclude: set[int] = field(default_factory=set)


SortKey = Callable[[dict], Any]


class IndexView(Sequence):
    """A window of a sorted index read as records, so a page never copies the whole index."""

    def __init__(self, records: dict[int, dict], index: list, start: int, stop: int, desc: bool):
        self._records, self._index, self._start, self._stop, self._desc = records, index, start, stop, desc

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return [self[p] for p in range(len(self))[position]]
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(position)
        entry = self._index[self._stop - 1 - position if self._desc else self._start + position]
        return self._records[entry[1] if isinstance(entry, tuple) else entry]


def select(coll: Collection, query: Query, candidates: Iterable[dict] | None = None,
           predicate: Callable[[dict], bool] | None = None,
           sort_keys: dict[str, SortKey] | None = None) -> Sequence:
    """Filter and order records, using the sorted indexes when no candidate set is given."""
    ranges = {
        "created": (query.created_after, query.created_before),
        "modified": (query.modified_after, query.modified_before),
    }
    has_range = {name: lo is not None or hi is not None for name, (lo, hi) in ranges.items()}
    order_index = {"date": "created", "modified": "modified", "id": "id"}.get(query.orderby)
    if candidates is None and query.include is not None:
        candidates = [r for r in (coll.get(i) for i in query.include) if r is not None]
    presorted = False
    if candidates is None:
        if order_index == "id" and not any(has_range.values()):
            source = "id"
        elif order_index in ranges and (has_range[order_index] or not any(has_range.values())):
            source = order_index
        elif any(has_range.values()):
            source = "modified" if has_range["modified"] else "created"
        else:
            source = "created"
        index = {"id": coll.ids, "created": coll.by_created, "modified": coll.by_modified}[source]
        lo, hi = ranges.get(source, (None, None))
        start = 0 if lo is None else bisect.bisect_right(index, (lo, float("inf")))
        stop = len(index) if hi is None else bisect.bisect_left(index, (hi, -1))
        presorted = source == order_index
        has_range = {**has_range, source: False}
        if presorted and not any(has_range.values()) and not query.exclude and predicate is None:
            return IndexView(coll.records, index, start, stop, query.order_desc)
        candidates = IndexView(coll.records, index, start, stop, False)
    checks: list[Callable[[dict], bool]] = []
    for name, (lo, hi) in ranges.items():
        if has_range[name]:
            if lo is not None:
                checks.append(lambda r, k=name, v=lo: r[k] > v)
            if hi is not None:
                checks.append(lambda r, k=name, v=hi: r[k] < v)
    if query.exclude:
        checks.append(lambda r: r["id"] not in query.exclude)
    if predicate is not None:
        checks.append(predicate)
    items = [r for r in candidates if all(c(r) for c in checks)] if checks else list(candidates)
    if query.orderby == "include" and query.include is not None:
        rank = {rid: n for n, rid in enumerate(query.include)}
        items.sort(key=lambda r: rank.get(r["id"], len(rank)))
        return items
    if not presorted:
        keys: dict[str, SortKey] = {"date": lambda r: (r["created"], r["id"]),
                                    "modified": lambda r: (r["modified"], r["id"]),
                                    "id": lambda r: r["id"], **(sort_keys or {})}
        items.sort(key=keys.get(query.orderby, keys["date"]))
    if query.order_desc:
        items.reverse()
    return items


def page_of(items: Sequence, query: Query) -> tuple[list[dict], int, int]:
    """The requested page, the total and the page count (as X-WP-Total/TotalPages)."""
    total = len(items)
    pages = -(-total // query.per_page) if total else 0
    start = query.offset if query.offset is not None else (query.page - 1) * query.per_page
    return items[start:start + query.per_page], total, pages


# The store -------------------------------------------------------------------------
class WooStore:
    """Products, variations, orders, notes, refunds and shipment tracking of one store."""

    def __init__(self, now: Callable[[], datetime], settings: dict):
        self._now = now
        self.settings = settings
        self.products = Collection()
        self.variations = Collection()
        self.orders = Collection()
        self.refunds = Collection()
        self.sku_index: dict[str, int] = {}
        self.trashed = 0  # list filters skip the trash only when something is in it (fast path otherwise)
        self.emails: list[dict] = []
        self.mailer: Callable[[dict], None] | None = None
        self.next_id = 100
        self.next_item_id = 1
        self.next_meta_id = 1
        self.next_note_id = 1
        self.next_fulfillment_id = 1
        self.notes: dict[int, list[dict]] = {}
        self.fulfillments: dict[int, list[dict]] = {}

    # ids and time --------------------------------------------------------------
    def now(self) -> int:
        return epoch(self._now())

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _new_item_id(self) -> int:
        self.next_item_id += 1
        return self.next_item_id

    def _new_meta_id(self) -> int:
        self.next_meta_id += 1
        return self.next_meta_id

    # products ------------------------------------------------------------------
    def item(self, record_id: int) -> dict | None:
        """A product or a variation by id."""
        return self.products.get(record_id) or self.variations.get(record_id)

    def by_sku(self, sku: str) -> dict | None:
        rid = self.sku_index.get(sku)
        return self.item(rid) if rid is not None else None

    def sellable(self, record: dict | None) -> dict | None:
        """The record unless it (or its parent) is in the trash: core's order lines then lose it."""
        if record is None or record["status"] == "trash":
            return None
        if record["kind"] == "variation":
            parent = self.products.get(record["parent_id"])
            if parent is None or parent["status"] == "trash":
                return None
        return record

    def stock_owner(self, record: dict) -> dict:
        """Whose stock a product uses: a variation not managing its own uses a managing parent's."""
        if record["kind"] == "variation" and not record["manage_stock"]:
            parent = self.products.get(record["parent_id"])
            if parent is not None and parent["manage_stock"]:
                return parent
        return record

    def trash_item(self, record: dict) -> dict:
        """``DELETE`` without ``force``: the product moves to the trash (its SKU stays taken)."""
        if record["status"] == "trash":
            raise WooError(410, "woocommerce_rest_already_trashed", "The resource has already been deleted.")
        record["extra"]["status_before_trash"] = record["status"]
        record["status"] = "trash"
        self.trashed += 1
        self._collection(record).touch(record, self.now())
        return record

    def product(self, product_id: int) -> dict:
        record = self.products.get(product_id)
        if record is None:
            raise WooError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return record

    def variation(self, parent_id: int, variation_id: int) -> dict:
        record = self.variations.get(variation_id)
        if record is None or record["parent_id"] != parent_id:
            raise WooError(404, "woocommerce_rest_product_variation_invalid_id", "Invalid ID.")
        return record

    def _new_product_record(self, kind: str, ptype: str, parent_id: int = 0) -> dict:
        ts = self.now()
        return {
            "id": self._new_id(), "kind": kind, "type": ptype, "parent_id": parent_id, "name": "",
            "status": "publish", "sku": "", "global_unique_id": "", "regular_price": "", "sale_price": "",
            "manage_stock": False, "stock_quantity": None, "stock_status": "instock", "backorders": "no",
            # Replaced wholesale on write, so shared empty tuples (fewer objects for the GC on big loads).
            "created": ts, "modified": ts, "meta_data": [], "categories": (), "tags": (), "attributes": (),
            "default_attributes": (), "variations": [] if ptype == "variable" else (), "total_sales": 0,
            "extra": {},
        }

    def create_product(self, data: dict) -> dict:
        ptype = as_enum(data.get("type", "simple"), "type", PRODUCT_TYPES)
        record = self._new_product_record("product", ptype)
        record["categories"] = DEFAULT_CATEGORIES  # core files a product without one as Uncategorized
        self._apply_product_fields(record, data)
        self.products.add(record)
        return record

    def create_variation(self, parent: dict, data: dict) -> dict:
        if parent["type"] != "variable":
            raise WooError(400, "woocommerce_rest_invalid_product_type",
                           "Variations can only be added to variable products.")
        record = self._new_product_record("variation", "variation", parent["id"])
        self._apply_product_fields(record, data)
        self.variations.add(record)
        parent["variations"].append(record["id"])
        return record

    def update_item(self, record: dict, data: dict) -> dict:
        """Apply a REST write to a product or variation and bump its modified date."""
        self._apply_product_fields(record, data)
        self._touch_product(record)
        return record

    def _touch_product(self, record: dict) -> None:
        # Saving a variation saves its parent too (core syncs the parent's prices and stock status).
        now = self.now()
        self._collection(record).touch(record, now)
        if record["kind"] == "variation":
            parent = self.products.get(record["parent_id"])
            if parent is not None:
                self.products.touch(parent, now)

    def delete_item(self, record: dict) -> dict:
        for child_id in list(record["variations"]):
            child = self.variations.get(child_id)
            if child is not None:
                self.delete_item(child)
        if record["sku"]:
            self.sku_index.pop(record["sku"], None)
        self._collection(record).remove(record["id"])
        if record["kind"] == "variation":
            parent = self.products.get(record["parent_id"])
            if parent is not None and record["id"] in parent["variations"]:
                parent["variations"].remove(record["id"])
        return record

    def _collection(self, record: dict) -> Collection:
        return self.variations if record["kind"] == "variation" else self.products

    def _apply_product_fields(self, record: dict, data: dict) -> None:
        """Validate and apply a write; nothing changes unless the whole write is valid."""
        if not isinstance(data, dict):
            raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.")
        new_sku = self._checked_sku(record, data["sku"]) if "sku" in data else None
        stored = self._collection(record).get(record["id"]) is not None
        # A record not stored yet is simply discarded on error, so only stored ones need a working copy.
        work = {**record, "extra": dict(record["extra"]),
                "meta_data": [dict(m) for m in record["meta_data"]]} if stored else record
        for name in ("regular_price", "sale_price"):
            if name in data:
                work[name] = as_price(data[name], name)
        if "name" in data and record["kind"] == "product":
            work["name"] = str(data["name"])
        if "status" in data:
            work["status"] = as_enum(data["status"], "status", PRODUCT_STATUSES)
        if "global_unique_id" in data:
            work["global_unique_id"] = str(data["global_unique_id"] or "")
        if "backorders" in data:
            work["backorders"] = as_enum(data["backorders"], "backorders", BACKORDERS)
        for name in LIST_FIELDS.intersection(data):
            if not isinstance(data[name], list):
                raise invalid_param(name, f"{name} is not of type array.")
            work[name] = data[name]
        if "attributes" in data:
            work["attributes"] = [_attribute(a, i, record["kind"] == "variation")
                                  for i, a in enumerate(data["attributes"]) if isinstance(a, dict)]
        if "meta_data" in data:
            self._write_meta(work["meta_data"], data["meta_data"])
        for name in EXTRA_FIELDS.intersection(data):
            work["extra"][name] = data[name]
        self._apply_stock_fields(work, data)
        if new_sku is not None and new_sku != record["sku"]:
            if record["sku"]:
                self.sku_index.pop(record["sku"], None)
            if new_sku:
                self.sku_index[new_sku] = record["id"]
            work["sku"] = new_sku
        record.update(work)

    def _apply_stock_fields(self, record: dict, data: dict) -> None:
        # As core: stock_quantity only applies when manage_stock is (or becomes) true;
        # turning management off blanks the quantity and backorders.
        if "manage_stock" in data:
            record["manage_stock"] = as_bool(data["manage_stock"], "manage_stock")
            if not record["manage_stock"]:
                record["stock_quantity"] = None
                record["backorders"] = "no"
        if "stock_status" in data:
            status = as_enum(data["stock_status"], "stock_status", STOCK_STATUSES)
            if not record["manage_stock"]:
                record["stock_status"] = status
        if record["manage_stock"]:
            if "stock_quantity" in data and data["stock_quantity"] is not None:
                record["stock_quantity"] = as_int(data["stock_quantity"], "stock_quantity")
            elif "inventory_delta" in data:
                record["stock_quantity"] = (record["stock_quantity"] or 0) + as_int(
                    data["inventory_delta"], "inventory_delta")
            if record["stock_quantity"] is None:
                record["stock_quantity"] = 0
            self._sync_stock_status(record)

    @staticmethod
    def _sync_stock_status(record: dict) -> None:
        if not record["manage_stock"]:
            return
        if record["stock_quantity"] > 0:
            record["stock_status"] = "instock"
        else:
            record["stock_status"] = "outofstock" if record["backorders"] == "no" else "onbackorder"

    def _checked_sku(self, record: dict, sku: Any) -> str:
        sku = "" if sku is None else str(sku).strip()
        owner = self.sku_index.get(sku) if sku else None
        if owner is not None and owner != record["id"]:
            raise WooError(400, "product_invalid_sku", "Invalid or duplicated SKU.",
                           resource_id=owner, unique_sku=sku)
        return sku

    def _write_meta(self, meta: list[dict], updates: Any) -> None:
        """Core semantics: update by meta id, else replace the first entry of a key, else add."""
        if not isinstance(updates, list):
            raise invalid_param("meta_data", "meta_data is not of type array.")
        for update in updates:
            if not isinstance(update, dict) or "key" not in update:
                raise invalid_param("meta_data", "meta_data[0][key] is a required property of meta_data[0].")
            target = None
            if update.get("id"):
                target = next((m for m in meta if m["id"] == update["id"]), None)
            if target is None:
                target = next((m for m in meta if m["key"] == update["key"]), None)
            if update.get("value") is None and "value" in update:
                if target is not None:
                    meta.remove(target)
                continue
            if target is None:
                meta.append({"id": self._new_meta_id(), "key": str(update["key"]), "value": update.get("value")})
            else:
                target["key"], target["value"] = str(update["key"]), update.get("value")

    def set_meta(self, meta: list[dict], key: str, value: Any) -> None:
        self._write_meta(meta, [{"key": key, "value": value}])

    def change_stock(self, record: dict, delta: int, bump_modified: bool) -> None:
        record["stock_quantity"] = (record["stock_quantity"] or 0) + delta
        self._sync_stock_status(record)
        if bump_modified:
            self._touch_product(record)

    # orders --------------------------------------------------------------------
    def order(self, order_id: int) -> dict:
        record = self.orders.get(order_id)
        if record is None:
            raise WooError(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        return record

    def create_order(self, data: dict, created_via: str = "rest-api") -> dict:
        if not isinstance(data, dict):
            raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.")
        ts = self.now()
        oid = self._new_id()
        record = {
            "id": oid, "status": "pending", "currency": self.settings["currency"], "created": ts,
            "modified": ts, "date_paid": None, "date_completed": None, "customer_id": 0, "customer_note": "",
            "billing": _address(with_email=True), "shipping": _address(with_email=False),
            "payment_method": "", "payment_method_title": "", "transaction_id": "", "meta_data": [],
            "line_items": [], "shipping_lines": [], "fee_lines": [], "refund_ids": [],
            "stock_reduced": False, "created_via": created_via, "parent_id": 0,
            "order_key": "wc_order_" + hashlib.md5(f"{oid}".encode()).hexdigest()[:13],
            "prices_include_tax": bool(self.settings.get("prices_include_tax")), "tax_lines": [],
        }
        status = data.get("status", "pending")
        as_enum(status, "status", ORDER_WRITE_STATUSES)
        self._apply_order_fields(record, {k: v for k, v in data.items() if k != "status"})
        self.calculate_totals(record)  # core's REST create always does
        self.orders.add(record)
        self.notes.setdefault(oid, [])
        if as_bool(data.get("set_paid", False), "set_paid"):
            status = "processing"
            record["date_paid"] = ts
        if status != "pending":
            self._transition(record, status)
        return record

    def update_order(self, record: dict, data: dict) -> dict:
        if not isinstance(data, dict):
            raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.")
        status = data.get("status")
        if status is not None:
            as_enum(status, "status", ORDER_WRITE_STATUSES)
        work = copy.deepcopy(record)  # all or nothing, as core validates before saving
        self._apply_order_fields(work, {k: v for k, v in data.items() if k != "status"})
        if RECALCULATING_FIELDS.intersection(data):
            self.calculate_totals(work)  # WC_REST_Orders_V2_Controller::save_object on update
        if "line_items" in data and work["stock_reduced"] and work["status"] in STOCK_REDUCING_STATUSES:
            self._adjust_line_stock(record["line_items"], work)
        record.update(work)
        if data.get("set_paid") and record["date_paid"] is None and as_bool(data["set_paid"], "set_paid"):
            record["date_paid"] = self.now()
            status = status or "processing"
        if status is not None and status != record["status"]:
            self._transition(record, status)
        self.orders.touch(record, self.now())
        return record

    def _apply_order_fields(self, record: dict, data: dict) -> None:
        for name in ("billing", "shipping"):
            if name in data:
                if not isinstance(data[name], dict):
                    raise invalid_param(name, f"{name} is not of type object.")
                record[name].update({k: str(v) for k, v in data[name].items() if v is not None})
        for name in ("customer_note", "payment_method", "payment_method_title", "transaction_id", "currency"):
            if name in data and data[name] is not None:
                record[name] = str(data[name])
        if "customer_id" in data:
            record["customer_id"] = as_int(data["customer_id"], "customer_id")
        if "meta_data" in data:
            self._write_meta(record["meta_data"], data["meta_data"])
        if "line_items" in data:
            self._write_line_items(record, data["line_items"])
        if "shipping_lines" in data:
            self._write_simple_lines(record["shipping_lines"], data["shipping_lines"], "shipping_lines")
        if "fee_lines" in data:
            self._write_simple_lines(record["fee_lines"], data["fee_lines"], "fee_lines")

    def _write_line_items(self, record: dict, lines: Any) -> None:
        if not isinstance(lines, list):
            raise invalid_param("line_items", "line_items is not of type array.")
        for posted in lines:
            if not isinstance(posted, dict):
                raise invalid_param("line_items", "line_items[0] is not of type object.")
            existing = None
            if posted.get("id"):
                existing = next((li for li in record["line_items"] if li["id"] == posted["id"]), None)
                if existing is None:
                    raise WooError(400, "woocommerce_rest_invalid_item_id", "Order item ID provided is not associated with order.")
                if posted.get("quantity") == 0 or ("product_id" in posted and posted["product_id"] is None):
                    record["line_items"].remove(existing)
                    continue
            referenced, product = self._line_product(posted, "create" if existing is None else "update")
            item = existing or {"id": self._new_item_id(), "name": "", "product_id": 0, "variation_id": 0,
                                "quantity": 1, "subtotal": "0.00", "total": "0.00", "sku": None, "price": 0,
                                "meta_data": [], "reduced_stock": None, "subtotal_tax": "0.00",
                                "total_tax": "0.00", "taxes": []}
            if product is not None:
                item["product_id"] = product["parent_id"] or product["id"]
                item["variation_id"] = product["id"] if product["kind"] == "variation" else 0
                item["sku"] = product["sku"]
                item["name"] = posted.get("name") or self._display_name(product)
                if existing is None and product["kind"] == "variation":
                    for attr in product["attributes"]:
                        name = str(attr.get("name", ""))
                        item["meta_data"].append({"id": self._new_meta_id(), "key": name.lower().replace(" ", "-"),
                                                  "value": str(attr.get("option", "")), "display_key": name})
            elif referenced:
                # An unknown or trashed product or SKU is no error for core: the line keeps no product.
                item.update(product_id=0, variation_id=0, sku=None, name=str(posted.get("name") or ""))
            if "quantity" in posted:
                item["quantity"] = as_int(posted["quantity"], "quantity")
            unit = money(self._effective_price(product)) if product is not None else (
                money(posted.get("total") or posted.get("subtotal") or 0) / max(item["quantity"], 1)
                if referenced else Decimal(str(item["price"])))
            default_total = unit * item["quantity"]
            subtotal = money(posted["subtotal"], "subtotal") if "subtotal" in posted else (
                default_total if existing is None or "quantity" in posted else money(item["subtotal"]))
            total = money(posted["total"], "total") if "total" in posted else (
                subtotal if existing is None or "quantity" in posted or "subtotal" in posted else money(item["total"]))
            item["subtotal"], item["total"] = fmt_money(subtotal), fmt_money(total)
            item["price"] = float(total / item["quantity"]) if item["quantity"] else 0
            if "meta_data" in posted:
                self._write_meta(item["meta_data"], posted["meta_data"])
            if existing is None:
                record["line_items"].append(item)

    def _line_product(self, posted: dict, action: str) -> tuple[bool, dict | None]:
        """(whether the line names a product, the product when it exists and is not trashed).

        Core precedence: sku, then product_id (without variation_id), then variation_id.
        """
        if posted.get("sku"):
            product = self.by_sku(str(posted["sku"]))
        elif posted.get("product_id") and not posted.get("variation_id"):
            product = self.item(as_int(posted["product_id"], "product_id"))
        elif posted.get("variation_id"):
            product = self.variations.get(as_int(posted["variation_id"], "variation_id"))
        elif action == "update":
            return False, None
        else:
            raise WooError(400, "woocommerce_rest_required_product_reference", "Product ID or SKU is required.")
        return True, self.sellable(product)

    def _write_simple_lines(self, lines: list[dict], posted_lines: Any, name: str) -> None:
        if not isinstance(posted_lines, list):
            raise invalid_param(name, f"{name} is not of type array.")
        for posted in posted_lines:
            if not isinstance(posted, dict):
                raise invalid_param(name, f"{name}[0] is not of type object.")
            existing = next((line for line in lines if posted.get("id") and line["id"] == posted["id"]), None)
            if existing is not None and ("method_id" in posted and posted["method_id"] is None
                                         or "name" in posted and posted["name"] is None):
                lines.remove(existing)
                continue
            if existing is None:
                if name == "shipping_lines" and not posted.get("method_id"):
                    raise WooError(400, "woocommerce_rest_invalid_shipping_item", "Shipping method is required.")
                if name == "fee_lines" and not posted.get("name"):
                    raise WooError(400, "woocommerce_rest_invalid_fee_item", "Fee name is required.")
                existing = {"id": self._new_item_id(), "total": "0.00", "meta_data": [], "total_tax": "0.00",
                            "taxes": []}
                lines.append(existing)
            for key, value in posted.items():
                if key == "total":
                    existing["total"] = fmt_money(money(value, "total"))
                elif key == "meta_data":
                    self._write_meta(existing["meta_data"], value)
                elif key not in ("id", "total_tax", "taxes"):  # read-only in the schema
                    existing[key] = value

    def order_total(self, record: dict) -> Decimal:
        return sum((money(li["total"]) + money(li.get("total_tax")) for li in record["line_items"]
                    + record["shipping_lines"] + record["fee_lines"]), Decimal("0"))

    # taxes ---------------------------------------------------------------------
    def tax_location(self, record: dict) -> str:
        """The country taxes are computed for (``woocommerce_tax_based_on``, then the store's base)."""
        based_on = self.settings.get("tax_based_on", "shipping")
        if based_on == "shipping" and not record["shipping"].get("country"):
            based_on = "billing"
        country = "" if based_on == "base" else record[based_on].get("country", "")
        return country or str(self.settings.get("base_country", ""))

    def _rates(self, record: dict) -> list[dict]:
        country = self.tax_location(record)
        return [dict(rate, id=number) for number, rate in enumerate(self.settings.get("tax_rates") or [], start=1)
                if rate.get("country", "") in ("", country)]

    def calculate_totals(self, record: dict) -> None:
        """``WC_Abstract_Order::calculate_totals``: taxes on every line from the store's rates.

        Line and shipping totals are taken as given (excluding tax), whatever the store's
        ``prices_include_tax``: a marketplace price that already includes VAT gets it twice.
        Nothing is taxed when taxes are off or the order carries ``is_vat_exempt`` = ``yes``.
        """
        exempt = any(m["key"] == "is_vat_exempt" and m["value"] == "yes" for m in record["meta_data"])
        rates = self._rates(record) if self.settings.get("calc_taxes") and not exempt else []
        per_rate: dict[int, list[Decimal]] = {}
        for item in record["line_items"] + record["fee_lines"]:
            taxes = []
            for rate in rates:
                percent = money(rate["rate"]) / 100
                total = (money(item["total"]) * percent).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
                subtotal = (money(item.get("subtotal", item["total"])) * percent).quantize(
                    Decimal("0.01"), rounding=ROUND_HALF_UP)
                taxes.append({"id": rate["id"], "total": fmt_money(total), "subtotal": fmt_money(subtotal)})
                per_rate.setdefault(rate["id"], [Decimal("0"), Decimal("0")])[0] += total
            item["taxes"] = taxes
            item["total_tax"] = fmt_money(sum((money(t["total"]) for t in taxes), Decimal("0")))
            item["subtotal_tax"] = fmt_money(sum((money(t["subtotal"]) for t in taxes), Decimal("0")))
        for line in record["shipping_lines"]:
            taxes = []
            for rate in rates:
                if not rate.get("shipping", True):
                    continue
                total = (money(line["total"]) * money(rate["rate"]) / 100).quantize(
                    Decimal("0.01"), rounding=ROUND_HALF_UP)
                taxes.append({"id": rate["id"], "total": fmt_money(total), "subtotal": ""})
                per_rate.setdefault(rate["id"], [Decimal("0"), Decimal("0")])[1] += total
            line["taxes"] = taxes
            line["total_tax"] = fmt_money(sum((money(t["total"]) for t in taxes), Decimal("0")))
        by_id = {rate["id"]: rate for rate in rates}
        kept = {t["rate_id"]: t for t in record.get("tax_lines") or []}
        record["tax_lines"] = [
            {"id": kept[rid]["id"] if rid in kept else self._new_item_id(), **tax_line(by_id[rid], items, ship)}
            for rid, (items, ship) in sorted(per_rate.items())
        ]

    def refunded_total(self, record: dict) -> Decimal:
        return sum((money(self.refunds.records[r]["amount"]) for r in record["refund_ids"]
                    if r in self.refunds.records), Decimal("0"))

    def _transition(self, record: dict, status: str) -> None:
        """Change status with core's stock side effects (wc-stock-functions.php)."""
        old = record["status"]
        record["status"] = status
        self.add_note(record, f"Order status changed from {_status_label(old)} to {_status_label(status)}.")
        for template in STATUS_EMAILS.get((old, status), ()) + STATUS_EMAILS.get((None, status), ()):
            self._email(record, template)
        if status == "completed" and record["date_completed"] is None:
            record["date_completed"] = self.now()
        if status in ("processing", "completed") and record["date_paid"] is None and record["payment_method"]:
            record["date_paid"] = self.now()
        if status in STOCK_REDUCING_STATUSES and not record["stock_reduced"]:
            self._reduce_stock(record)
        elif status in STOCK_RESTORING_STATUSES and record["stock_reduced"]:
            self._restore_stock(record)

    def _stock_product(self, item: dict) -> dict | None:
        product = self.item(item["variation_id"] or item["product_id"])
        if product is None or not self.settings["manage_stock"]:
            return None
        product = self.stock_owner(product)
        return product if product["manage_stock"] else None

    def _reduce_stock(self, record: dict) -> None:
        changes = []
        bump = self.settings["order_stock_moves_product_modified"]
        for item in record["line_items"]:
            product = self._stock_product(item)
            if product is None or item["reduced_stock"]:
                continue
            old = product["stock_quantity"]
            self.change_stock(product, -item["quantity"], bump)
            product["total_sales"] += item["quantity"]
            self._set_reduced(item, item["quantity"])
            changes.append(f"{item['name']} ({item['sku'] or product['id']}) {old}&rarr;{product['stock_quantity']}")
        record["stock_reduced"] = True
        if changes:
            self.add_note(record, "Stock levels reduced: " + ", ".join(changes))

    def _set_reduced(self, item: dict, quantity: int | None) -> None:
        """The units an order line holds, mirrored in its ``_reduced_stock`` meta as core keeps it."""
        item["reduced_stock"] = quantity
        self.set_meta(item["meta_data"], "_reduced_stock", None if quantity is None else str(quantity))

    def _restore_stock(self, record: dict) -> None:
        changes = []
        bump = self.settings["order_stock_moves_product_modified"]
        for item in record["line_items"]:
            product = self._stock_product(item)
            if product is None or not item["reduced_stock"]:
                continue
            old = product["stock_quantity"]
            self.change_stock(product, item["reduced_stock"], bump)
            self._set_reduced(item, None)
            changes.append(f"{item['name']} ({item['sku'] or product['id']}) {old}&rarr;{product['stock_quantity']}")
        record["stock_reduced"] = False
        if changes:
            self.add_note(record, "Stock levels increased: " + ", ".join(changes))

    def _adjust_line_stock(self, old_items: list[dict], work: dict) -> None:
        """Edited lines of an order whose stock is taken move the stock by the difference (core 9.x)."""
        bump = self.settings["order_stock_moves_product_modified"]
        kept = {li["id"] for li in work["line_items"]}
        for item in old_items:
            product = self._stock_product(item)
            if item["id"] not in kept and product is not None and item["reduced_stock"]:
                self.change_stock(product, item["reduced_stock"], bump)
        for item in work["line_items"]:
            product = self._stock_product(item)
            if product is None:
                continue
            delta = item["quantity"] - (item["reduced_stock"] or 0)
            if delta:
                self.change_stock(product, -delta, bump)
                self._set_reduced(item, item["quantity"])
                self.add_note(work, f"Adjusted stock: {item['name']} ({product['sku'] or product['id']}) "
                              f"{product['stock_quantity'] + delta}&rarr;{product['stock_quantity']}")

    def delete_order(self, record: dict, force: bool) -> dict:
        if not force:
            if record["status"] == "trash":
                raise WooError(410, "woocommerce_rest_already_trashed", "The order has already been deleted.")
            record["status"] = "trash"
            self.orders.touch(record, self.now())
            return record
        self.orders.remove(record["id"])
        return record

    # notes ---------------------------------------------------------------------
    def add_note(self, record: dict, note: str, customer_note: bool = False, author: str = "system") -> dict:
        self.next_note_id += 1
        entry = {"id": self.next_note_id, "author": author, "created": self.now(), "note": note,
                 "customer_note": customer_note}
        self.notes.setdefault(record["id"], []).append(entry)
        if customer_note:
            self._email(record, "customer_note", note=note)
        return entry

    # e-mails -------------------------------------------------------------------
    def _email(self, record: dict, template: str, **context: Any) -> None:
        """Queue one of core's transactional e-mails (WC_Emails) when enabled and addressed.

        Customer e-mails go to the order's ``billing.email``; with none, core sends nothing.
        """
        if not self.settings.get("emails_enabled", True):
            return
        site = str(self.settings.get("site_title") or "Sandbox Store")
        number = record["id"]
        if template in ADMIN_EMAILS:
            to = str(self.settings.get("admin_email") or "")
        else:
            to = record["billing"].get("email", "")
        if not to:
            return
        subject = {
            "new_order": f"[{site}]: New order #{number}",
            "cancelled_order": f"[{site}]: Order #{number} has been cancelled",
            "customer_on_hold_order": f"Your {site} order has been received!",
            "customer_processing_order": f"Your {site} order has been received!",
            "customer_completed_order": f"Your {site} order is now complete: good things are heading your way!",
            "customer_refunded_order": (f"Your {site} order #{number} has been refunded" if context.get("full")
                                        else f"Your {site} order #{number} has been partially refunded"),
            "customer_note": f"Note added to your {site} order",
        }[template]
        body = f"Order #{number}\n" + "\n".join(f"{li['name']} x {li['quantity']}" for li in record["line_items"])
        if context.get("note"):
            body += "\n\n" + str(context["note"])
        message = {"template": template, "to": to, "subject": subject, "body": body, "order_id": number,
                   "from": str(self.settings.get("email_from") or "shop@store.sandbox")}
        self.emails.append(message)
        if self.mailer is not None:
            self.mailer(message)

    # refunds -------------------------------------------------------------------
    def create_refund(self, order: dict, data: dict) -> dict:
        """``wc_create_refund``: ``line_items`` may name product, shipping or fee items of the order,
        each with ``refund_total`` and optionally ``refund_tax`` (``[{"id": rate id, "refund_total"}]``)."""
        if not isinstance(data, dict):
            raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.")
        lines = data.get("line_items") or []
        if not isinstance(lines, list):
            raise invalid_param("line_items", "line_items is not of type array.")
        refund_lines = []
        for posted in lines:
            if not isinstance(posted, dict):
                continue
            found = None
            for kind in ("line_items", "shipping_lines", "fee_lines"):
                item = next((li for li in order[kind] if str(li["id"]) == str(posted.get("id"))), None)
                if item is not None:
                    found = (kind, item)
                    break
            if found is None:
                continue  # core skips ids that are not items of the order
            qty = as_int(posted.get("quantity", 0) or 0, "quantity")
            amount = money(posted.get("refund_total", 0), "refund_total")
            taxes = {}
            for tax in posted.get("refund_tax") or []:
                if isinstance(tax, dict) and tax.get("id") is not None:
                    taxes[as_int(tax["id"], "refund_tax")] = money(tax.get("refund_total", 0), "refund_total")
            refund_lines.append((found[0], found[1], qty, amount, taxes))
        if "amount" in data and data["amount"] not in (None, ""):
            amount = money(data["amount"], "amount")
        else:
            amount = sum((a + sum(t.values(), Decimal("0")) for _, _, _, a, t in refund_lines), Decimal("0"))
        if amount < 0:
            raise WooError(400, "woocommerce_rest_invalid_order_refund", "Refund amount must be greater than zero.")
        remaining = self.order_total(order) - self.refunded_total(order)
        if amount > remaining or (amount == 0 and not refund_lines):
            # core answers this one with a bare number as data (recorded: "data": 500)
            raise WooError(500, "woocommerce_rest_cannot_create_order_refund", "Invalid refund amount.",
                           bare_status=True)
        if as_bool(data.get("api_refund", True), "api_refund"):
            gateway = order["payment_method"]
            if gateway not in self.settings["refund_gateways"]:
                message = ("The payment gateway for this order does not support automatic refunds."
                           if gateway in KNOWN_GATEWAYS else "The payment gateway for this order does not exist.")
                raise WooError(500, "woocommerce_rest_cannot_create_order_refund", message, bare_status=True)
            refunded_payment = True
        else:
            refunded_payment = False
        ts = self.now()
        refund = {
            "id": self._new_id(), "parent_id": order["id"], "created": ts, "modified": ts,
            "amount": fmt_money(amount), "reason": str(data.get("reason") or ""),
            "refunded_by": as_int(data.get("refunded_by", 1), "refunded_by"),
            "refunded_payment": refunded_payment, "meta_data": [], "line_items": [], "shipping_lines": [],
            "fee_lines": [], "tax_lines": [],
        }
        if "meta_data" in data:
            self._write_meta(refund["meta_data"], data["meta_data"])
        restock = as_bool(data.get("api_restock", True), "api_restock")
        per_rate: dict[int, list[Decimal]] = {}
        for kind, item, qty, line_amount, taxes in refund_lines:
            refunded_taxes = [{"id": rid, "total": fmt_money(-t), "subtotal": fmt_money(-t) if kind != "shipping_lines"
                               else ""} for rid, t in sorted(taxes.items())]
            for rid, t in taxes.items():
                per_rate.setdefault(rid, [Decimal("0"), Decimal("0")])[1 if kind == "shipping_lines" else 0] -= t
            common = {"id": self._new_item_id(), "total": fmt_money(-line_amount),
                      "total_tax": fmt_money(-sum(taxes.values(), Decimal("0"))), "taxes": refunded_taxes,
                      "meta_data": [{"id": self._new_meta_id(), "key": "_refunded_item_id", "value": str(item["id"])}]}
            if kind == "line_items":
                refund["line_items"].append({
                    **common, "name": item["name"], "product_id": item["product_id"],
                    "variation_id": item["variation_id"], "quantity": -qty, "subtotal": fmt_money(-line_amount),
                    "subtotal_tax": common["total_tax"], "sku": item["sku"], "price": item["price"],
                })
                if restock and qty > 0:
                    self._restock_refunded(order, item, qty)
            else:
                refund[kind].append({**common, **{k: item.get(k, "") for k in
                                                  ("method_title", "method_id", "instance_id", "name")}})
        rates = {number: rate for number, rate in enumerate(self.settings.get("tax_rates") or [], start=1)}
        refund["tax_lines"] = [{"id": self._new_item_id(), **tax_line(dict(rates.get(rid, {"rate": 0}), id=rid),
                                                                      items, ship)}
                               for rid, (items, ship) in sorted(per_rate.items())]
        self.refunds.add(refund)
        order["refund_ids"].append(refund["id"])
        self.add_note(order, f"Refunded {fmt_money(amount)} {order['currency']}"
                      + (f" &ndash; {refund['reason']}" if refund["reason"] else "") + ".")
        full = self.refunded_total(order) >= self.order_total(order)
        if full and order["status"] != "refunded":
            self._transition(order, "refunded")
        self._email(order, "customer_refunded_order", full=full)
        self.orders.touch(order, ts)
        return refund

    def _restock_refunded(self, order: dict, item: dict, qty: int) -> None:
        product = self._stock_product(item)
        if product is None or not item["reduced_stock"]:
            return
        back = min(qty, item["reduced_stock"])
        self.change_stock(product, back, self.settings["order_stock_moves_product_modified"])
        self._set_reduced(item, item["reduced_stock"] - back)
        restocked = int(next((m["value"] for m in item["meta_data"] if m["key"] == "_restock_refunded_items"), 0))
        self.set_meta(item["meta_data"], "_restock_refunded_items", str(restocked + back))
        self.add_note(order, f"Item #{item['id']} stock increased from "
                      f"{product['stock_quantity'] - back} to {product['stock_quantity']}.")

    # shipment tracking and fulfillments ---------------------------------------
    def tracking_items(self, order: dict) -> list[dict]:
        meta = next((m for m in order["meta_data"] if m["key"] == "_wc_shipment_tracking_items"), None)
        return list(meta["value"]) if meta else []

    def add_tracking(self, order: dict, data: dict) -> dict:
        if not isinstance(data, dict) or not data.get("tracking_number"):
            raise WooError(400, "rest_missing_callback_param", "Missing parameter(s): tracking_number",
                           params=["tracking_number"])
        shipped = data.get("date_shipped")
        try:
            shipped_ts = epoch(datetime.fromisoformat(str(shipped)).replace(tzinfo=UTC)) if shipped else self.now()
        except ValueError:
            raise invalid_param("date_shipped", "Invalid date.") from None
        provider = str(data.get("tracking_provider") or "")
        custom = "" if provider else str(data.get("custom_tracking_provider") or "")
        entry = {
            "tracking_provider": provider.lower().replace(" ", "-") if provider else "",
            "custom_tracking_provider": custom,
            "custom_tracking_link": "" if provider else str(data.get("custom_tracking_link") or ""),
            "tracking_number": str(data["tracking_number"]),
            "date_shipped": shipped_ts,
        }
        entry["tracking_id"] = hashlib.md5(
            f"{entry['tracking_provider']}-{entry['tracking_number']}-{shipped_ts}-{order['id']}".encode()).hexdigest()
        items = self.tracking_items(order) + [entry]
        self.set_meta(order["meta_data"], "_wc_shipment_tracking_items", items)
        self.orders.touch(order, self.now())
        return entry

    def delete_tracking(self, order: dict, tracking_id: str) -> dict:
        items = self.tracking_items(order)
        entry = next((t for t in items if t["tracking_id"] == tracking_id), None)
        if entry is None:
            raise WooError(404, "woocommerce_rest_order_invalid_id", "Invalid tracking ID.")
        items.remove(entry)
        self.set_meta(order["meta_data"], "_wc_shipment_tracking_items", items)
        self.orders.touch(order, self.now())
        return entry

    def add_fulfillment(self, order: dict, tracking: dict | None) -> dict:
        self.next_fulfillment_id += 1
        meta = [{"key": "_items", "value": [{"item_id": li["id"], "qty": li["quantity"]} for li in order["line_items"]]},
                {"key": "_date_fulfilled", "value": wp_date(self.now())}]
        if tracking:
            provider = tracking["tracking_provider"] or tracking["custom_tracking_provider"]
            meta += [{"key": "_tracking_number", "value": tracking["tracking_number"]},
                     {"key": "_shipment_provider", "value": provider},
                     {"key": "_tracking_url", "value": tracking_link(tracking)}]
        fulfillment = {"id": self.next_fulfillment_id, "entity_type": "WC_Order", "entity_id": str(order["id"]),
                       "status": "fulfilled", "is_fulfilled": True, "updated": self.now(), "date_deleted": None,
                       "meta_data": [{"id": self._new_meta_id(), **m} for m in meta]}
        self.fulfillments.setdefault(order["id"], []).append(fulfillment)
        self.set_meta(order["meta_data"], "_fulfillment_status", "fulfilled")
        return fulfillment

    # helpers -------------------------------------------------------------------
    def _display_name(self, product: dict) -> str:
        if product["kind"] != "variation":
            return product["name"]
        parent = self.products.get(product["parent_id"])
        options = ", ".join(str(a.get("option", "")) for a in product["attributes"])
        base = parent["name"] if parent else ""
        return f"{base} - {options}" if options else base

    def _effective_price(self, product: dict) -> str:
        return product["sale_price"] or product["regular_price"] or "0"

    # persistence ---------------------------------------------------------------
    def to_state(self) -> dict:
        return {
            "products": list(self.products.records.values()),
            "variations": list(self.variations.records.values()),
            "orders": list(self.orders.records.values()),
            "refunds": list(self.refunds.records.values()),
            "notes": {str(k): v for k, v in self.notes.items()},
            "fulfillments": {str(k): v for k, v in self.fulfillments.items()},
            "counters": [self.next_id, self.next_item_id, self.next_meta_id, self.next_note_id,
                         self.next_fulfillment_id],
        }

    def load_state(self, state: dict) -> None:
        self.products.load(state.get("products", []))
        self.variations.load(state.get("variations", []))
        self.orders.load(state.get("orders", []))
        self.refunds.load(state.get("refunds", []))
        self.notes = {int(k): v for k, v in state.get("notes", {}).items()}
        self.fulfillments = {int(k): v for k, v in state.get("fulfillments", {}).items()}
        (self.next_id, self.next_item_id, self.next_meta_id, self.next_note_id,
         self.next_fulfillment_id) = state.get("counters", [100, 1, 1, 1, 1])
        self.sku_index = {r["sku"]: r["id"] for coll in (self.products, self.variations)
                          for r in coll.records.values() if r["sku"]}
        self.trashed = sum(1 for coll in (self.products, self.variations)
                           for r in coll.records.values() if r["status"] == "trash")


ADMIN_EMAILS = frozenset({"new_order", "cancelled_order"})
# (old status, new status) -> e-mails core sends; None as old status means "from any".
STATUS_EMAILS: dict[tuple[str | None, str], tuple[str, ...]] = {
    ("pending", "on-hold"): ("new_order", "customer_on_hold_order"),
    ("failed", "on-hold"): ("new_order", "customer_on_hold_order"),
    ("cancelled", "on-hold"): ("customer_on_hold_order",),
    ("pending", "processing"): ("new_order", "customer_processing_order"),
    ("failed", "processing"): ("new_order", "customer_processing_order"),
    ("on-hold", "processing"): ("customer_processing_order",),
    ("cancelled", "processing"): ("customer_processing_order",),
    ("pending", "completed"): ("new_order",),
    ("processing", "cancelled"): ("cancelled_order",),
    ("on-hold", "cancelled"): ("cancelled_order",),
    (None, "completed"): ("customer_completed_order",),
}


DEFAULT_CATEGORIES = ({"id": 15, "name": "Uncategorized", "slug": "uncategorized"},)


def _attribute(posted: dict, position: int, of_variation: bool) -> dict:
    """A product attribute as core stores a custom one (a variation's names its option)."""
    name = str(posted.get("name", ""))
    if of_variation:
        return {"id": int(posted.get("id") or 0), "name": name, "slug": name.lower().replace(" ", "-"),
                "option": str(posted.get("option", ""))}
    return {"id": int(posted.get("id") or 0), "name": name, "slug": name,
            "position": int(posted.get("position", position)), "visible": bool(posted.get("visible", False)),
            "variation": bool(posted.get("variation", False)),
            "options": [str(o) for o in posted.get("options") or []]}


def tax_line(rate: dict, items_tax: Decimal, shipping_tax: Decimal) -> dict:
    """An order's (or refund's) tax line for one rate."""
    label = str(rate.get("name") or "Tax")
    return {"rate_code": f"{rate.get('country', '')}-{label}-{rate.get('priority', 1)}".upper(),
            "rate_id": rate["id"], "label": label, "compound": False, "tax_total": fmt_money(items_tax),
            "shipping_tax_total": fmt_money(shipping_tax), "rate_percent": _number(money(rate["rate"])),
            "meta_data": []}


def _number(value: Decimal) -> int | float:
    """A JSON number as PHP encodes a float: 20 for 20.0, 12.5 for 12.5."""
    return int(value) if value == value.to_integral_value() else float(value)


def tracking_link(entry: dict) -> str:
    if entry["custom_tracking_link"]:
        return entry["custom_tracking_link"]
    template = TRACKING_PROVIDER_LINKS.get(entry["tracking_provider"], "")
    return template.replace("%1$s", entry["tracking_number"])


def _address(with_email: bool) -> dict:
    fields = ["first_name", "last_name", "company", "address_1", "address_2", "city", "state", "postcode",
              "country"] + (["email"] if with_email else []) + ["phone"]
    return {name: "" for name in fields}


def _status_label(status: str) -> str:
    return {"pending": "Pending payment", "on-hold": "On hold", "checkout-draft": "Draft"}.get(
        status, status.replace("-", " ").capitalize())
