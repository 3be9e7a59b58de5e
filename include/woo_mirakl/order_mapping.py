"""Mirakl orders → WooCommerce orders: validation, per-line decisions and payloads. Pure, no I/O.

* :func:`acceptance_problems` says why an order cannot be decided automatically (missing SKU,
  zero or negative quantity, unknown currency...); such an order is left for a human.
* :func:`decide_lines` decides each line by the marketplace's :class:`OrderPolicy`, counting the
  units already promised to earlier orders of the same batch.
* :func:`reservation_order` is the ``on-hold`` WooCommerce order that reserves the accepted lines;
  :func:`completion_update` is the change that completes it once Mirakl reaches ``SHIPPING``.
  Both carry what Mirakl charged, taxes included, on a VAT-exempt order (see
  :mod:`include.woo_mirakl.order_money`), and keep the customer's e-mail out of ``billing.email``
  unless the marketplace allows contact (WooCommerce e-mails whatever address is there).
* :func:`vanished_lines` says which lines of a created order WooCommerce did not reserve.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Mapping

from include.woo_mirakl.clients.mirakl_models import Address, Order
from include.woo_mirakl.config import Marketplace, OrderPolicy
from include.woo_mirakl.order_money import line_charged, shipping_charged, tax_mode
from include.woo_mirakl.stock import available_units, pool_key

META_ORDER_ID = "_mirakl_order_id"
META_MARKETPLACE = "_mirakl_marketplace"
META_COMMERCIAL_ID = "_mirakl_commercial_id"
META_LINE_ID = "_mirakl_order_line_id"
META_MESSAGE = "MiraklOrderMessage"
META_CANCEL_REASON = "_mirakl_cancel_reason"
META_CUSTOMER_EMAIL = "_mirakl_customer_email"
META_TAX_MODE = "_mirakl_tax_mode"
META_TAXES = "_mirakl_taxes"
META_SHIPPING_TAXES = "_mirakl_shipping_taxes"
# Core's calculate_taxes() skips an order with this meta: Mirakl's amounts already hold the tax.
META_VAT_EXEMPT = "is_vat_exempt"
PAYMENT_METHOD = "mirakl"
SHIPPING_METHOD = "mirakl"

# ISO 3166-1: alpha-3 (what Mirakl sends in country_iso_code) → alpha-2 (what WooCommerce stores).
_ISO3_ISO2 = (
    "ABWAW AFGAF AGOAO AIAAI ALAAX ALBAL ANDAD AREAE ARGAR ARMAM ASMAS ATAAQ ATFTF ATGAG AUSAU AUTAT AZEAZ BDIBI "
    "BELBE BENBJ BESBQ BFABF BGDBD BGRBG BHRBH BHSBS BIHBA BLMBL BLRBY BLZBZ BMUBM BOLBO BRABR BRBBB BRNBN BTNBT "
    "BVTBV BWABW CAFCF CANCA CCKCC CHECH CHLCL CHNCN CIVCI CMRCM CODCD COGCG COKCK COLCO COMKM CPVCV CRICR CUBCU "
    "CUWCW CXRCX CYMKY CYPCY CZECZ DEUDE DJIDJ DMADM DNKDK DOMDO DZADZ ECUEC EGYEG ERIER ESHEH ESPES ESTEE ETHET "
    "FINFI FJIFJ FLKFK FRAFR FROFO FSMFM GABGA GBRGB GEOGE GGYGG GHAGH GIBGI GINGN GLPGP GMBGM GNBGW GNQGQ GRCGR "
    "GRDGD GRLGL GTMGT GUFGF GUMGU GUYGY HKGHK HMDHM HNDHN HRVHR HTIHT HUNHU IDNID IMNIM INDIN IOTIO IRLIE IRNIR "
    "IRQIQ ISLIS ISRIL ITAIT JAMJM JEYJE JORJO JPNJP KAZKZ KENKE KGZKG KHMKH KIRKI KNAKN KORKR KWTKW LAOLA LBNLB "
    "LBRLR LBYLY LCALC LIELI LKALK LSOLS LTULT LUXLU LVALV MACMO MAFMF MARMA MCOMC MDAMD MDGMG MDVMV MEXMX MHLMH "
    "MKDMK MLIML MLTMT MMRMM MNEME MNGMN MNPMP MOZMZ MRTMR MSRMS MTQMQ MUSMU MWIMW MYSMY MYTYT NAMNA NCLNC NERNE "
    "NFKNF NGANG NICNI NIUNU NLDNL NORNO NPLNP NRUNR NZLNZ OMNOM PAKPK PANPA PCNPN PERPE PHLPH PLWPW PNGPG POLPL "
    "PRIPR PRKKP PRTPT PRYPY PSEPS PYFPF REURE ROURO RUSRU RWARW SAUSA SDNSD SENSN SGPSG SGSGS SHNSH SJMSJ SLBSB "
    "SLESL SLVSV SMRSM SOMSO SPMPM SRBRS SSDSS STPST SURSR SVKSK SVNSI SWESE SWZSZ SXMSX SYCSC SYRSY TCATC TCDTD "
    "TGOTG THATH TJKTJ TKLTK TKMTM TLSTL TONTO TTOTT TUNTN TURTR TUVTV TWNTW TZATZ UGAUG UKRUA UMIUM URYUY USAUS "
    "UZBUZ VATVA VCTVC VENVE VGBVG VIRVI VNMVN VUTVU WLFWF WSMWS YEMYE ZAFZA ZMBZM ZWEZW"
)
ISO3_TO_ISO2: dict[str, str] = {pair[:3]: pair[3:] for pair in _ISO3_ISO2.split()}
ISO2_CODES = frozenset(ISO3_TO_ISO2.values())

# ISO 4217 currencies in use (WooCommerce's currency list is a superset of the ones that matter).
CURRENCIES = frozenset((
    "AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF "
    "CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL "
    "HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD "
    "MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG "
    "QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SYP SZL THB TJS TMT TND TOP TRY TTD TWD "
    "TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG"
).split())

ACCEPTED = "accepted"
REFUSED = "refused"
UNKNOWN_SKU = "unknown SKU"
SHORT_STOCK = "short stock"
VANISHED = "product no longer in WooCommerce"


class InvalidOrderError(ValueError):
    """A Mirakl order's payload cannot be turned into a WooCommerce order; ``problems`` say why."""

    def __init__(self, order_id: str, problems: list[str]):
        super().__init__(f"order {order_id}: " + "; ".join(problems))
        self.order_id = order_id
        self.problems = problems


