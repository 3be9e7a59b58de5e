"""What Mirakl charged for an order, and whether WooCommerce and our refunds agree. Pure, no I/O.

Mirakl's prices follow the order's tax mode (``order_tax_mode``): with ``TAX_INCLUDED`` a line's
``price`` and ``shipping_price`` already include its ``taxes`` / ``shipping_taxes``; with
``TAX_EXCLUDED`` the taxes come on top. What the customer paid for a line is therefore
``price`` (+ taxes when excluded) and, for its shipping, ``shipping_price`` (+ shipping taxes).

WooCommerce must hold exactly that. It would add its own VAT on any update that carries an
address (both price modes), so the integration's orders are VAT-exempt for WooCommerce
(``is_vat_exempt`` = ``yes``, which core's ``calculate_taxes`` honours) and carry Mirakl's tax
data in meta instead; :func:`totals_problem` checks the result after every create and update.

OR28 amounts use the same tax mode: :func:`refund_excess` says when a refund would send more
than Mirakl charged for a line (in total, or for the units refunded).
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Iterable, Mapping

TAX_INCLUDED = "TAX_INCLUDED"
TAX_EXCLUDED = "TAX_EXCLUDED"
CENT = Decimal("0.01")
TOLERANCE = CENT  # what a difference of rounding may be; anything beyond is an exception


def money(value: Any) -> Decimal:
    return Decimal(str(value if value not in (None, "") else 0)).quantize(CENT, rounding=ROUND_HALF_UP)


def tax_mode(order_raw: Mapping[str, Any]) -> str:
    """The order's tax mode; Mirakl's own default (tax included) when absent."""
    return TAX_EXCLUDED if order_raw.get("order_tax_mode") == TAX_EXCLUDED else TAX_INCLUDED


def taxes_total(taxes: Iterable[Mapping[str, Any]] | None) -> Decimal:
    """The sum of a Mirakl ``taxes`` / ``shipping_taxes`` list (``[{"amount", "code", ...}]``)."""
    return sum((money(t.get("amount")) for t in taxes or [] if isinstance(t, Mapping)), Decimal("0"))


def line_charged(line_raw: Mapping[str, Any], mode: str) -> Decimal:
    """What the customer paid for a line's goods (all its units), taxes included."""
    extra = taxes_total(line_raw.get("taxes")) if mode == TAX_EXCLUDED else Decimal("0")
    return money(line_raw.get("price")) + extra


def shipping_charged(line_raw: Mapping[str, Any], mode: str) -> Decimal:
    """What the customer paid for a line's shipping, taxes included."""
    extra = taxes_total(line_raw.get("shipping_taxes")) if mode == TAX_EXCLUDED else Decimal("0")
    return money(line_raw.get("shipping_price")) + extra


def expected_total(order_raw: Mapping[str, Any], line_ids: Iterable[str]) -> Decimal:
    """What the WooCommerce order holding these Mirakl lines must total."""
    mode = tax_mode(order_raw)
    wanted = set(line_ids)
    return sum((line_charged(line, mode) + shipping_charged(line, mode)
                for line in order_raw.get("order_lines") or [] if str(line.get("order_line_id")) in wanted),
               Decimal("0"))


def totals_problem(woo_order: Mapping[str, Any], expected: Decimal) -> str | None:
    """Why WooCommerce's order does not total what Mirakl charged (None when it does, within a cent)."""
    total = money(woo_order.get("total"))
    if abs(total - expected) <= TOLERANCE:
        return None
    tax = money(woo_order.get("total_tax"))
    because = f" (WooCommerce added {tax} of tax)" if tax and abs(total - tax - expected) <= TOLERANCE else ""
    return f"WooCommerce order {woo_order.get('id')} totals {total}, Mirakl charged {expected}{because}"


def refund_excess(
    line_raw: Mapping[str, Any], mode: str, amount: Decimal, quantity: int,
    done_amount: Decimal, done_quantity: int,
) -> str | None:
    """Why an OR28 ``amount`` for ``quantity`` units is more than Mirakl charged for the line (None if not);
    the reason reads after the amount (``"12.50 <reason>"``).

    ``amount`` is in the order's tax mode (as OR28 wants it). The whole refunded so far may never
    pass the line's price; and a refund of some units may not pass those units' share of it
    (cumulated, so rounding of earlier partial refunds is absorbed): a refund whose VAT was
    added on top of a VAT-inclusive price is caught here.
    """
    price = money(line_raw.get("price"))
    units = int(line_raw.get("quantity") or 0)
    left = price - done_amount
    if amount > left:
        return f"is more than is left to refund: {left} (paid {price}, already refunded {done_amount})"
    if quantity and units:
        share = (price * (done_quantity + quantity) / units).quantize(CENT, rounding=ROUND_HALF_UP) - done_amount
        if amount > share:
            return (f"for {quantity} of {units} unit(s) is more than Mirakl charged for them: {share} "
                    f"(line price {price}{', taxes included' if mode == TAX_INCLUDED else ', before taxes'})")
    return None
