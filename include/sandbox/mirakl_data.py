"""The simulated Mirakl shop's state and business rules, independent of HTTP.

:class:`MiraklStore` holds offers, orders, stock and price imports, transaction lines and
accounting documents, applies Mirakl's rules (order states, per-line acceptance, refunds,
commissions, billing cycles) and renders the JSON and CSV shapes of the seller API.
Errors are raised as :class:`~include.sandbox.core.ApiError` with Mirakl's error codes.
Timestamps are kept as ISO strings (``iso()``), which sort chronologically as text.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import random
import uuid
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterable

from include.sandbox.core import ApiError, iso, parse_iso

ORDER_STATES = (
    "STAGING", "WAITING_ACCEPTANCE", "WAITING_DEBIT", "WAITING_DEBIT_PAYMENT", "SHIPPING", "SHIPPED",
    "TO_COLLECT", "RECEIVED", "CLOSED", "REFUSED", "CANCELED",
)
# Lines the customer has paid for and that can still be refunded (not CLOSED: see mirakl-api.md).
def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


# OR13: "Mirakl will subtract a time delta [from start_update_date] to ensure no orders are missed"
ORDER_EXPORT_MARGIN_S = 60
REFUNDABLE_STATES = {"SHIPPING", "SHIPPED", "TO_COLLECT", "RECEIVED"}

CARRIERS: tuple[dict, ...] = (
    {"code": "DHL", "label": "DHL", "standard_code": "DHL",
     "tracking_url": "https://www.dhl.com/en/express/tracking.html?AWB={trackingId}&brand=DHL"},
    {"code": "UPS", "label": "UPS", "standard_code": "UPS",
     "tracking_url": "https://wwwapps.ups.com/WebTracking/track?track=yes&trackNums={trackingId}"},
    {"code": "COLISSIMO", "label": "Colissimo", "standard_code": "COLISSIMO",
     "tracking_url": "https://www.laposte.fr/outils/suivre-vos-envois?code={trackingId}"},
    {"code": "CHRONOPOST", "label": "Chronopost", "standard_code": "CHRONOPOST",
     "tracking_url": "https://www.chronopost.fr/tracking-no-cms/suivi-page?listeNumerosLT={trackingId}"},
    {"code": "DPD", "label": "DPD", "standard_code": "DPD",
     "tracking_url": "https://tracking.dpd.de/status/en_US/parcel/{trackingId}"},
    {"code": "GLS", "label": "GLS", "standard_code": "GLS",
     "tracking_url": "https://gls-group.com/track/{trackingId}"},
    {"code": "LAPOSTE", "label": "La Poste", "standard_code": "LAPOSTE",
     "tracking_url": "https://www.laposte.fr/outils/suivre-vos-envois?code={trackingId}"},
    {"code": "FEDEX", "label": "FedEx", "standard_code": "FED",
     "tracking_url": "https://www.fedex.com/fedextrack/?trknbr={trackingId}"},
)
CARRIERS_BY_CODE = {c["code"]: c for c in CARRIERS}

STOCK_COLUMNS = ("offer-sku", "quantity", "warehouse-code", "update-delete")
PRICE_COLUMNS = ("offer-sku", "price", "discount-price", "discount-start-date", "discount-end-date")
EXPORT_COLUMNS = (
    "offer-id", "product-sku", "min-shipping-price", "min-shipping-price-additional", "min-shipping-zone",
    "min-shipping-type", "price", "total-price", "price-additional-info", "quantity", "description",
    "state-code", "shop-id", "shop-name", "professional", "premium", "logistic-class", "active",
    "favorite-rank", "channels", "deleted", "origin-price", "discount-start-date", "discount-end-date",
    "available-start-date", "available-end-date", "discount-price", "currency-iso-code", "discount-ranges",
    "leadtime-to-ship", "allow-quote-requests", "price-ranges", "fulfillment-center-code", "shop-sku",
    "date-created", "last-updated", "model", "min-order-quantity", "max-order-quantity", "package-quantity",
)
DELETED_EXPORT_COLUMNS = {"offer-id", "product-sku", "shop-id", "shop-sku", "active", "deleted"}

# OF24: the operator's offer conditions, logistic classes and product reference types.
OFFER_STATE_CODES = {"1": "Used - Like New", "2": "Used - Very Good", "3": "Used - Good", "4": "Used - Acceptable",
                     "10": "Refurbished", "11": "New"}
LOGISTIC_CLASSES = ("STANDARD", "XS", "S", "M", "L", "XL", "FREE")
PRODUCT_ID_TYPES = ("EAN", "UPC", "ISBN", "MPN", "SHOP_SKU", "SKU")
# OF03: the offer columns echoed back, then where and why the line failed (as the spec's example).
OFFER_REPORT_COLUMNS = (
    ("sku", "shop_sku"), ("product-id", "product_id"), ("product-id-type", "product_id_type"),
    ("description", "description"), ("internal-description", "internal_description"),
    ("price-additional-info", "price_additional_info"), ("quantity", "quantity"),
    ("min-quantity-alert", "min_quantity_alert"), ("state", "state_code"), ("logistic-class", "logistic_class"),
    ("update-delete", "update_delete"), ("price", "price"), ("leadtime-to-ship", "leadtime_to_ship"),
)


def money(value: Any) -> float:
    """Round half up to cents, as amounts are shown in euros and cents."""
    return float(Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


@dataclass
class MiraklSettings:
    """The shop's identity and the marketplace's configuration (changeable by the admin API)."""

    api_key: str = "sandbox-mirakl-key"
    shop_id: int = 2001
    shop_name: str = "Sandbox Shop"
    currency: str = "EUR"
    commission_rate: float = 0.10
    commission_vat_rate: float = 0.20
    leadtime_to_ship: int = 2
    # An import completes once this many sandbox seconds have passed, or at the Nth status
    # call, whichever comes first (so a client with a frozen clock still sees it finish,
    # but never on its first status call).
    import_delay_s: float = 2.0
    import_complete_after_polls: int = 2
    # OF24 with a product reference the operator catalogue lacks: "create" the product with the
    # offer (operators that let sellers do so), or "reject" the line ("The product does not exist").
    unknown_products: str = "create"
    # P41: the operator's product attribute codes; these must be filled, and which becomes the EAN reference.
    product_required_attributes: str = "sku,title,category,ean"
    product_sku_attribute: str = "sku"
    product_ean_attribute: str = "ean"
    # OR21 refuses a decision that accepts some lines and refuses others (an operator setting).
    partial_acceptance_disabled: bool = False
    # Asynchronous exports (TL03, OF52) stay PENDING this many sandbox seconds after the request.
    export_delay_s: float = 30.0
    export_items_per_chunk: int = 100_000  # the largest chunk made, whatever the request asks


ABSENT = "__absent__"  # an override value that removes the key from the order's JSON


def _overridden(out: dict, order: dict, lines_json: list[dict], lines: list[dict]) -> dict:
    """Apply a test's overrides (``order["json_override"]``, ``line["json_override"]``) to an order's JSON.

    For payloads Mirakl should never send (a ``"NaN"`` price, a numeric SKU, a date in the
    future, a missing key): the state stays sound, only what the API shows is changed.
    """
    for target, override in [(out, order.get("json_override"))] + [
        (line_json, line.get("json_override")) for line_json, line in zip(lines_json, lines)
    ]:
        _merge(target, override or {})
    return out


def _merge(target: dict, override: dict) -> None:
    for key, value in override.items():
        if value == ABSENT:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = dict(target[key])
            _merge(target[key], value)
        else:
            target[key] = value


def _encode_token(**fields: Any) -> str:
    text = "&".join(f"{k}={v}" for k, v in fields.items())
    return base64.urlsafe_b64encode(text.encode()).decode()


def _decode_token(token: str) -> dict[str, str]:
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        return dict(part.split("=", 1) for part in text.split("&"))
    except Exception as error:
        raise ApiError(400, f"Invalid page_token: {token!r}") from error


class MiraklStore:
    """One Mirakl shop: its offers, orders, imports and finances."""

    def __init__(self, seed: int = 42, settings: MiraklSettings | None = None):
        self.settings = settings or MiraklSettings()
        self.random = random.Random(seed)
        self.offers: dict[str, dict] = {}
        self._offer_order: list[str] = []  # by offer id, for OF51
        self._sorted: dict[str, list[str]] = {}  # OF21 sort key -> SKUs, rebuilt lazily
        self.orders: dict[str, dict] = {}
        self.imports: dict[str, dict] = {}
        self.products: dict[str, dict] = {}  # the operator catalogue, by "<reference type>|<reference>"
        self.product_imports: dict[str, dict] = {}  # P41 ids are integers of their own series
        self.transactions: list[dict] = []
        self.invoices: list[dict] = []
        self.counters = {"offer": 2000, "order": 0, "refund": 1000, "transaction": 0, "offer_import": 3000,
                         "invoice": 0, "product_import": 5000}
        self.cycle_id = self._uuid()
        self.cycle_started: str | None = None
        self.exports: dict[str, dict] = {}  # TL03 / OF52 asynchronous exports by tracking id

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128), version=4))

    def _next(self, name: str) -> int:
        self.counters[name] += 1
        return self.counters[name]

    # Offers ----------------------------------------------------------------------------------
    def add_offer(self, now: datetime, shop_sku: str, price: float, quantity: int, product_id: str | None = None,
                  product_id_type: str = "SHOP_SKU", **fields: Any) -> dict:
        """Create or replace an offer; fields not given take their defaults (as OF24 does)."""
        if not shop_sku:
            raise ApiError(400, "shop_sku is required")
        if price is None or float(price) < 0:
            raise ApiError(400, f"Invalid price for offer {shop_sku!r}")
        if int(quantity) < 0:
            raise ApiError(400, f"Invalid quantity for offer {shop_sku!r}")
        existing = self.offers.get(shop_sku)
        stamp = iso(now)
        offer = {
            "shop_sku": shop_sku,
            "offer_id": existing["offer_id"] if existing else self._next("offer"),
            "product_id": product_id or shop_sku,
            "product_id_type": product_id_type,
            "product_sku": fields.get("product_sku") or (existing or {}).get("product_sku")
            or f"MKP{zlib.crc32((product_id or shop_sku).encode()):012d}",
            "product_title": fields.get("product_title") or f"Product {product_id or shop_sku}",
            "category_code": fields.get("category_code", "SANDBOX"),
            "category_label": fields.get("category_label", "Sandbox category"),
            "price": money(price),
            "quantity": int(quantity),
            "state_code": str(fields.get("state_code", "11")),
            "description": fields.get("description") or "",
            "internal_description": fields.get("internal_description") or "",
            "leadtime_to_ship": int(fields.get("leadtime_to_ship") or self.settings.leadtime_to_ship),
            "min_order_quantity": int(fields.get("min_order_quantity") or 1),
            "max_order_quantity": int(fields.get("max_order_quantity") or 0),
            "min_quantity_alert": int(fields.get("min_quantity_alert") or 0),
            "package_quantity": int(fields.get("package_quantity") or 1),
            "logistic_class": fields.get("logistic_class") or "STANDARD",
            "price_additional_info": fields.get("price_additional_info") or "",
            "discount_price": fields.get("discount_price"),
            "discount_start_date": fields.get("discount_start_date"),
            "discount_end_date": fields.get("discount_end_date"),
            "deleted": False,
            "date_created": existing["date_created"] if existing else stamp,
            "last_updated": stamp,
        }
        self.offers[shop_sku] = offer
        self.register_product(offer["product_id_type"], offer["product_id"], offer["product_sku"],
                              offer["product_title"])
        if not existing:
            self._offer_order.append(shop_sku)
        self._sorted.clear()
        return offer

    def delete_offer(self, now: datetime, shop_sku: str) -> None:
        offer = self.offers.get(shop_sku)
        if offer is None or offer["deleted"]:
            raise ApiError(400, f"The offer with SKU {shop_sku!r} does not exist")
        offer.update(deleted=True, quantity=0, last_updated=iso(now))
        self._sorted.clear()

    def live_offer(self, shop_sku: str) -> dict | None:
        offer = self.offers.get(shop_sku)
        return offer if offer and not offer["deleted"] else None

    def effective_price(self, offer: dict, at: str | None = None) -> float:
        discount = offer.get("discount_price")
        if discount is not None:
            start, end = offer.get("discount_start_date"), offer.get("discount_end_date")
            if (not start or not at or start <= at) and (not end or not at or at < end):
                return money(discount)
        return offer["price"]

    def _sorted_skus(self, sort: str) -> list[str]:
        """Live SKUs in an OF21 sort order; the index is rebuilt only after a change."""
        if sort not in self._sorted:
            live = [s for s in self._offer_order if not self.offers[s]["deleted"]]
            keys = {
                "totalPrice": lambda s: (self.offers[s]["price"], self.offers[s]["offer_id"]),
                "price": lambda s: (self.offers[s]["price"], self.offers[s]["offer_id"]),
                "productTitle": lambda s: (self.offers[s]["product_title"], self.offers[s]["price"],
                                           self.offers[s]["offer_id"]),
            }
            if sort not in keys:
                raise ApiError(400, f"Invalid sort field {sort!r}: use totalPrice, price or productTitle")
            live.sort(key=keys[sort])
            self._sorted[sort] = live
        return self._sorted[sort]

    def offers_page(self, offset: int, limit: int | None, sort: str = "totalPrice", descending: bool = False,
                    sku: str | None = None, product_id: str | None = None,
                    state_codes: list[str] | None = None) -> tuple[list[dict], int]:
        if sku:
            offer = self.live_offer(sku)
            matches = [offer] if offer and (not state_codes or offer["state_code"] in state_codes) \
                and (not product_id or offer["product_sku"] == product_id) else []
            return matches[offset:offset + limit] if limit is not None else matches[offset:], len(matches)
        if product_id or state_codes:
            matches = [
                self.offers[s] for s in self._sorted_skus(sort)
                if (not product_id or self.offers[s]["product_sku"] == product_id)
                and (not state_codes or self.offers[s]["state_code"] in state_codes)
            ]
            if descending:
                matches.reverse()
            return (matches[offset:offset + limit] if limit is not None else matches[offset:]), len(matches)
        skus = self._sorted_skus(sort)
        total = len(skus)
        if descending:
            end = total - offset
            start = max(0, end - limit) if limit is not None else 0
            chosen = list(reversed(skus[start:max(end, 0)]))
        else:
            chosen = skus[offset:offset + limit] if limit is not None else skus[offset:]
        return [self.offers[s] for s in chosen], total

    def offer_json(self, offer: dict) -> dict:
        """An offer as OF21 shows it."""
        price = offer["price"]
        discount = None
        if offer.get("discount_price") is not None:
            discount = _drop_none({"discount_price": offer["discount_price"], "end_date": offer.get("discount_end_date"),
                                   "origin_price": price, "start_date": offer.get("discount_start_date"),
                                   "ranges": [{"price": offer["discount_price"], "quantity_threshold": 1}]}, keep=set())
        unit_discount = offer["discount_price"] if offer.get("discount_price") is not None else price
        pricing = {"channel_code": None, "price": unit_discount, "unit_discount_price": unit_discount,
                   "unit_origin_price": price,
                   "volume_prices": [{"price": unit_discount, "quantity_threshold": 1,
                                      "unit_discount_price": unit_discount, "unit_origin_price": price}]}
        inactivity = [] if offer["quantity"] > 0 else ["ZERO_QUANTITY"]
        out = {
            "active": offer["quantity"] > 0 and not offer["deleted"],
            "all_prices": [pricing],
            "allow_quote_requests": False,
            "applicable_pricing": dict(pricing),
            "category_code": offer["category_code"],
            "category_label": offer["category_label"],
            "channels": [],
            "currency_iso_code": self.settings.currency,
            "description": offer["description"],
            "eco_contributions": [],
            "fulfillment": {"center": {"code": "DEFAULT"}},
            "inactivity_reasons": inactivity,
            "internal_description": offer["internal_description"],
            "leadtime_to_ship": offer["leadtime_to_ship"],
            "logistic_class": {"code": offer["logistic_class"], "label": offer["logistic_class"].title()},
            "max_order_quantity": offer["max_order_quantity"],
            "min_order_quantity": offer["min_order_quantity"],
            "min_quantity_alert": offer["min_quantity_alert"],
            "min_shipping_price": 0.0,
            "min_shipping_price_additional": 0.0,
            "min_shipping_type": "STD",
            "min_shipping_zone": "DOM1",
            "offer_additional_fields": [],
            "offer_id": offer["offer_id"],
            "package_quantity": offer["package_quantity"],
            "price": price,
            "price_additional_info": offer["price_additional_info"],
            "product_brand": "Sandbox",
            "product_description": offer["product_title"],
            "product_references": [{"reference": offer["product_id"], "reference_type": offer["product_id_type"]}],
            "product_sku": offer["product_sku"],
            "product_title": offer["product_title"],
            "quantity": offer["quantity"],
            "shipping_deadline": offer["last_updated"],
            "shop_sku": offer["shop_sku"],
            "state_code": offer["state_code"],
            "total_price": unit_discount,
            "warehouses": [],
        }
        if discount:
            out["discount"] = discount
        return out

    def export_csv(self, last_request_date: str | None, include_inactive: bool) -> str:
        """OF51: all active offers, or every offer changed since ``last_request_date``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=";", lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for sku in self._offer_order:
            offer = self.offers[sku]
            if last_request_date:
                if offer["last_updated"] < last_request_date:
                    continue
            elif offer["deleted"] or (offer["quantity"] <= 0 and not include_inactive):
                continue
            row = self._export_row(offer)
            if offer["deleted"]:
                row = {k: (v if k in DELETED_EXPORT_COLUMNS else "") for k, v in row.items()}
            writer.writerow([row[c] for c in EXPORT_COLUMNS])
        return buffer.getvalue()

    def _export_row(self, offer: dict) -> dict[str, Any]:
        price = f"{offer['price']:.2f}"
        discount = offer.get("discount_price")
        return {
            "offer-id": offer["offer_id"], "product-sku": offer["product_sku"], "min-shipping-price": "0.00",
            "min-shipping-price-additional": "0.00", "min-shipping-zone": "DOM1", "min-shipping-type": "STD",
            "price": price, "total-price": f"{self.effective_price(offer):.2f}",
            "price-additional-info": offer["price_additional_info"], "quantity": offer["quantity"],
            "description": offer["description"], "state-code": offer["state_code"],
            "shop-id": self.settings.shop_id, "shop-name": self.settings.shop_name, "professional": "true",
            "premium": "false", "logistic-class": offer["logistic_class"],
            "active": str(offer["quantity"] > 0 and not offer["deleted"]).lower(), "favorite-rank": "",
            "channels": "", "deleted": str(offer["deleted"]).lower(), "origin-price": price,
            "discount-start-date": offer.get("discount_start_date") or "",
            "discount-end-date": offer.get("discount_end_date") or "", "available-start-date": "",
            "available-end-date": "", "discount-price": f"{discount:.2f}" if discount is not None else "",
            "currency-iso-code": self.settings.currency, "discount-ranges": "",
            "leadtime-to-ship": offer["leadtime_to_ship"], "allow-quote-requests": "false",
            "price-ranges": f"1|{price}", "fulfillment-center-code": "DEFAULT", "shop-sku": offer["shop_sku"],
            "date-created": offer["date_created"], "last-updated": offer["last_updated"], "model": "MARKETPLACE",
            "min-order-quantity": offer["min_order_quantity"], "max-order-quantity": offer["max_order_quantity"] or "",
            "package-quantity": offer["package_quantity"],
        }

    # Operator catalogue ----------------------------------------------------------------------
    def register_product(self, reference_type: str, reference: str, product_sku: str | None = None,
                         title: str | None = None, category: str = "SANDBOX") -> dict:
        """Make a product known to the operator under one reference (and its Mirakl product SKU)."""
        key = f"{reference_type}|{reference}"
        product = self.products.get(key)
        if product is None:
            product = {"reference_type": reference_type, "reference": reference,
                       "product_sku": product_sku or f"MKP{zlib.crc32(reference.encode()):012d}",
                       "title": title or f"Product {reference}", "category": category}
            self.products[key] = product
        return product

    def known_product(self, reference_type: str, reference: str) -> dict | None:
        if reference_type == "SKU":
            return next((p for p in self.products.values() if p["product_sku"] == reference), None)
        return self.products.get(f"{reference_type}|{reference}")

    # OF24, OF02, OF03 ---------------------------------------------------------------------------
    def import_offers_json(self, now: datetime, offers: list[dict]) -> int:
        """OF24: create, update (every field not sent is reset) or delete offers.

        A malformed request is refused (400); a line the operator cannot take is left out and
        reported by OF02/OF03, and the other lines are applied.
        """
        if not isinstance(offers, list) or not offers:
            raise ApiError(400, "offers must be a non-empty list")
        for index, item in enumerate(offers):
            if not isinstance(item, dict):
                raise ApiError(400, f"offers[{index}] must be an object")
            for field_name in ("shop_sku", "product_id", "product_id_type", "state_code", "price"):
                if item.get(field_name) in (None, ""):
                    raise ApiError(400, f"offers[{index}].{field_name} is required")
            if "update_delete" not in item:
                raise ApiError(400, f"offers[{index}].update_delete is required")
        record = {"import_id": str(self._next("offer_import")), "kind": "offer", "date_created": iso(now),
                  "status": "COMPLETE", "polls": 0, "lines_read": len(offers), "errors": [],
                  "lines": [dict(item) for item in offers],
                  "offer_inserted": 0, "offer_updated": 0, "offer_deleted": 0}
        for number, item in enumerate(offers, start=1):
            reason = self._offer_line_error(item)
            if reason:
                record["errors"].append((number, reason, item))
                continue
            if (item.get("update_delete") or "update") == "delete":
                if self.live_offer(item["shop_sku"]):
                    self.delete_offer(now, item["shop_sku"])
                    record["offer_deleted"] += 1
                continue
            record["offer_updated" if self.live_offer(item["shop_sku"]) else "offer_inserted"] += 1
            product = self.known_product(item["product_id_type"], str(item["product_id"]))
            discount = item.get("discount") or {}
            extra = {k: item[k] for k in ("description", "internal_description", "leadtime_to_ship",
                                          "min_order_quantity", "max_order_quantity", "min_quantity_alert",
                                          "package_quantity", "logistic_class", "price_additional_info",
                                          "state_code") if k in item}
            if product:
                extra.update(product_sku=product["product_sku"], product_title=product["title"])
            self.add_offer(now, item["shop_sku"], item["price"], int(item.get("quantity") or 0),
                           product_id=str(item["product_id"]), product_id_type=item["product_id_type"],
                           discount_price=discount.get("price"), discount_start_date=discount.get("start_date"),
                           discount_end_date=discount.get("end_date"), **extra)
        record["lines_in_error"] = len(record["errors"])
        record["lines_in_success"] = len(offers) - len(record["errors"])
        self.imports[record["import_id"]] = record
        return int(record["import_id"])

    def _offer_line_error(self, item: dict) -> str | None:
        """Why the operator refuses one OF24 line, or None."""
        action = item.get("update_delete") or "update"
        if action not in ("update", "delete"):
            return f"The update-delete value '{action}' is invalid: leave it empty, or use update or delete"
        if action == "delete":
            return None
        try:
            price = Decimal(str(item["price"]))
            quantity = int(item.get("quantity") or 0)
            leadtime = int(item["leadtime_to_ship"]) if item.get("leadtime_to_ship") is not None else 0
        except (ArithmeticError, TypeError, ValueError):
            return "The price, quantity or leadtime-to-ship is not a number"
        if price <= 0:
            return "The price must be greater than 0"
        if quantity < 0 or leadtime < 0:
            return "The quantity and the leadtime-to-ship must be 0 or more"
        if str(item["state_code"]) not in OFFER_STATE_CODES:
            return f"The state of the product is unknown: '{item['state_code']}'"
        if item.get("logistic_class") and item["logistic_class"] not in LOGISTIC_CLASSES:
            return f"The logistic class '{item['logistic_class']}' is unknown"
        id_type, reference = str(item["product_id_type"]), str(item["product_id"])
        if id_type not in PRODUCT_ID_TYPES:
            return f"The product id type '{id_type}' is unknown"
        product = self.known_product(id_type, reference)
        if product is None and self.settings.unknown_products == "reject":
            return "The product does not exist"
        existing = self.live_offer(item["shop_sku"])
        if existing and product and existing["product_sku"] != product["product_sku"]:
            return "The product linked to the new offer is different from the product linked to the existing offer"
        return None

    def offer_import_status_json(self, record: dict) -> dict:
        """OF02: an offer import's progress and counts."""
        return {
            "date_created": record["date_created"], "has_error_report": bool(record["errors"]),
            "import_id": int(record["import_id"]), "lines_in_error": record["lines_in_error"],
            "lines_in_pending": 0, "lines_in_success": record["lines_in_success"],
            "lines_read": record["lines_read"], "mode": "NORMAL", "offer_deleted": record["offer_deleted"],
            "offer_inserted": record["offer_inserted"], "offer_updated": record["offer_updated"],
            "reason_status": "", "status": record["status"], "type": "MIRAKL",
        }

    def offer_error_report_csv(self, record: dict) -> str:
        """OF03: each refused line with its offer columns, then ``error-line`` and ``error-message``."""
        if not record["errors"]:
            raise ApiError(404, f"No error report for import {record['import_id']}")
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=";", lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow([column for column, _ in OFFER_REPORT_COLUMNS] + ["error-line", "error-message"])
        for number, reason, item in record["errors"]:
            writer.writerow(["" if item.get(key) is None else item.get(key) for _, key in OFFER_REPORT_COLUMNS]
                            + [number, reason])
        return buffer.getvalue()

    # P41, P42, P44, P45 ---------------------------------------------------------------------------
    def create_product_import(self, now: datetime, content: bytes | None) -> dict:
        """P41: a product file (CSV, ``;``-separated, the operator's attribute codes as header)."""
        if content is None:
            raise ApiError(400, "A multipart/form-data part named 'file' with the product file is required")
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ApiError(400, "The file must be UTF-8 encoded CSV") from error
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=";") if any(cell.strip() for cell in r)]
        if len(rows) < 2:
            raise ApiError(400, "The product file needs a header line and at least one product")
        header = [h.strip() for h in rows[0]]
        record = {"import_id": str(self._next("product_import")), "kind": "product", "date_created": iso(now),
                  "status": "WAITING", "polls": 0, "header": header, "raw_rows": rows[1:], "errors": [],
                  "added": []}
        self.product_imports[record["import_id"]] = record
        return record

    def get_product_import(self, import_id: str) -> dict:
        record = self.product_imports.get(import_id)
        if record is None:
            raise ApiError(404, f"Product import {import_id} not found")
        return record

    def poll_product_import(self, now: datetime, import_id: str) -> dict:
        """P42: asking for the status is what moves the import along (or the delay passing)."""
        record = self.get_product_import(import_id)
        record["polls"] += 1
        if record["status"] == "WAITING":
            record["status"] = "RUNNING"
        if record["polls"] >= self.settings.import_complete_after_polls:
            self._integrate_products(record)
        return record

    def _integrate_products(self, record: dict) -> None:
        if record["status"] in ("COMPLETE", "FAILED"):
            return
        required = [a.strip() for a in self.settings.product_required_attributes.split(",") if a.strip()]
        for raw in record["raw_rows"]:
            row = dict(zip(record["header"], (cell.strip() for cell in raw)))
            reason = self._product_row_error(row, required)
            if reason:
                record["errors"].append((raw, reason))
                continue
            ean = row.get(self.settings.product_ean_attribute, "")
            product = self.register_product("EAN", ean, title=row.get("title"), category=row.get("category") or "")
            sku = row.get(self.settings.product_sku_attribute, "")
            if sku:
                self.products[f"SHOP_SKU|{sku}"] = product
            record["added"].append((raw, product["product_sku"]))
        record["status"] = "COMPLETE"

    def _product_row_error(self, row: dict, required: list[str]) -> str | None:
        missing = [name for name in required if not row.get(name)]
        if missing:
            return f"Attribute '{missing[0]}' is required"
        ean = row.get(self.settings.product_ean_attribute, "")
        if ean and not valid_gtin(ean):
            return f"The EAN '{ean}' is invalid (wrong length or check digit)"
        return None

    def product_import_status_json(self, record: dict) -> dict:
        complete = record["status"] == "COMPLETE"
        read = len(record["raw_rows"])
        return {
            "date_created": record["date_created"], "has_error_report": complete and bool(record["errors"]),
            "has_new_product_report": complete and bool(record["added"]), "has_transformation_error_report": False,
            "has_transformed_file": False, "import_id": int(record["import_id"]), "import_status": record["status"],
            "shop_id": self.settings.shop_id, "transform_lines_in_error": 0, "transform_lines_in_success": read,
            "transform_lines_read": read, "transform_lines_with_warning": 0,
            "integration_details": {
                "invalid_products": len(record["errors"]), "products_not_accepted_in_time": 0,
                "products_not_synchronized_in_time": 0, "products_reimported": 0,
                "products_successfully_synchronized": len(record["added"]),
                "products_with_synchronization_issues": 0, "products_with_wrong_identifiers": 0,
                "rejected_products": len(record["errors"]),
            },
        }

    def product_report_csv(self, record: dict, which: str) -> str:
        """P44 (``errors``: the product lines not integrated and why) or P45 (``added``: with their product SKU)."""
        lines = record[which]
        if record["status"] != "COMPLETE" or not lines:
            raise ApiError(404, f"No {'error' if which == 'errors' else 'new product'} report for import "
                                f"{record['import_id']}")
        extra = "errors" if which == "errors" else "product-sku"
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=";", lineterminator="\n")
        writer.writerow([*record["header"], extra])
        for raw, value in lines:
            writer.writerow([*raw, value])
        return buffer.getvalue()

    # Stock and price imports -------------------------------------------------------------------
    def create_import(self, now: datetime, kind: str, content: bytes | None) -> dict:
        if content is None:
            raise ApiError(400, "A multipart/form-data part named 'file' with the CSV file is required")
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ApiError(400, "The file must be UTF-8 encoded CSV") from error
        rows = list(csv.reader(io.StringIO(text), delimiter=";"))
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        if not rows:
            raise ApiError(400, "The file is empty")
        header = [h.strip().lower() for h in rows[0]]
        if "offer-sku" not in header or ("quantity" if kind == "stock" else "price") not in header:
            expected = ";".join(STOCK_COLUMNS if kind == "stock" else PRICE_COLUMNS)
            raise ApiError(400, f"Invalid file header {';'.join(rows[0])!r}: expected columns like {expected}")
        record = {
            "import_id": self._uuid(), "kind": kind, "date_created": iso(now), "status": "WAITING",
            "polls": 0, "header": rows[0], "rows": [dict(zip(header, r)) for r in rows[1:]],
            "raw_rows": rows[1:], "errors": [], "lines_in_success": 0, "lines_in_error": 0, "offers_updated": 0,
        }
        self.imports[record["import_id"]] = record
        return record

    def get_import(self, kind: str, import_id: str) -> dict:
        record = self.imports.get(import_id)
        if record is None or record["kind"] != kind:
            raise ApiError(404, f"Import {import_id} not found")
        return record

    def poll_import(self, now: datetime, kind: str, import_id: str) -> dict:
        record = self.get_import(kind, import_id)
        record["polls"] += 1
        if record["status"] == "WAITING":
            record["status"] = "RUNNING"
        if record["polls"] >= self.settings.import_complete_after_polls:
            self._complete_import(now, record)
        return record

    def _complete_import(self, now: datetime, record: dict) -> None:
        if record["status"] in ("COMPLETE", "FAILED"):
            return
        apply = self._apply_stock_row if record["kind"] == "stock" else self._apply_price_row
        updated: set[str] = set()
        for number, (row, raw) in enumerate(zip(record["rows"], record["raw_rows"]), start=2):
            reason = apply(now, row)
            if reason:
                record["errors"].append((number, reason, raw))
            else:
                updated.add(row.get("offer-sku", "").strip())
        record["lines_in_error"] = len(record["errors"])
        record["lines_in_success"] = len(record["rows"]) - len(record["errors"])
        record["offers_updated"] = len(updated)
        record["status"] = "COMPLETE"
        if updated and record["kind"] == "price":
            self._sorted.clear()

    def _apply_stock_row(self, now: datetime, row: dict) -> str | None:
        sku = (row.get("offer-sku") or "").strip()
        offer = self.live_offer(sku)
        if offer is None:
            return f"The offer with SKU '{sku}' does not exist"
        if (row.get("update-delete") or "").strip().lower() == "delete":
            quantity = 0
        else:
            try:
                quantity = int((row.get("quantity") or "").strip())
            except ValueError:
                return f"Invalid quantity '{row.get('quantity')}'"
            if quantity < 0:
                return f"Invalid quantity '{quantity}': must be 0 or more"
        if offer["quantity"] != quantity:
            offer.update(quantity=quantity, last_updated=iso(now))
        return None

    def _apply_price_row(self, now: datetime, row: dict) -> str | None:
        sku = (row.get("offer-sku") or "").strip()
        offer = self.live_offer(sku)
        if offer is None:
            return f"The offer with SKU '{sku}' does not exist"
        try:
            price = money(Decimal((row.get("price") or "").strip()))
            discount_text = (row.get("discount-price") or "").strip()
            discount = money(Decimal(discount_text)) if discount_text else None
        except Exception:
            return f"Invalid price '{row.get('price')}' or discount price '{row.get('discount-price')}'"
        if price <= 0 or (discount is not None and not 0 < discount <= price):
            return "The price must be positive and the discount price between 0 and the price"
        offer.update(price=price, discount_price=discount,
                     discount_start_date=(row.get("discount-start-date") or "").strip() or None,
                     discount_end_date=(row.get("discount-end-date") or "").strip() or None,
                     last_updated=iso(now))
        return None

    def import_status_json(self, record: dict) -> dict:
        out = {
            "date_created": record["date_created"],
            "has_error_report": record["status"] == "COMPLETE" and record["lines_in_error"] > 0,
            "import_id": record["import_id"],
            "lines_in_error": record["lines_in_error"],
            "lines_in_success": record["lines_in_success"],
            "shop_id": self.settings.shop_id,
            "status": record["status"],
        }
        if record["kind"] == "price":
            out.update(offers_in_error=len({r[2][0] if r[2] else "" for r in record["errors"]}),
                       offers_updated=record["offers_updated"], origin="API",
                       reason_status="" if record["status"] != "FAILED" else "Import failed")
        return out

    def error_report_csv(self, record: dict) -> str:
        """STO03/PRI03: line number, reason, then the original columns, ready to fix and re-import."""
        if record["status"] != "COMPLETE" or not record["errors"]:
            raise ApiError(404, f"No error report for import {record['import_id']}")
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=";", lineterminator="\n")
        writer.writerow(["line-number", "error-message", *record["header"]])
        for number, reason, raw in record["errors"]:
            writer.writerow([number, reason, *raw])
        return buffer.getvalue()

    def price_imports(self, import_ids: list[str], status: str | None) -> list[dict]:
        """PRI02 rows, newest first."""
        found = [r for r in self.imports.values() if r["kind"] == "price"
                 and (not import_ids or r["import_id"] in import_ids) and (not status or r["status"] == status)]
        found.sort(key=lambda r: r["date_created"], reverse=True)
        return found

    # Orders ------------------------------------------------------------------------------------
    def place_order(self, now: datetime, lines: list[dict], customer: dict | None = None,
                    customer_message: str | None = None, acceptance_delay_s: float = 86400,
                    debit_delay_s: float = 600, shipping_price: float = 4.99, order_id: str | None = None) -> dict:
        """A customer orders offers: quantities are taken from the offers at once."""
        if not lines:
            raise ApiError(400, "An order needs at least one line")
        wanted: dict[str, int] = {}
        for line in lines:
            offer = self.live_offer(line.get("offer_sku", ""))
            if offer is None:
                raise ApiError(400, f"Unknown offer {line.get('offer_sku')!r}")
            quantity = int(line.get("quantity", 1))
            if quantity <= 0:
                raise ApiError(400, f"Invalid quantity {quantity} for {offer['shop_sku']!r}")
            wanted[offer["shop_sku"]] = wanted.get(offer["shop_sku"], 0) + quantity
        for sku, quantity in wanted.items():
            if self.offers[sku]["quantity"] < quantity:
                raise ApiError(400, f"Not enough quantity for {sku!r}: {self.offers[sku]['quantity']} < {quantity}")
        number = self._next("order")
        commercial_id = f"SBX{number:06d}"
        order_id = order_id or f"{commercial_id}-A"
        if order_id in self.orders:
            raise ApiError(400, f"Order {order_id} already exists")
        stamp = iso(now)
        shipping_parts = self._split(money(shipping_price), len(lines))
        order_lines = []
        for index, (line, ship) in enumerate(zip(lines, shipping_parts), start=1):
            offer = self.offers[line["offer_sku"]]
            quantity = int(line.get("quantity", 1))
            offer["quantity"] -= quantity
            offer["last_updated"] = stamp
            unit = money(line["price"]) if line.get("price") is not None else self.effective_price(offer, stamp)
            order_lines.append({
                "order_line_id": f"{order_id}-{index}", "order_line_index": index,
                "offer_sku": offer["shop_sku"], "offer_id": offer["offer_id"], "product_sku": offer["product_sku"],
                "product_shop_sku": offer["product_id"], "product_title": offer["product_title"],
                "category_code": offer["category_code"], "category_label": offer["category_label"],
                "quantity": quantity, "price_unit": unit, "shipping_price": ship,
                "commission_rate": self.settings.commission_rate, "state": "WAITING_ACCEPTANCE",
                "reason_code": None, "refunds": [], "created": stamp, "last_updated": stamp,
                "debited": None, "shipped": None, "received": None,
            })
        self.orders[order_id] = {
            "order_id": order_id, "commercial_id": commercial_id, "state": "WAITING_ACCEPTANCE",
            "reason_code": None, "created": stamp, "last_updated": stamp,
            "acceptance_deadline": iso(now + timedelta(seconds=acceptance_delay_s)),
            "debit_delay_s": debit_delay_s, "debit_due": None, "debited": None,
            "shipping_deadline": iso(now + timedelta(seconds=acceptance_delay_s,
                                                     days=self.settings.leadtime_to_ship)),
            "lines": order_lines, "customer": self._customer(customer), "message": customer_message,
            "tracking": None, "shipped": None, "received": None, "closed": None, "cycle_id": None,
        }
        return self.orders[order_id]

    @staticmethod
    def _split(amount: float, parts: int) -> list[float]:
        share = money(amount / parts)
        out = [share] * parts
        out[-1] = money(amount - share * (parts - 1))
        return out

    def _customer(self, given: dict | None) -> dict:
        given = dict(given or {})
        number = self.random.randint(10000, 99999)
        first = given.get("firstname") or "Zoé"
        last = given.get("lastname") or "Lefèvre"
        default_address = {"firstname": first, "lastname": last, "street_1": "12 rue de l'Église",
                           "street_2": "", "city": "Saint-Étienne", "zip_code": "42000", "country": "France",
                           "country_iso_code": "FRA", "state": "", "company": "",
                           "phone": given.get("phone") or "+33 6 12 34 56 78"}
        billing = {**default_address, **(given.get("billing_address") or {})}
        shipping = {**billing, **(given.get("shipping_address") or {})}
        return {
            "customer_id": given.get("customer_id") or f"CUST-{number}",
            "firstname": first, "lastname": last, "civility": given.get("civility") or "Mme",
            "locale": given.get("locale") or "fr_FR",
            "email": given.get("email") or f"customer-{number}@example.com",
            "billing_address": billing, "shipping_address": shipping,
        }

    def get_order(self, order_id: str) -> dict:
        order = self.orders.get(order_id)
        if order is None:
            raise ApiError(404, f"The order {order_id} does not exist", "ORDER_NOT_FOUND")
        return order

    def _touch(self, order: dict, stamp: str) -> None:
        order["last_updated"] = stamp

    def _release(self, order: dict, lines: Iterable[dict], stamp: str) -> None:
        """Give a refused or cancelled line's quantity back to its offer."""
        for line in lines:
            offer = self.offers.get(line["offer_sku"])
            if offer and not offer["deleted"]:
                offer["quantity"] += line["quantity"]
                offer["last_updated"] = stamp

    def accept(self, now: datetime, order_id: str, decisions: list[dict]) -> None:
        """OR21: every line accepted or refused; refusing every line refuses the order."""
        order = self.get_order(order_id)
        if order["state"] != "WAITING_ACCEPTANCE":
            raise ApiError(400, f"Order {order_id} is {order['state']}, not WAITING_ACCEPTANCE",
                           "ORDER_INVALID_STATE")
        if not isinstance(decisions, list):
            raise ApiError(400, "order_lines must be a list", "VALIDATION_ERROR")
        lines = {line["order_line_id"]: line for line in self._lines(order)}
        decided: dict[str, bool] = {}
        for item in decisions:
            if item is None:
                raise ApiError(400, "The order lines list contains a null element", "ORDER_LINE_NULL_ELEMENT")
            line_id, accepted = str(item.get("id")), item.get("accepted")
            if line_id not in lines:
                raise ApiError(400, f"Order line {line_id} does not belong to order {order_id}",
                               "ORDER_LINE_NOT_FOUND")
            if line_id in decided:
                raise ApiError(400, f"Order line {line_id} is listed twice", "ORDER_LINE_DUPLICATE_ID")
            if not isinstance(accepted, bool):
                raise ApiError(400, f"Order line {line_id}: 'accepted' must be true or false", "VALIDATION_ERROR")
            decided[line_id] = accepted
        missing = sorted(set(lines) - set(decided))
        if missing:
            raise ApiError(400, f"No acceptance decision for order lines {', '.join(missing)}",
                           "ORDER_LINE_ACCEPTANCE_DECISION_MISSING")
        if self.settings.partial_acceptance_disabled and len(set(decided.values())) > 1:
            raise ApiError(400, "Partial acceptance is disabled for this shop", "ORDER_PARTIAL_ACCEPTANCE_DISABLED")
        stamp = iso(now)
        refused = [lines[i] for i, ok in decided.items() if not ok]
        for line_id, ok in decided.items():
            lines[line_id].update(state="WAITING_DEBIT_PAYMENT" if ok else "REFUSED", last_updated=stamp)
        self._release(order, refused, stamp)
        if len(refused) == len(lines):
            order.update(state="REFUSED")
        else:
            order.update(state="WAITING_DEBIT_PAYMENT",
                         debit_due=iso(now + timedelta(seconds=order["debit_delay_s"])))
        self._touch(order, stamp)

    @staticmethod
    def _lines(order: dict) -> list[dict]:
        return order.setdefault("lines", [])

    def debit(self, now: datetime, order_id: str) -> None:
        """The operator debits the customer: the order moves to SHIPPING and the address appears."""
        order = self.get_order(order_id)
        if order["state"] != "WAITING_DEBIT_PAYMENT":
            raise ApiError(400, f"Order {order_id} is {order['state']}, not WAITING_DEBIT_PAYMENT",
                           "ORDER_INVALID_STATE")
        stamp = iso(now)
        order.update(state="SHIPPING", debited=stamp, debit_due=None)
        for line in self._lines(order):
            if line["state"] == "WAITING_DEBIT_PAYMENT":
                line.update(state="SHIPPING", debited=stamp, last_updated=stamp)
                self._record_sale(order, line, stamp)
        self._touch(order, stamp)

    def set_tracking(self, now: datetime, order_id: str, body: dict) -> None:
        """OR23: a known carrier code, or a carrier name with a tracking URL."""
        order = self.get_order(order_id)
        if order["state"] not in ("SHIPPING", "SHIPPED", "TO_COLLECT"):
            raise ApiError(400, f"Order {order_id} is {order['state']}: tracking can only be set once it is "
                                "SHIPPING", "ORDER_INVALID_STATE")
        code, name, url = body.get("carrier_code"), body.get("carrier_name"), body.get("carrier_url")
        number = body.get("tracking_number")
        if code:
            carrier = CARRIERS_BY_CODE.get(code)
            if carrier is None:
                raise ApiError(400, f"Unknown carrier code {code!r}: see SH21 for the list", "CARRIER_NOT_FOUND")
            tracking = {"carrier_code": code, "carrier_standard_code": carrier["standard_code"],
                        "company": carrier["label"], "number": number,
                        "url": carrier["tracking_url"].replace("{trackingId}", number or "") if number else None}
        elif name:
            if number and not url:
                raise ApiError(400, "carrier_url is required with carrier_name when a tracking number is given")
            tracking = {"carrier_code": None, "carrier_standard_code": None, "company": name,
                        "number": number, "url": url}
        else:
            raise ApiError(400, "Either carrier_code or carrier_name is required")
        order["tracking"] = tracking
        self._touch(order, iso(now))

    def ship(self, now: datetime, order_id: str) -> None:
        """OR24: only from SHIPPING."""
        order = self.get_order(order_id)
        if order["state"] != "SHIPPING":
            raise ApiError(400, f"Order {order_id} is {order['state']}, not SHIPPING", "ORDER_INVALID_STATE")
        stamp = iso(now)
        order.update(state="SHIPPED", shipped=stamp)
        for line in self._lines(order):
            if line["state"] == "SHIPPING":
                line.update(state="SHIPPED", shipped=stamp, last_updated=stamp)
        self._touch(order, stamp)

    def receive(self, now: datetime, order_id: str) -> None:
        order = self.get_order(order_id)
        if order["state"] != "SHIPPED":
            raise ApiError(400, f"Order {order_id} is {order['state']}, not SHIPPED", "ORDER_INVALID_STATE")
        stamp = iso(now)
        order.update(state="RECEIVED", received=stamp)
        for line in self._lines(order):
            if line["state"] == "SHIPPED":
                line.update(state="RECEIVED", received=stamp, last_updated=stamp)
        self._touch(order, stamp)

    def close(self, now: datetime, order_id: str) -> None:
        order = self.get_order(order_id)
        if order["state"] not in ("SHIPPED", "RECEIVED"):
            raise ApiError(400, f"Order {order_id} is {order['state']}, not SHIPPED or RECEIVED",
                           "ORDER_INVALID_STATE")
        stamp = iso(now)
        order.update(state="CLOSED", closed=stamp)
        for line in self._lines(order):
            if line["state"] in ("SHIPPED", "RECEIVED"):
                line.update(state="CLOSED", last_updated=stamp)
        self._touch(order, stamp)

    def can_cancel(self, order: dict) -> bool:
        # Mirakl lets the shop cancel a debited order it has not shipped yet.
        return order["state"] == "SHIPPING" and not any(line["refunds"] for line in self._lines(order))

    def cancel(self, now: datetime, order_id: str) -> None:
        """OR29: a full cancel, only when ``can_cancel``."""
        order = self.get_order(order_id)
        if not self.can_cancel(order):
            raise ApiError(400, f"Order {order_id} cannot be canceled in state {order['state']}",
                           "ORDER_INVALID_STATE")
        stamp = iso(now)
        live = [line for line in self._lines(order) if line["state"] == "SHIPPING"]
        for line in live:
            line.update(state="CANCELED", last_updated=stamp)
            self._record_cancel(order, line, stamp)
        self._release(order, live, stamp)
        order.update(state="CANCELED", reason_code="SHOP_CANCELED")
        self._touch(order, stamp)

    # Refunds -------------------------------------------------------------------------------------
    def refundable(self, line: dict) -> tuple[float, float, int]:
        """What is left to refund on a line: amount, shipping amount, quantity."""
        amount = money(line["price_unit"] * line["quantity"] - sum(r["amount"] for r in line["refunds"]))
        shipping = money(line["shipping_price"] - sum(r["shipping_amount"] for r in line["refunds"]))
        quantity = line["quantity"] - sum(r["quantity"] for r in line["refunds"])
        return amount, shipping, quantity

    def refund(self, now: datetime, refunds: list[dict]) -> list[dict]:
        """OR28: validated as a whole first, so a bad item changes nothing."""
        if not isinstance(refunds, list) or not refunds:
            raise ApiError(400, "refunds must be a non-empty list")
        index = {line["order_line_id"]: (order, line)
                 for order in self.orders.values() for line in self._lines(order)}
        pending: dict[str, list[float]] = {}
        plan = []
        for number, item in enumerate(refunds):
            line_id = str(item.get("order_line_id"))
            if line_id not in index:
                raise ApiError(404, f"refunds[{number}]: order line {line_id} does not exist", "ORDER_LINE_NOT_FOUND")
            order, line = index[line_id]
            if line["state"] not in REFUNDABLE_STATES:
                raise ApiError(400, f"refunds[{number}]: order line {line_id} is {line['state']}; it cannot be "
                                    "refunded", "ORDER_LINE_INVALID_STATE")
            try:
                amount = money(item["amount"])
                shipping = money(item.get("shipping_amount") or 0)
                quantity = int(item.get("quantity") or 0)
            except (KeyError, TypeError, ValueError) as error:
                raise ApiError(400, f"refunds[{number}]: amount, shipping_amount and quantity must be numbers") \
                    from error
            if not item.get("reason_code"):
                raise ApiError(400, f"refunds[{number}]: reason_code is required")
            if amount < 0 or shipping < 0 or quantity < 0 or amount + shipping <= 0:
                raise ApiError(400, f"refunds[{number}]: amounts must be positive")
            left_amount, left_shipping, left_quantity = self.refundable(line)
            used = pending.setdefault(line_id, [0.0, 0.0, 0])
            if (amount + used[0] > left_amount + 1e-9 or shipping + used[1] > left_shipping + 1e-9
                    or quantity + used[2] > left_quantity):
                raise ApiError(400, f"refunds[{number}]: order line {line_id} has only {left_amount - used[0]:.2f} "
                                    f"(shipping {left_shipping - used[1]:.2f}, quantity {left_quantity - used[2]}) "
                                    "left to refund", "REFUND_AMOUNT_EXCEEDED")
            used[0] += amount
            used[1] += shipping
            used[2] += quantity
            plan.append((order, line, amount, shipping, quantity, str(item["reason_code"])))
        stamp = iso(now)
        group = self._uuid()
        out = []
        for order, line, amount, shipping, quantity, reason in plan:
            commission = money((amount + shipping) * line["commission_rate"])
            refund = {"id": str(self._next("refund")), "order_refund_id": group, "amount": amount,
                      "shipping_amount": shipping, "quantity": quantity, "reason_code": reason,
                      "commission_amount": commission,
                      "commission_vat": money(commission * self.settings.commission_vat_rate),
                      "created": stamp}
            line["refunds"].append(refund)
            line["last_updated"] = stamp
            self._touch(order, stamp)
            self._record_refund(order, line, refund, stamp)
            out.append({"amount": amount, "currency_iso_code": self.settings.currency, "order_line_id":
                        line["order_line_id"], "order_refund_id": group, "quantity": quantity,
                        "reason_code": reason, "refund_id": refund["id"], "shipping_amount": shipping,
                        "excluded_from_shipment": False, "fees": [], "eco_contributions": [], "taxes": [],
                        "shipping_taxes": []})
        return out

    # Order queries and rendering ------------------------------------------------------------------
    def query_orders(self, ids: list[str], states: list[str], start: str | None, end: str | None,
                     start_update: str | None, end_update: str | None) -> list[dict]:
        """OR11 filters, sorted by creation date then order id."""
        source = [self.orders[i] for i in ids if i in self.orders] if ids else self.orders.values()
        found = [
            o for o in source
            if (not states or o["state"] in states)
            and (not start or o["created"] >= start) and (not end or o["created"] <= end)
            and (not start_update or o["last_updated"] >= start_update)
            and (not end_update or o["last_updated"] <= end_update)
        ]
        found.sort(key=lambda o: (o["created"], o["order_id"]))
        return found

    def order_json(self, order: dict, single: bool = False) -> dict:
        """An order as OR11 shows it, or OR12 (``single``), which sends unset line dates as null."""
        keep = {"description", "order_line_state_reason_code", "order_line_state_reason_label",
                "price_additional_info"} | ({"debited_date", "received_date", "shipped_date"} if single else set())
        lines = [_drop_none(self._line_json(order, line), keep) for line in self._lines(order)]
        counted = [l_ for l_, raw in zip(lines, self._lines(order)) if raw["state"] not in ("REFUSED",)]
        price = money(sum(l_["price"] for l_ in counted))
        shipping = money(sum(l_["shipping_price"] for l_ in counted))
        commission = money(sum(l_["total_commission"] for l_ in counted))
        customer = order["customer"]
        has_address = order["debited"] is not None
        tracking = order.get("tracking") or {}
        refunded = [r for raw in self._lines(order) for r in raw["refunds"]]
        fully_refunded = bool(refunded) and all(self.refundable(raw)[:2] == (0.0, 0.0)
                                                for raw in self._lines(order) if raw["state"] != "REFUSED")
        out = {
            "acceptance_decision_date": order["acceptance_deadline"],
            "can_cancel": self.can_cancel(order),
            "can_shop_ship": order["state"] == "SHIPPING",
            "channel": None,
            "commercial_id": order["commercial_id"],
            "created_date": order["created"],
            "currency_iso_code": self.settings.currency,
            "customer": {
                "billing_address": self._address(customer["billing_address"], False) if has_address else None,
                "civility": customer["civility"],
                "customer_id": customer["customer_id"],
                "firstname": customer["firstname"],
                "lastname": customer["lastname"],
                "locale": customer["locale"],
                "shipping_address": self._address(customer["shipping_address"], True) if has_address else None,
            },
            "customer_debited_date": order["debited"],
            "customer_directly_pays_seller": False,
            "customer_notification_email": f"notification+{order['order_id'].lower()}@notification.mirakl.net",
            "delivery_date": None,
            "fulfillment": {"center": {"code": "DEFAULT"}},
            "fully_refunded": fully_refunded,
            "has_customer_message": bool(order.get("message")),
            "has_incident": False,
            "has_invoice": False,
            "last_updated_date": order["last_updated"],
            "leadtime_to_ship": self.settings.leadtime_to_ship,
            "order_additional_fields": [],
            "order_id": order["order_id"],
            "order_lines": lines,
            "order_state": order["state"],
            "order_state_reason_code": order.get("reason_code"),
            "order_state_reason_label": order.get("reason_code") and order["reason_code"].replace("_", " ").title(),
            "order_tax_mode": "TAX_INCLUDED",
            "order_taxes": [],
            "paymentType": "CREDIT_CARD",
            "payment_type": "CREDIT_CARD",
            "payment_workflow": "PAY_ON_ACCEPTANCE",
            "price": price,
            "promotions": {"applied_promotions": [], "total_deduced_amount": 0},
            "quote_id": None,
            "references": {"order_reference_for_customer": order["commercial_id"]},
            "shipping_carrier_code": tracking.get("carrier_code"),
            "shipping_carrier_standard_code": tracking.get("carrier_standard_code"),
            "shipping_company": tracking.get("company"),
            "shipping_deadline": order["shipping_deadline"],
            "shipping_price": shipping,
            "shipping_pudo_id": None,
            "shipping_tracking": tracking.get("number"),
            "shipping_tracking_url": tracking.get("url"),
            "shipping_type_code": "STD",
            "shipping_type_label": "Standard",
            "shipping_type_standard_code": "CU_ADD-STD",
            "shipping_zone_code": "DOM1",
            "shipping_zone_label": "Domestic 1",
            "total_commission": commission,
            "total_price": money(price + shipping),
            "transaction_date": order["debited"],
            "transaction_number": f"TR-{order['commercial_id']}" if order["debited"] else None,
        }
        out = _drop_none(out, keep={"order_state_reason_code", "order_state_reason_label", "quote_id",
                                    "billing_address", "shipping_address"})
        return _overridden(out, order, lines, self._lines(order))

    @staticmethod
    def _address(address: dict, shipping: bool) -> dict:
        keys = ["city", "civility", "company", "country", "country_iso_code", "firstname", "lastname", "phone",
                "state", "street_1", "street_2", "zip_code"]
        out = {k: address.get(k) for k in keys if address.get(k) not in (None, "")}
        out.setdefault("country_iso_code", "FRA")
        if shipping:
            out["additional_info"] = address.get("additional_info") or ""
        return out

    def _line_json(self, order: dict, line: dict) -> dict:
        price = money(line["price_unit"] * line["quantity"])
        fee = money((price + line["shipping_price"]) * line["commission_rate"])
        vat = money(fee * self.settings.commission_vat_rate)
        refunds = [{
            "amount": r["amount"], "commission_amount": r["commission_amount"],
            "commission_tax_amount": r["commission_vat"],
            "commission_taxes": [{"amount": r["commission_vat"], "code": "TAXDEFAULT",
                                  "rate": self.settings.commission_vat_rate * 100}],
            "commission_total_amount": money(r["commission_amount"] + r["commission_vat"]),
            "created_date": r["created"], "eco_contributions": [], "fees": [], "id": r["id"],
            "order_refund_id": r["order_refund_id"], "quantity": r["quantity"], "reason_code": r["reason_code"],
            "refund_state": "REFUNDED", "shipping_amount": r["shipping_amount"], "shipping_taxes": [],
            "state": "REFUNDED", "taxes": [], "transaction_date": r["created"],
            "transaction_number": f"RF-{r['id']}",
        } for r in line["refunds"]]
        left_amount, left_shipping, _ = self.refundable(line)
        return {
            "can_refund": line["state"] in REFUNDABLE_STATES and (left_amount > 0 or left_shipping > 0),
            "cancelations": [],
            "category_code": line["category_code"],
            "category_label": line["category_label"],
            "commission_fee": fee,
            "commission_rate_vat": self.settings.commission_vat_rate * 100,
            "commission_taxes": [{"amount": vat, "code": "TAXDEFAULT", "rate": self.settings.commission_vat_rate * 100}],
            "commission_vat": vat,
            "created_date": line["created"],
            "debited_date": line["debited"],
            "description": "",
            "eco_contributions": [],
            "fees": [],
            "last_updated_date": line["last_updated"],
            "offer_id": line["offer_id"],
            "offer_sku": line["offer_sku"],
            "offer_state_code": "11",
            "order_line_additional_fields": [],
            "order_line_id": line["order_line_id"],
            "order_line_index": line["order_line_index"],
            "order_line_state": line["state"],
            "order_line_state_reason_code": line.get("reason_code"),
            "order_line_state_reason_label": line.get("reason_code"),
            "origin_unit_price": line["price_unit"],
            "price": price,
            "price_additional_info": None,
            "price_unit": line["price_unit"],
            "product_medias": [],
            "product_shop_sku": line["product_shop_sku"],
            "product_sku": line["product_sku"],
            "product_title": line["product_title"],
            "promotions": [],
            "quantity": line["quantity"],
            "received_date": line["received"],
            "refunds": refunds,
            "shipped_date": line["shipped"],
            "shipping_from": {"address": {"city": "Lyon", "country_iso_code": "FRA", "street_1": "1 quai du Rhône",
                                          "zip_code": "69001"}, "warehouse": None},
            "shipping_price": line["shipping_price"],
            "shipping_price_additional_unit": 0.0,
            "shipping_price_unit": line["shipping_price"],
            "shipping_taxes": [],
            "taxes": [],
            "total_commission": money(fee + vat),
            "total_price": money(price + line["shipping_price"]),
        }

    def threads(self, entity_type: str | None, entity_ids: list[str], with_messages: bool,
                updated_since: str | None) -> list[dict]:
        """M11: the customer's order-level message is a thread on the order (entity MMP_ORDER)."""
        if entity_ids and not entity_type:
            raise ApiError(400, "entity_type is required with entity_id")
        if entity_type and entity_type != "MMP_ORDER":
            return []
        out = []
        for order in self.orders.values():
            if not order.get("message") or (entity_ids and order["order_id"] not in entity_ids):
                continue
            if updated_since and order["created"] < updated_since:
                continue
            customer = order["customer"]
            shop = {"display_name": self.settings.shop_name, "id": str(self.settings.shop_id), "type": "SHOP"}
            buyer = {"display_name": f"{customer['firstname']} {customer['lastname'][:1]}.",
                     "id": customer["customer_id"], "type": "CUSTOMER"}
            thread = {
                "authorized_participants": [shop, buyer], "current_participants": [shop, buyer],
                "date_created": order["created"], "date_updated": order["created"],
                "entities": [{"id": order["order_id"], "label": order["commercial_id"], "type": "MMP_ORDER"}],
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"thread/{order['order_id']}")),
                "metadata": {"last_message_date": order["created"],
                             "last_sender": {"display_name": buyer["display_name"],
                                             "organization_details": buyer, "type": "CUSTOMER_USER"},
                             "shop_reply_needed_since": order["created"], "total_count": 1},
                "topic": {"type": "FREE_TEXT", "value": "Message about my order"},
            }
            if with_messages:
                thread["messages"] = [{
                    "attachments": [], "body": order["message"], "date_created": order["created"],
                    "from": {"display_name": buyer["display_name"], "organization_details": buyer,
                             "type": "CUSTOMER_USER"},
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"message/{order['order_id']}")),
                    "to": [shop],
                }]
                thread["no_store_reply_needed"] = []
            out.append(thread)
        return out

    # Finance ---------------------------------------------------------------------------------------
    def _transaction(self, order: dict, line: dict | None, kind: str, amount: float, stamp: str) -> None:
        amount = money(amount)
        if amount == 0:
            return
        balance = money((self.transactions[-1]["balance"] if self.transactions else 0) + amount)
        entities: dict[str, Any] = {"domain": "PRODUCT", "order": {
            "commercial_id": order["commercial_id"], "creation_date": order["created"], "id": order["order_id"],
            "references": {"order_reference_for_customer": order["commercial_id"]}}}
        if line is not None:
            entities["order_line"] = {"id": line["order_line_id"]}
        self.transactions.append({
            "seq": self._next("transaction"), "amount": amount, "amount_credited": amount if amount > 0 else 0.0,
            "amount_debited": -amount if amount < 0 else 0.0, "balance": balance,
            "currency_iso_code": self.settings.currency, "date_created": stamp, "entities": entities,
            "id": self._uuid(), "last_updated": stamp, "pay_out_psp_code": "NOT_SPECIFIED",
            "payment_state": "PAYABLE", "psp_balance": balance, "seller_billing_cycle_id": self.cycle_id,
            "transaction_date": stamp, "type": kind,
        })
        if self.cycle_started is None:
            self.cycle_started = stamp

    def _line_amounts(self, line: dict) -> tuple[float, float, float, float]:
        price = money(line["price_unit"] * line["quantity"])
        fee = money((price + line["shipping_price"]) * line["commission_rate"])
        return price, line["shipping_price"], fee, money(fee * self.settings.commission_vat_rate)

    def _record_sale(self, order: dict, line: dict, stamp: str) -> None:
        price, shipping, fee, vat = self._line_amounts(line)
        self._transaction(order, line, "ORDER_AMOUNT", price, stamp)
        self._transaction(order, line, "ORDER_SHIPPING_AMOUNT", shipping, stamp)
        self._transaction(order, line, "COMMISSION_FEE", -fee, stamp)
        self._transaction(order, line, "COMMISSION_VAT", -vat, stamp)

    def _record_cancel(self, order: dict, line: dict, stamp: str) -> None:
        price, shipping, fee, vat = self._line_amounts(line)
        self._transaction(order, line, "REFUND_ORDER_AMOUNT", -price, stamp)
        self._transaction(order, line, "REFUND_ORDER_SHIPPING_AMOUNT", -shipping, stamp)
        self._transaction(order, line, "REFUND_COMMISSION_FEE", fee, stamp)
        self._transaction(order, line, "REFUND_COMMISSION_VAT", vat, stamp)

    def _record_refund(self, order: dict, line: dict, refund: dict, stamp: str) -> None:
        self._transaction(order, line, "REFUND_ORDER_AMOUNT", -refund["amount"], stamp)
        self._transaction(order, line, "REFUND_ORDER_SHIPPING_AMOUNT", -refund["shipping_amount"], stamp)
        self._transaction(order, line, "REFUND_COMMISSION_FEE", refund["commission_amount"], stamp)
        self._transaction(order, line, "REFUND_COMMISSION_VAT", refund["commission_vat"], stamp)

    def close_billing_cycle(self, now: datetime) -> dict:
        """Pay the cycle out: its lines become PAID under a new accounting document."""
        stamp = iso(now)
        cycle_lines = [t for t in self.transactions if t["seller_billing_cycle_id"] == self.cycle_id]
        number = self._next("invoice")
        document = f"{number:012d}"
        commission = money(-sum(t["amount"] for t in cycle_lines if t["type"] in ("COMMISSION_FEE",
                                                                                  "REFUND_COMMISSION_FEE")))
        vat = money(-sum(t["amount"] for t in cycle_lines if t["type"] in ("COMMISSION_VAT",
                                                                           "REFUND_COMMISSION_VAT")))
        payout = money(sum(t["amount"] for t in cycle_lines))
        invoice = {
            "currency_iso_code": self.settings.currency, "date_created": stamp,
            "details": [{"amount_excl_taxes": commission, "description": "Commissions of the billing cycle",
                         "quantity": 1, "taxes": [{"amount": vat, "code": "TAXDEFAULT"}]}],
            "due_date": stamp, "end_time": stamp, "id": self._uuid(), "invoice_id": number, "issue_date": stamp,
            "issuing_user": {"information": "Automatic action", "type": "BATCH"},
            "pay_out_psp_code": "NOT_SPECIFIED",
            "payment": {"reference": f"PAY-{document}", "state": "PAID", "transaction_date": stamp},
            "payment_voucher_number": document, "seller_billing_cycle_id": self.cycle_id,
            "shop_corporate_name": self.settings.shop_name, "shop_id": self.settings.shop_id,
            "shop_model": "MARKETPLACE", "shop_name": self.settings.shop_name,
            "shop_operator_internal_id": f"SHOP-{self.settings.shop_id}", "shop_tax_number": "FR00123456789",
            "start_time": self.cycle_started or stamp, "state": "COMPLETE",
            "total_amount_excl_taxes": commission, "total_amount_incl_taxes": money(commission + vat),
            "total_charged_amount": money(commission + vat),
            "total_taxes": [{"amount": vat, "code": "TAXDEFAULT"}], "type": "AUTO_INVOICE",
            "payout": payout,
        }
        for t in cycle_lines:
            t.update(payment_state="PAID", accounting_document_number=document,
                     accounting_document_creation_date=stamp, last_updated=stamp)
        if cycle_lines and payout != 0:
            balance = money(self.transactions[-1]["balance"] - payout)
            self.transactions.append({
                "seq": self._next("transaction"), "amount": money(-payout),
                "amount_credited": money(-payout) if payout < 0 else 0.0,
                "amount_debited": payout if payout > 0 else 0.0, "balance": balance,
                "currency_iso_code": self.settings.currency, "date_created": stamp, "entities": {},
                "id": self._uuid(), "last_updated": stamp, "pay_out_psp_code": "NOT_SPECIFIED",
                "payment_state": "PAID", "psp_balance": balance, "seller_billing_cycle_id": self.cycle_id,
                "accounting_document_number": document, "accounting_document_creation_date": stamp,
                "transaction_date": stamp, "type": "PAYMENT",
            })
        self.invoices.append(invoice)
        self.cycle_id = self._uuid()
        self.cycle_started = None
        return {k: v for k, v in invoice.items() if k != "payout"} | {"payout": payout}

    def transactions_page(self, filters: dict, limit: int, token: str | None, sort: str,
                          descending: bool) -> tuple[list[dict], str | None, str | None]:
        """TL02 seek pagination: a token names the last (sort key, seq) seen, so rows added or
        changed between pages are neither skipped nor repeated for the dateCreated order."""
        field_name = {"dateCreated": "date_created", "lastUpdated": "last_updated"}.get(sort)
        if field_name is None:
            raise ApiError(400, f"Invalid sort {sort!r}: use dateCreated or lastUpdated")
        rows = [t for t in self.transactions if _transaction_matches(t, filters)]
        rows.sort(key=lambda t: (t[field_name], t["seq"]), reverse=descending)
        start = 0
        if token:
            seek = _decode_token(token)
            key = (seek.get("k", ""), int(seek.get("s", "0")))
            start = next((i for i, t in enumerate(rows)
                          if ((t[field_name], t["seq"]) < key if descending else (t[field_name], t["seq"]) > key)),
                         len(rows))
        page = rows[start:start + limit]
        next_token = None
        if start + limit < len(rows) and page:
            last = page[-1]
            next_token = _encode_token(k=last[field_name], s=last["seq"])
        previous = _encode_token(k=rows[start - 1][field_name], s=rows[start - 1]["seq"]) if start > 0 else None
        return [{k: v for k, v in t.items() if k != "seq"} for t in page], next_token, previous

    def export_transactions(self, now: datetime, body: dict) -> dict:
        """TL03: the lines matching the filters *now* are the export; its chunks are ready later."""
        filters: dict[str, Any] = {name: list(body.get(name) or []) for name in (
            "seller_billing_cycle_id", "payment_state", "transaction_type", "order_id", "order_line_id")}
        filters["accounting_document_number"] = body.get("accounting_document_number")
        for name in ("date_created_from", "date_created_to", "transaction_date_from", "transaction_date_to",
                     "last_updated_from"):
            value = body.get(name)
            try:
                filters[name] = iso(parse_iso(value)) if value else None
            except ValueError as error:
                raise ApiError(400, f"Invalid {name} {value!r}: expected an ISO 8601 date-time") from error
        export_format = str(body.get("format") or "JSON").upper()
        if export_format not in ("JSON", "NDJSON"):
            raise ApiError(400, f"Invalid format {export_format!r}: JSON or NDJSON")
        # the requested chunk size, cut down to the largest the server makes (clients must follow every URL)
        cap = self.settings.export_items_per_chunk
        per_chunk = min(int(body.get("items_per_chunk") or cap), cap)
        if per_chunk <= 0:
            raise ApiError(400, f"Invalid items_per_chunk {per_chunk}")
        rows = sorted((t for t in self.transactions if _transaction_matches(t, filters)),
                      key=lambda t: (t["date_created"], t["seq"]))
        return self._new_export(now, "transactions", [dict(t) for t in rows], per_chunk, export_format)

    def export_offers_async(self, now: datetime, body: dict) -> dict:
        """OF52: every active offer (full), or every offer changed since ``last_request_date``
        (differential: deleted and inactive ones too), as JSON or CSV chunks."""
        export_type = body.get("export_type") or "text/csv"
        if export_type not in ("text/csv", "application/json"):
            raise ApiError(400, f"Invalid export_type {export_type!r}: text/csv or application/json")
        since = body.get("last_request_date")
        if since and body.get("include_inactive_offers") is not None:
            raise ApiError(400, "include_inactive_offers cannot be used with last_request_date")
        try:
            since = iso(parse_iso(since)) if since else None
        except ValueError as error:
            raise ApiError(400, f"Invalid last_request_date {since!r}") from error
        per_chunk = int(body.get("items_per_chunk") or 1_000_000)
        if not 10_000 <= per_chunk <= 1_000_000:
            raise ApiError(400, f"Invalid items_per_chunk {per_chunk}: between 10000 and 1000000")
        include_inactive = bool(body.get("include_inactive_offers"))
        rows = []
        for sku in self._offer_order:
            offer = self.offers[sku]
            if since:
                if offer["last_updated"] < since:
                    continue
            elif offer["deleted"] or (offer["quantity"] <= 0 and not include_inactive):
                continue
            rows.append(self._export_json(offer) if export_type == "application/json" else self._export_row(offer))
        per_chunk = min(per_chunk, self.settings.export_items_per_chunk)
        return self._new_export(now, "offers", rows, per_chunk, "JSON" if export_type == "application/json" else "CSV")

    def export_orders_async(self, now: datetime, body: dict) -> dict:
        """OR13: the orders matching the filters *now*, as OR11 shows them, in JSON chunks.

        As the spec says: at least one date range, each start with its end; one export at a
        time per shop (another request while one is pending is refused); and Mirakl takes a
        margin off ``start_update_date``, so an export repeats orders the previous one had.
        """
        pending = [r for r in self.exports.values() if r["kind"] == "orders" and iso(now) < r["ready_at"]]
        if pending:
            raise ApiError(400, f"An order export is already in progress ({pending[0]['tracking_id']})")
        dates: dict[str, str | None] = {}
        for name in ("start_date", "end_date", "start_update_date", "end_update_date"):
            value = body.get(name)
            try:
                dates[name] = iso(parse_iso(value)) if value else None
            except ValueError as error:
                raise ApiError(400, f"Invalid {name} {value!r}: expected an ISO 8601 date-time") from error
        for start, end in (("start_date", "end_date"), ("start_update_date", "end_update_date")):
            if bool(dates[start]) != bool(dates[end]):
                raise ApiError(400, f"{start} must be used with {end}")
        if not (dates["start_date"] or dates["start_update_date"]):
            raise ApiError(400, "At least one date range filter is required: created or last updated date")
        states = list(body.get("order_state_codes") or [])
        unknown = [s for s in states if s not in ORDER_STATES]
        if unknown:
            raise ApiError(400, f"Invalid order_state_codes {', '.join(unknown)}")
        per_chunk = int(body.get("items_per_chunk") or 1_000_000)
        if not 10_000 <= per_chunk <= 1_000_000:
            raise ApiError(400, f"Invalid items_per_chunk {per_chunk}: between 10000 and 1000000")
        start_update = dates["start_update_date"]
        if start_update:
            start_update = iso(parse_iso(start_update) - timedelta(seconds=ORDER_EXPORT_MARGIN_S))
        found = self.query_orders([], states, dates["start_date"], dates["end_date"], start_update,
                                  dates["end_update_date"])
        # the file's schema has no nullable field: what OR11 shows as null is left out
        rows = [_without_nulls(self.order_json(o)) for o in found]
        per_chunk = min(per_chunk, self.settings.export_items_per_chunk)
        return self._new_export(now, "orders", rows, per_chunk, "JSON")

    def _export_json(self, offer: dict) -> dict:
        """One offer of an OF54 JSON file (the fields of the spec's example)."""
        prices: dict[str, Any] = {"origin_price": offer["price"],
                                  "volume_prices": [{"quantity_threshold": 1, "unit_origin_price": offer["price"]}]}
        if offer.get("discount_price") is not None:
            prices["discount_price"] = offer["discount_price"]
            prices["volume_prices"][0]["unit_discount_price"] = offer["discount_price"]
        return {
            "active": offer["quantity"] > 0 and not offer["deleted"], "allow_quote_requests": False, "channels": [],
            "currency_iso_code": self.settings.currency, "date_created": offer["date_created"],
            "deleted": offer["deleted"], "description": offer["description"], "eco_contributions": [],
            "fulfillment": {"center": {"code": "DEFAULT"}}, "is_professional": True,
            "last_updated": offer["last_updated"], "leadtime_to_ship": offer["leadtime_to_ship"],
            "logistic_class": {"code": offer["logistic_class"]}, "min_shipping_price": 0,
            "min_shipping_price_additional": 0, "min_shipping_type": "STD", "min_shipping_zone": "DOM1",
            "no_commission": False, "offer_id": offer["offer_id"], "ongoing_discount_campaigns": [],
            "premium": False, "prices": [prices], "product_sku": offer["product_sku"], "quantity": offer["quantity"],
            "shop_id": self.settings.shop_id, "shop_name": self.settings.shop_name, "shop_sku": offer["shop_sku"],
            "state_code": offer["state_code"],
        }

    def _new_export(self, now: datetime, kind: str, rows: list[dict], per_chunk: int, export_format: str) -> dict:
        tracking_id = self._uuid()
        chunks = [rows[i:i + per_chunk] for i in range(0, len(rows), per_chunk)]
        self.exports[tracking_id] = {
            "tracking_id": tracking_id, "kind": kind, "format": export_format, "chunks": chunks,
            "requested": iso(now), "ready_at": iso(now + timedelta(seconds=self.settings.export_delay_s)),
        }
        return self.exports[tracking_id]

    def export_record(self, kind: str, tracking_id: str) -> dict:
        record = self.exports.get(tracking_id)
        if record is None or record["kind"] != kind:
            raise ApiError(404, f"Export {tracking_id} not found")
        return record

    def export_status_json(self, now: datetime, record: dict, file_url: str) -> dict:
        """TL04 / OF53: PENDING until the export is ready, then the URL of every chunk."""
        if iso(now) < record["ready_at"]:
            return {"status": "PENDING", "last_updated": record["requested"]}
        suffix = record["format"].lower()
        return {"status": "COMPLETED", "last_updated": record["ready_at"],
                "urls": [f"{file_url}?file={index}.{suffix}" for index in range(len(record["chunks"]))]}

    def export_chunk(self, now: datetime, record: dict, file_name: str | None) -> tuple[str, str]:
        """TL05 / OF54: one chunk's content and content type."""
        if iso(now) < record["ready_at"]:
            raise ApiError(404, f"Export {record['tracking_id']} is not complete")
        index = (file_name or "").split(".")[0]
        if not index.isdigit() or int(index) >= len(record["chunks"]):
            raise ApiError(404, f"Export {record['tracking_id']} has no file {file_name!r}")
        rows = [{k: v for k, v in t.items() if k != "seq"} for t in record["chunks"][int(index)]]
        if record["format"] == "CSV":
            buffer = io.StringIO()
            writer = csv.writer(buffer, delimiter=";", lineterminator="\n")
            writer.writerow(EXPORT_COLUMNS)
            for row in rows:
                writer.writerow([row[c] for c in EXPORT_COLUMNS])
            return buffer.getvalue(), "text/csv; charset=UTF-8"
        if record["format"] == "NDJSON":
            return "".join(json.dumps(r) + "\n" for r in rows), "application/x-ndjson"
        wrapper = {"transactions": "data", "orders": "orders"}.get(record["kind"])
        return json.dumps({wrapper: rows} if wrapper else rows), "application/json"

    # Time ------------------------------------------------------------------------------------------
    def tick(self, now: datetime) -> None:
        stamp = iso(now)
        for order in self.orders.values():
            if order["state"] == "WAITING_ACCEPTANCE" and order["acceptance_deadline"] <= stamp:
                deadline = parse_iso(order["acceptance_deadline"])
                self._auto_cancel(order, iso(deadline))
            elif order["state"] == "WAITING_DEBIT_PAYMENT" and order["debit_due"] and order["debit_due"] <= stamp:
                self.debit(parse_iso(order["debit_due"]), order["order_id"])
        for record in [*self.imports.values(), *self.product_imports.values()]:
            if record["status"] in ("WAITING", "RUNNING"):
                created = parse_iso(record["date_created"])
                if now >= created + timedelta(seconds=self.settings.import_delay_s):
                    if record["kind"] == "product":
                        self._integrate_products(record)
                    else:
                        self._complete_import(now, record)

    def _auto_cancel(self, order: dict, stamp: str) -> None:
        lines = self._lines(order)
        for line in lines:
            line.update(state="CANCELED", last_updated=stamp)
        self._release(order, lines, stamp)
        order.update(state="CANCELED", reason_code="ACCEPTANCE_DEADLINE_EXCEEDED")
        self._touch(order, stamp)

    # Persistence -----------------------------------------------------------------------------------
    def to_state(self) -> dict:
        return {
            "settings": asdict(self.settings), "offers": [self.offers[s] for s in self._offer_order],
            "orders": list(self.orders.values()), "imports": list(self.imports.values()),
            "transactions": self.transactions, "invoices": self.invoices, "counters": self.counters,
            "products": list(self.products.items()), "product_imports": list(self.product_imports.values()),
            "cycle_id": self.cycle_id, "cycle_started": self.cycle_started,
        }

    def load_state(self, state: dict) -> None:
        self.settings = MiraklSettings(**state.get("settings", {}))
        self.offers = {o["shop_sku"]: o for o in state.get("offers", [])}
        self._offer_order = [o["shop_sku"] for o in state.get("offers", [])]
        self._sorted.clear()
        self.orders = {o["order_id"]: o for o in state.get("orders", [])}
        self.imports = {}
        for record in state.get("imports", []):
            record["errors"] = [tuple(e) for e in record["errors"]]
            self.imports[record["import_id"]] = record
        self.products = dict(state.get("products", []))
        self.product_imports = {}
        for record in state.get("product_imports", []):
            record["errors"] = [tuple(e) for e in record["errors"]]
            record["added"] = [tuple(a) for a in record["added"]]
            self.product_imports[record["import_id"]] = record
        self.transactions = state.get("transactions", [])
        self.invoices = state.get("invoices", [])
        self.counters.update(state.get("counters", {}))
        self.cycle_id = state.get("cycle_id", self.cycle_id)
        self.cycle_started = state.get("cycle_started")