@dataclass(frozen=True)
class StockInfo:
    """What WooCommerce says about one SKU: ``quantity`` None means no limit (stock not managed,
    in stock); ``pool`` is the stock it sells from, shared by parent-managed variations."""

    quantity: int | None
    pool: str = ""

    @classmethod
    def of(cls, ref: Any) -> "StockInfo":
        """From a SKU look-up (:class:`~include.woo_mirakl.clients.woocommerce.SkuRef`)."""
        return cls(available_units(ref.manage_stock, ref.stock_quantity, getattr(ref, "stock_status", None)),
                   pool_key(ref.product_id, ref.parent_id, ref.manage_stock))


def pool_of(sku: str, stock: Mapping[str, StockInfo]) -> str:
    """The stock pool a SKU's demand counts against (the SKU itself when unknown)."""
    info = stock.get(sku)
    return info.pool if info is not None and info.pool else f"sku:{sku}"


@dataclass(frozen=True)
class LineDecision:
    """The decision on one Mirakl order line (what OR21 will say for it)."""

    line_id: str
    sku: str
    quantity: int
    accepted: bool
    reason: str | None = None

    @property
    def decision(self) -> str:
        return ACCEPTED if self.accepted else REFUSED


def country_iso2(value: str | None) -> str | None:
    """ISO-2 country code from Mirakl's ISO-3 (or an ISO-2 already); None when not a known country."""
    code = (value or "").strip().upper()
    if len(code) == 3:
        return ISO3_TO_ISO2.get(code)
    if len(code) == 2 and code in ISO2_CODES:
        return code
    return None


def acceptance_problems(order: Order) -> list[str]:
    """Why ``order`` cannot be decided automatically (empty when it can)."""
    problems: list[str] = []
    currency = (order.currency_iso_code or "").strip().upper()
    if not currency:
        problems.append("no currency")
    elif currency not in CURRENCIES:
        problems.append(f"unknown currency {order.currency_iso_code!r}")
    if not order.order_lines:
        problems.append("no order lines")
    seen: set[str] = set()
    for index, line in enumerate(order.order_lines, start=1):
        name = f"line {line.order_line_id}" if line.order_line_id not in ("", "None") else f"line #{index}"
        if line.order_line_id in ("", "None"):
            problems.append(f"{name} has no order_line_id")
        elif line.order_line_id in seen:
            problems.append(f"{name} appears twice")
        seen.add(line.order_line_id)
        if not (line.offer_sku or "").strip():
            problems.append(f"{name} has no SKU")
        elif "," in line.offer_sku:
            problems.append(f"{name} SKU {line.offer_sku!r} contains a comma")
        quantity = line.raw.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
            problems.append(f"{name} has quantity {quantity!r} (must be a whole number above 0)")
        if line.price is None or line.price < 0:
            problems.append(f"{name} has price {line.raw.get('price')!r} (must be a number >= 0)")
    return problems


