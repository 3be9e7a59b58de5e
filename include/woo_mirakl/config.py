"""Marketplace settings from ``include/config/marketplaces.yaml``.

Loaded at DAG-parse time, so this module reads one small YAML file and nothing else:
no network, no database, no heavy imports.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DEFAULT_FILE = CONFIG_DIR / "marketplaces.yaml"
ENV_VAR = "WOO_MIRAKL_MARKETPLACES"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# libyaml's loader when PyYAML was built with it: every DAG file parses this file, ~10x faster
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    """The marketplaces file is missing, malformed, or names something twice."""


@dataclass(frozen=True)
class PriceRule:
    """Marketplace price from the WooCommerce price: a markup, then rounding."""

    markup_percent: Decimal = Decimal("0")
    rounding: Decimal = Decimal("0.01")

    def apply(self, woo_price: Decimal | str | float) -> Decimal:
        price = Decimal(str(woo_price)) * (1 + self.markup_percent / 100)
        steps = (price / self.rounding).quantize(Decimal("1"), rounding=ROUND_HALF_UP)
        return (steps * self.rounding).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class OrderPolicy:
    """How order lines are decided; the defaults refuse what cannot be fulfilled."""

    accept_orders: bool = True
    refuse_unknown_sku: bool = True
    refuse_short_stock: bool = True
    # When the operator disables partial acceptance: "refuse_all" the order when a line must be
    # refused, or "accept_all" when only stock is short; "allowed" decides line by line.
    partial_acceptance: str = "allowed"
    # Orders accepted outside the integration (back office, auto-accept) get a WooCommerce order.
    adopt_external_orders: bool = True


PARTIAL_ACCEPTANCE = ("allowed", "refuse_all", "accept_all")
@dataclass(frozen=True)
class OrderListing:
    """How Mirakl counts this marketplace's OR11 listings against their ceiling.

    ``persona``: ``default`` (once a minute) or ``external_partner`` (every 15 minutes), as the
    spec publishes them. ``each_page_counts``: the spec does not say whether every page of one
    listing counts as a call; the safe reading (it does) is the default.

    ``changes``: where the state changes of known orders come from. ``listing`` (default): one
    OR11 listing of every order updated since the last one. ``export``: OR11 lists only orders
    awaiting acceptance (so each page read carries new orders), and every other change comes
    from the asynchronous order export (OR13 differential every 5 minutes, OR14, OR15), which
    also absorbs a backlog of any size; a change then reaches the flow up to ~6 minutes later.
    """

    persona: str = "default"
    each_page_counts: bool = True
    changes: str = "listing"


ORDER_LISTING_PERSONAS = ("default", "external_partner")
ORDER_CHANGE_SOURCES = ("listing", "export")


REVIEW_TIMEOUT_DEFAULTS = ("refuse", "accept", "leave")


@dataclass(frozen=True)
class HumanReview:
    """Which orders wait for a person's decision in Airflow, and what happens when nobody answers.

    An order needs a person when ``order_policy.accept_orders`` is false, or when one of the rules
    set here matches; the decision is due ``decide_before_minutes`` before Mirakl's acceptance
    deadline, after which ``timeout_default`` applies (refuse, accept, or leave it to Mirakl).
    """

    in_airflow: bool = True  # false: such orders stay for Mirakl's back office, as before
    price_below_woo_share: Decimal | None = None  # e.g. 0.10: a unit price more than 10 % under WooCommerce's
    backorder_short_lines: bool = False  # a line short of stock whose product allows backorders
    order_total_above: Decimal | None = None  # the order's total price (in its currency)
    timeout_default: str = "refuse"
    decide_before_minutes: float = 10.0


PRODUCT_ID_SOURCES = ("global_unique_id", "meta", "shop_sku")
RETIRE_POLICIES = ("delete", "zero")


@dataclass(frozen=True)
class CatalogueSelection:
    """Which WooCommerce products are published on a marketplace; empty selects nothing."""

    categories: tuple[str, ...] = ()  # category ids, slugs or names
    tags: tuple[str, ...] = ()  # tag ids, slugs or names
    skus: tuple[str, ...] = ()  # product or variation SKUs (a parent's SKU selects its variations)

    @property
    def empty(self) -> bool:
        return not (self.categories or self.tags or self.skus)


@dataclass(frozen=True)
class CataloguePolicy:
    """How WooCommerce products become this marketplace's offers (the catalogue publish flow)."""

    selection: CatalogueSelection = field(default_factory=CatalogueSelection)
    # Where an offer's product reference comes from: WooCommerce's GTIN field, a meta key,
    # or the shop SKU itself (only where the operator accepts SHOP_SKU references).
    product_id_source: str = "global_unique_id"
    product_id_meta_key: str = ""
    product_id_type: str = "EAN"
    state_code: str = "11"
    leadtime_to_ship: int = 2
    logistic_class: str = ""
    leadtime_meta_key: str = "_mirakl_leadtime_to_ship"  # a product's own lead time overrides the default
    retire: str = "delete"  # deselected, deleted or draft products: delete the offer, or keep it at zero stock
    product_import: bool = False  # send products the operator does not know through P41
    attributes_file: str = "product_attributes.yaml"