def valid_gtin(code: str) -> bool:
    """A GTIN-8/12/13/14 (EAN, UPC) with a correct check digit."""
    if not code.isdigit() or len(code) not in (8, 12, 13, 14):
        return False
    digits = [int(c) for c in code]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits[:-1])))
    return (10 - total % 10) % 10 == digits[-1]


def _transaction_matches(row: dict, filters: dict) -> bool:
    entities = row.get("entities") or {}
    order_id = (entities.get("order") or {}).get("id")
    line_id = (entities.get("order_line") or {}).get("id")
    checks = (
        ("seller_billing_cycle_id", lambda v: row["seller_billing_cycle_id"] in v),
        ("payment_state", lambda v: row["payment_state"] in v),
        ("transaction_type", lambda v: row["type"] in v),
        ("order_id", lambda v: order_id in v),
        ("order_line_id", lambda v: line_id in v),
        ("accounting_document_number", lambda v: row.get("accounting_document_number") == v),
        ("date_created_from", lambda v: row["date_created"] >= v),
        ("date_created_to", lambda v: row["date_created"] < v),
        ("transaction_date_from", lambda v: row["transaction_date"] >= v),
        ("transaction_date_to", lambda v: row["transaction_date"] < v),
        ("last_updated_from", lambda v: row["last_updated"] >= v),
    )
    return all(check(filters[name]) for name, check in checks if filters.get(name))


def _drop_none(data: dict, keep: set[str]) -> dict:
    """Mirakl leaves unset optional fields out of its answers; a few are sent as null."""
    return {k: v for k, v in data.items() if v is not None or k in keep}