def decide_lines(
    order: Order, stock: Mapping[str, StockInfo], policy: OrderPolicy, promised: Counter[str]
) -> list[LineDecision] | None:
    """Accept or refuse each line; None when the policy leaves the order to a human.

    ``promised`` holds, per stock pool (:func:`pool_of`), the units already accepted for earlier
    orders of the batch (not yet reserved in WooCommerce); this order's accepted units are added.
    Variations sharing their parent's stock draw on one pool, across lines and orders.
    """
    if not policy.accept_orders:
        return None
    decisions: list[LineDecision] = []
    taken: Counter[str] = Counter()
    for line in order.order_lines:
        sku = line.offer_sku or ""
        info = stock.get(sku)
        if info is None:
            if not policy.refuse_unknown_sku:
                return None  # a line WooCommerce cannot hold: only a person can decide
            decisions.append(LineDecision(line.order_line_id, sku, line.quantity, False, UNKNOWN_SKU))
            continue
        pool = pool_of(sku, stock)
        if info.quantity is not None and policy.refuse_short_stock:
            available = info.quantity - promised[pool] - taken[pool]
            if line.quantity > available:
                decisions.append(LineDecision(
                    line.order_line_id, sku, line.quantity, False,
                    f"{SHORT_STOCK}: {max(available, 0)} available, {line.quantity} ordered",
                ))
                continue
        taken[pool] += line.quantity
        decisions.append(LineDecision(line.order_line_id, sku, line.quantity, True))
    promised.update(taken)
    return decisions


def order_decision(decisions: list[LineDecision]) -> str:
    """``accepted``, ``partially`` or ``refused`` for the ledger."""
    accepted = sum(1 for d in decisions if d.accepted)
    if accepted == len(decisions):
        return "accepted"
    return "refused" if accepted == 0 else "partially"


def _money(value: Decimal | None) -> str:
    return f"{(value or Decimal('0')).quantize(Decimal('0.01'))}"


def _meta(marketplace: Marketplace, order: Order) -> list[dict[str, Any]]:
    return [
        {"key": META_ORDER_ID, "value": order.order_id},
        {"key": META_MARKETPLACE, "value": marketplace.name},
        {"key": META_COMMERCIAL_ID, "value": order.commercial_id or ""},
        {"key": META_VAT_EXEMPT, "value": "yes"},
        {"key": META_TAX_MODE, "value": tax_mode(order.raw)},
    ]


def _line_taxes_meta(line: Any) -> list[dict[str, Any]]:
    """Mirakl's own tax lines, kept on the WooCommerce line for finance (WooCommerce computes none)."""
    meta = []
    for key, name in ((META_TAXES, "taxes"), (META_SHIPPING_TAXES, "shipping_taxes")):
        taxes = line.raw.get(name) or []
        if taxes:
            meta.append({"key": key, "value": taxes})
    return meta


def reservation_order(marketplace: Marketplace, order: Order, accepted_line_ids: set[str]) -> dict[str, Any]:
    """The ``on-hold`` WooCommerce order holding the accepted lines (so their stock is reserved)."""
    lines = [line for line in order.order_lines if line.order_line_id in accepted_line_ids]
    if not lines:
        raise ValueError(f"order {order.order_id}: no accepted line to reserve")
    mode = tax_mode(order.raw)
    shipping = sum((shipping_charged(line.raw, mode) for line in lines), Decimal("0"))
    customer = order.customer
    return {
        "status": "on-hold",
        "currency": (order.currency_iso_code or "").upper(),
        "payment_method": PAYMENT_METHOD,
        "payment_method_title": f"Mirakl marketplace {marketplace.name}",
        "set_paid": False,
        "billing": {
            "first_name": (customer.firstname if customer else None) or "",
            "last_name": (customer.lastname if customer else None) or "",
        },
        "line_items": [
            {
                "sku": line.offer_sku,
                "quantity": line.quantity,
                # what the marketplace charged for the line (unit price x quantity), taxes included
                "subtotal": _money(line_charged(line.raw, mode)),
                "total": _money(line_charged(line.raw, mode)),
                "meta_data": [{"key": META_LINE_ID, "value": line.order_line_id}, *_line_taxes_meta(line)],
            }
            for line in lines
        ],
        "shipping_lines": [
            {"method_id": SHIPPING_METHOD, "method_title": _shipping_title(order), "total": _money(shipping)}
        ],
        "meta_data": _meta(marketplace, order),
    }


def _shipping_title(order: Order) -> str:
    return str(order.raw.get("shipping_type_label") or order.shipping_type_code or "Marketplace shipping")