@dataclass(frozen=True)
class Marketplace:
    """One Mirakl marketplace the store sells on, and how to treat it."""

    name: str
    mirakl_conn_id: str
    woocommerce_conn_id: str = "woocommerce_default"
    description: str = ""
    currency: str = "EUR"
    safety_buffer: int = 0
    price_rule: PriceRule = field(default_factory=PriceRule)
    unmanaged_in_stock_quantity: int = 10
    order_policy: OrderPolicy = field(default_factory=OrderPolicy)
    acceptance_deadline_alerts: tuple[float, ...] = (0.5, 0.8)
    carrier_map_file: str = "carriers.yaml"
    commission_rate: Decimal = Decimal("0.10")
    commission_tolerance: Decimal = Decimal("0.01")
    schedules: dict[str, str] = field(default_factory=dict)
    catalogue: CataloguePolicy = field(default_factory=CataloguePolicy)
    human_review: HumanReview = field(default_factory=HumanReview)
    # Marketplaces forbid contacting their customers: their e-mail goes to order meta, not to
    # billing.email (where WooCommerce sends its customer e-mails), unless this is true.
    customer_email_in_billing: bool = False
    order_listing: OrderListing = field(default_factory=OrderListing)

    def schedule(self, flow: str, default: str | None) -> str | None:
        return self.schedules.get(flow, default)

    def carrier_map(self) -> dict[str, str]:
        """WooCommerce carrier name (normalised) -> Mirakl carrier code."""
        data = _read_yaml(CONFIG_DIR / self.carrier_map_file)
        return {normalise_carrier(k): str(v) for k, v in (data.get("carriers") or {}).items()}