def _address(address: Address | None, kind: str, order_id: str) -> dict[str, str]:
    if address is None:
        raise InvalidOrderError(order_id, [f"no {kind} address"])
    problems = []
    country = country_iso2(address.country_iso_code or address.country)
    if country is None:
        problems.append(f"{kind} address country {address.country_iso_code or address.country!r} is not a known country")
    for field_name in ("street_1", "city"):
        if not (getattr(address, field_name) or "").strip():
            problems.append(f"{kind} address has no {field_name}")
    if not ((address.lastname or "").strip() or (address.firstname or "").strip() or (address.company or "").strip()):
        problems.append(f"{kind} address has no name")
    if problems:
        raise InvalidOrderError(order_id, problems)
    return {
        "first_name": address.firstname or "",
        "last_name": address.lastname or "",
        "company": address.company or "",
        "address_1": address.street_1 or "",
        "address_2": address.street_2 or "",
        "city": address.city or "",
        "state": address.state or "",
        "postcode": address.zip_code or "",
        "country": country or "",
        "phone": address.phone or "",
    }


def completion_update(
    order: Order, message: str | None, shipping_line_id: int | None, *, customer_email_in_billing: bool = False,
    line_ids: set[str] | None = None,
) -> dict[str, Any]:
    """The change that completes the WooCommerce order at ``SHIPPING``: addresses, message, shipping, status.

    Absolute values and the existing shipping line's id make it safe to send twice. The customer's
    e-mail goes to order meta (fulfilment can read it) and only into ``billing.email`` — where
    WooCommerce e-mails the customer — when the marketplace allows contact. The order stays
    VAT-exempt, so the addresses do not make WooCommerce add tax. ``line_ids`` are the Mirakl
    lines the WooCommerce order holds (their shipping is charged; all lines when None).
    Raises :class:`InvalidOrderError` when an address is missing or malformed.
    """
    customer = order.customer
    billing = _address(customer.billing_address if customer else None, "billing", order.order_id)
    shipping = _address(customer.shipping_address if customer else None, "shipping", order.order_id)
    email = order.customer_notification_email or ""
    billing["email"] = email if customer_email_in_billing else ""
    mode = tax_mode(order.raw)
    held = [line for line in order.order_lines if line_ids is None or line.order_line_id in line_ids]
    shipping_line: dict[str, Any] = {
        "method_id": SHIPPING_METHOD, "method_title": _shipping_title(order),
        "total": _money(sum((shipping_charged(line.raw, mode) for line in held), Decimal("0"))),
    }
    if shipping_line_id is not None:
        shipping_line["id"] = shipping_line_id
    update: dict[str, Any] = {
        "status": "processing",
        "billing": billing,
        "shipping": shipping,
        "shipping_lines": [shipping_line],
        "customer_note": message or "",
        "meta_data": [{"key": META_MESSAGE, "value": message or ""}, {"key": META_CUSTOMER_EMAIL, "value": email},
                      {"key": META_VAT_EXEMPT, "value": "yes"}],
    }
    return update


def vanished_lines(sent: Mapping[str, Any], created: Mapping[str, Any]) -> list[str]:
    """The Mirakl line ids of a just-created WooCommerce order that WooCommerce did not take.

    A real store answers 201 for a line whose SKU was trashed or deleted after the look-up, with
    ``product_id`` 0 and nothing reserved; a line whose quantity or SKU is not what was sent is
    not the reservation either.
    """
    wanted = {_line_id(item): item for item in sent.get("line_items") or []}
    got = {_line_id(item): item for item in created.get("line_items") or []}
    gone = []
    for line_id, item in wanted.items():
        held = got.get(line_id)
        if (held is None or not held.get("product_id") or held.get("sku") != item.get("sku")
                or int(held.get("quantity") or 0) != int(item.get("quantity") or 0)):
            gone.append(str(line_id))
    return gone


def _line_id(item: Mapping[str, Any]) -> Any:
    for meta in item.get("meta_data") or []:
        if isinstance(meta, Mapping) and meta.get("key") == META_LINE_ID:
            return meta.get("value")
    return item.get("sku")


def meta_value(woo_order: Mapping[str, Any], key: str) -> Any:
    """The value of one meta key of a WooCommerce order (None when absent)."""
    for meta in woo_order.get("meta_data") or []:
        if isinstance(meta, dict) and meta.get("key") == key:
            return meta.get("value")
    return None


def shipping_line_id(woo_order: Mapping[str, Any]) -> int | None:
    """The id of the marketplace shipping line the reservation created."""
    for line in woo_order.get("shipping_lines") or []:
        if isinstance(line, dict) and line.get("method_id") == SHIPPING_METHOD and line.get("id"):
            return int(line["id"])
    return None