def normalise_carrier(name: str) -> str:
    """Case- and spacing-insensitive key for carrier names ("La Poste" == "la-poste")."""
    return re.sub(r"[\s_\-.]+", "", name).casefold()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_LOADER) or {}  # noqa: S506 (a safe loader)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def _marketplace(entry: dict[str, Any], path: Path) -> Marketplace:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: each marketplace must be a mapping, got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{path}: marketplace name {name!r} must be lower-case letters, digits and '_' (it becomes a DAG id)"
        )
    if not entry.get("mirakl_conn_id"):
        raise ConfigError(f"{path}: marketplace {name!r} has no mirakl_conn_id")
    price = entry.get("price_rule") or {}
    policy = entry.get("order_policy") or {}
    buffer = int(entry.get("safety_buffer", 0))
    if buffer < 0:
        raise ConfigError(f"{path}: marketplace {name!r} has a negative safety_buffer")
    rounding = Decimal(str(price.get("rounding", "0.01")))
    if rounding <= 0:
        raise ConfigError(f"{path}: marketplace {name!r} price_rule.rounding must be positive")
    return Marketplace(
        name=name,
        mirakl_conn_id=str(entry["mirakl_conn_id"]),
        woocommerce_conn_id=str(entry.get("woocommerce_conn_id", "woocommerce_default")),
        description=str(entry.get("description", "")),
        currency=str(entry.get("currency", "EUR")),
        safety_buffer=buffer,
        price_rule=PriceRule(Decimal(str(price.get("markup_percent", "0"))), rounding),
        unmanaged_in_stock_quantity=int((entry.get("unmanaged_stock") or {}).get("in_stock_quantity", 10)),
        order_policy=OrderPolicy(
            accept_orders=bool(policy.get("accept_orders", True)),
            refuse_unknown_sku=bool(policy.get("refuse_unknown_sku", True)),
            refuse_short_stock=bool(policy.get("refuse_short_stock", True)),
            partial_acceptance=_partial_acceptance(policy.get("partial_acceptance", "allowed"), name, path),
            adopt_external_orders=bool(policy.get("adopt_external_orders", True)),
        ),
        acceptance_deadline_alerts=tuple(float(x) for x in entry.get("acceptance_deadline_alerts", (0.5, 0.8))),
        carrier_map_file=str(entry.get("carrier_map_file", "carriers.yaml")),
        commission_rate=Decimal(str(entry.get("commission_rate", "0.10"))),
        commission_tolerance=Decimal(str(entry.get("commission_tolerance", "0.01"))),
        schedules=dict(entry.get("schedules") or {}),
        catalogue=_catalogue(entry.get("catalogue"), name, path),
        human_review=_human_review(entry.get("human_review"), name, path),
        customer_email_in_billing=_email_in_billing(entry.get("customer_contact"), name, path),
        order_listing=_order_listing(entry.get("order_listing"), name, path),
    )


def _human_review(entry: Any, name: str, path: Path) -> HumanReview:
    if entry is None:
        return HumanReview()
    where = f"{path}: marketplace {name!r} human_review"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(entry) - {f.name for f in HumanReview.__dataclass_fields__.values()})
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}")

    def share_or_amount(key: str, upper: Decimal | None) -> Decimal | None:
        value = entry.get(key)
        if value in (None, ""):
            return None
        number = Decimal(str(value))
        if number < 0 or (upper is not None and number > upper):
            raise ConfigError(f"{where}.{key} must be between 0 and {upper}" if upper else f"{where}.{key} must be >= 0")
        return number

    default = str(entry.get("timeout_default", "refuse"))
    if default not in REVIEW_TIMEOUT_DEFAULTS:
        raise ConfigError(f"{where}.timeout_default {default!r} must be one of {list(REVIEW_TIMEOUT_DEFAULTS)}")
    margin = float(entry.get("decide_before_minutes", 10))
    if margin < 0:
        raise ConfigError(f"{where}.decide_before_minutes must be 0 or more")
    return HumanReview(
        in_airflow=bool(entry.get("in_airflow", True)),
        price_below_woo_share=share_or_amount("price_below_woo_share", Decimal("1")),
        backorder_short_lines=bool(entry.get("backorder_short_lines", False)),
        order_total_above=share_or_amount("order_total_above", None),
        timeout_default=default,
        decide_before_minutes=margin,
    )


def _email_in_billing(entry: Any, name: str, path: Path) -> bool:
    contact = entry or {}
    if not isinstance(contact, dict):
        raise ConfigError(f"{path}: marketplace {name!r} customer_contact must be a mapping")
    where = contact.get("email", "order_meta")
    if where not in ("order_meta", "billing"):
        raise ConfigError(f"{path}: marketplace {name!r} customer_contact.email {where!r} must be order_meta or billing")
    return where == "billing"


def _order_listing(entry: Any, name: str, path: Path) -> OrderListing:
    if entry is None:
        return OrderListing()
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: marketplace {name!r} order_listing must be a mapping")
    persona = str(entry.get("persona", "default"))
    if persona not in ORDER_LISTING_PERSONAS:
        raise ConfigError(f"{path}: marketplace {name!r} order_listing.persona {persona!r} must be one of "
                          f"{list(ORDER_LISTING_PERSONAS)}")
    changes = str(entry.get("changes", "listing"))
    if changes not in ORDER_CHANGE_SOURCES:
        raise ConfigError(f"{path}: marketplace {name!r} order_listing.changes {changes!r} must be one of "
                          f"{list(ORDER_CHANGE_SOURCES)}")
    return OrderListing(persona=persona, each_page_counts=bool(entry.get("each_page_counts", True)),
                        changes=changes)


def _strings(value: Any, what: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {what} must be a list, got {value!r}")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _catalogue(entry: Any, name: str, path: Path) -> CataloguePolicy:
    if entry is None:
        return CataloguePolicy()
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: marketplace {name!r} catalogue must be a mapping")
    where = f"marketplace {name!r} catalogue"
    select = entry.get("select") or {}
    if not isinstance(select, dict):
        raise ConfigError(f"{path}: {where}.select must be a mapping of categories, tags and skus")
    unknown = sorted(set(select) - {"categories", "tags", "skus"})
    if unknown:
        raise ConfigError(f"{path}: {where}.select has unknown keys {unknown}; use categories, tags, skus")
    product_id = entry.get("product_id") or {}
    source = str(product_id.get("source", "global_unique_id"))
    if source not in PRODUCT_ID_SOURCES:
        raise ConfigError(f"{path}: {where}.product_id.source {source!r} must be one of {list(PRODUCT_ID_SOURCES)}")
    meta_key = str(product_id.get("meta_key") or "")
    if source == "meta" and not meta_key:
        raise ConfigError(f"{path}: {where}.product_id.source is 'meta' but no product_id.meta_key is given")
    id_type = str(product_id.get("type") or ("SHOP_SKU" if source == "shop_sku" else "EAN"))
    defaults = entry.get("defaults") or {}
    leadtime = int(defaults.get("leadtime_to_ship", 2))
    if leadtime < 0:
        raise ConfigError(f"{path}: {where}.defaults.leadtime_to_ship must be 0 or more")
    retire = str(entry.get("retire", "delete"))
    if retire not in RETIRE_POLICIES:
        raise ConfigError(f"{path}: {where}.retire {retire!r} must be one of {list(RETIRE_POLICIES)}")
    products = entry.get("product_import") or {}
    return CataloguePolicy(
        selection=CatalogueSelection(
            categories=_strings(select.get("categories"), f"{where}.select.categories", path),
            tags=_strings(select.get("tags"), f"{where}.select.tags", path),
            skus=_strings(select.get("skus"), f"{where}.select.skus", path),
        ),
        product_id_source=source,
        product_id_meta_key=meta_key,
        product_id_type=id_type,
        state_code=str(defaults.get("state_code", "11")),
        leadtime_to_ship=leadtime,
        logistic_class=str(defaults.get("logistic_class") or ""),
        leadtime_meta_key=str(defaults.get("leadtime_meta_key", "_mirakl_leadtime_to_ship")),
        retire=retire,
        product_import=bool(products.get("enabled", False)),
        attributes_file=str(products.get("attributes_file", "product_attributes.yaml")),
    )


def marketplaces_file() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_FILE)


def load_marketplaces(path: str | Path | None = None) -> list[Marketplace]:
    """All marketplaces of the configuration file, validated."""
    path = Path(path) if path else marketplaces_file()
    entries = _read_yaml(path).get("marketplaces") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'marketplaces' must be a list")
    result = [_marketplace(e, path) for e in entries]
    names = [m.name for m in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: marketplace names must be unique, repeated: {', '.join(duplicates)}")
    return result


def get_marketplace(name: str, path: str | Path | None = None) -> Marketplace:
    for marketplace in load_marketplaces(path):
        if marketplace.name == name:
            return marketplace
    raise ConfigError(f"no marketplace named {name!r} in {path or marketplaces_file()}")


def _partial_acceptance(value: Any, name: str, path: Any) -> str:
    if value not in PARTIAL_ACCEPTANCE:
        raise ConfigError(
            f"{path}: marketplace {name!r} order_policy.partial_acceptance must be one of "
            f"{', '.join(PARTIAL_ACCEPTANCE)}, got {value!r}"
        )
    return str(value)
