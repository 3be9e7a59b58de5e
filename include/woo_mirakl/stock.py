"""What a marketplace offer should say, computed from WooCommerce: pure functions, no I/O.

*Available to promise* (ATP) for one SKU on one marketplace::

    ATP = WooCommerce stock − marketplace demand not yet reserved in WooCommerce − safety buffer,
          floored at 0.

Rules for products that are not plain stock-managed items:

* stock not managed (``manage_stock`` false): ``instock``/``onbackorder`` → the marketplace's
  ``unmanaged_in_stock_quantity``, ``outofstock`` → 0 (then demand and buffer apply as usual);
  the order flow applies the same rule (:func:`available_units`: out of stock refuses);
* a variation whose stock its parent manages (``manage_stock: "parent"``) shares the parent's
  *pool* with its siblings: WooCommerce reports the pool's quantity on each, demand is counted
  per pool (:func:`pool_key`, :func:`pool_demand`), for the push as for decisions, and the pool's
  ATP is split between its variations' offers so that together they never offer more than the
  pool holds (:func:`offer_targets`);
* not published (draft, pending, private) → 0: it is not for sale anywhere;
* a variable product's parent is never an offer; each variation is, under its own SKU;
* a variation without a SKU cannot be matched to an offer: it is reported, never pushed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping

from include.woo_mirakl.config import Marketplace

SELLABLE_STATUSES = frozenset({"publish"})
IN_STOCK_STATUSES = frozenset({"instock", "onbackorder"})
NOT_OFFERS = frozenset({"variable", "grouped", "external"})


@dataclass(frozen=True)
class WooItem:
    """The stock- and price-relevant fields of a WooCommerce product or variation."""

    id: int
    sku: str
    type: str
    status: str
    manage_stock: bool | str
    stock_quantity: int | None
    stock_status: str
    price: Decimal | None
    parent_id: int = 0

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> "WooItem":
        """From a ``wc/v3`` product or variation (``/variations`` items carry ``parent_id``)."""
        quantity = data.get("stock_quantity")
        return cls(
            id=int(data["id"]),
            sku=str(data.get("sku") or "").strip(),
            type=str(data.get("type") or ("variation" if data.get("parent_id") else "simple")),
            status=str(data.get("status") or "publish"),
            manage_stock=data.get("manage_stock", False),
            stock_quantity=int(quantity) if quantity not in (None, "") else None,
            stock_status=str(data.get("stock_status") or "instock"),
            price=parse_price(data.get("price")),
            parent_id=int(data.get("parent_id") or 0),
        )

    @property
    def is_offer(self) -> bool:
        """Whether this item is sold as a marketplace offer (parents of variations are not)."""
        return self.type not in NOT_OFFERS

    @property
    def is_variation(self) -> bool:
        return self.type == "variation"

    @property
    def pool(self) -> str:
        """The stock pool this item sells from (its parent's for ``manage_stock: "parent"``)."""
        return pool_key(self.id, self.parent_id, self.manage_stock)


def pool_key(item_id: int, parent_id: int | None, manage_stock: Any) -> str:
    """Which stock an item consumes: ``parent:<id>`` for a variation whose parent manages it, else its own."""
    if manage_stock == "parent" and parent_id:
        return f"parent:{int(parent_id)}"
    return f"item:{int(item_id)}"


def available_units(manage_stock: Any, stock_quantity: Any, stock_status: str | None) -> int | None:
    """The units WooCommerce can sell of an item: one rule for orders and for the inventory push.

    Managed stock (its own or its parent's): the quantity. Not managed: 0 when ``outofstock``,
    None (no limit from WooCommerce) when ``instock`` or ``onbackorder``.
    """
    managed = manage_stock is True or manage_stock == "parent" or str(manage_stock).lower() == "true"
    if managed and stock_quantity not in (None, ""):
        return int(stock_quantity)
    return None if (stock_status or "instock") in IN_STOCK_STATUSES else 0


def pool_demand(items: Iterable[WooItem], demand: Mapping[str, int]) -> dict[str, int]:
    """Unreserved demand per stock pool, summed over the pool's items (by SKU)."""
    totals: dict[str, int] = {}
    for item in items:
        totals[item.pool] = totals.get(item.pool, 0) + int(demand.get(item.sku, 0))
    return totals


@dataclass(frozen=True)
class OfferTarget:
    """What the offer for ``sku`` should show on the marketplace."""

    sku: str
    quantity: int
    price: Decimal | None


def parse_price(value: Any) -> Decimal | None:
    """WooCommerce prices are strings; empty means "no price" (not zero)."""
    if value is None or value == "":
        return None
    try:
        price = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return price if price.is_finite() and price >= 0 else None


def woo_stock(item: WooItem, unmanaged_in_stock_quantity: int) -> int:
    """The units WooCommerce says it can sell, before marketplace demand and buffer."""
    if item.status not in SELLABLE_STATUSES:
        return 0
    units = available_units(item.manage_stock, item.stock_quantity, item.stock_status)
    return unmanaged_in_stock_quantity if units is None else units


def available_to_promise(stock: int, unreserved_demand: int, safety_buffer: int) -> int:
    """ATP = stock − demand not yet reserved in WooCommerce − buffer, never below 0."""
    if unreserved_demand < 0 or safety_buffer < 0:
        raise ValueError(f"demand ({unreserved_demand}) and safety buffer ({safety_buffer}) cannot be negative")
    return max(0, stock - unreserved_demand - safety_buffer)


def offer_target(item: WooItem, marketplace: Marketplace, unreserved_demand: int = 0) -> OfferTarget:
    """The offer an item should become on ``marketplace``; the item must be an offer with a SKU."""
    if not item.is_offer:
        raise ValueError(f"WooCommerce product {item.id} is a {item.type} product, not an offer")
    if not item.sku:
        raise ValueError(f"WooCommerce product {item.id} has no SKU")
    quantity = available_to_promise(
        woo_stock(item, marketplace.unmanaged_in_stock_quantity), unreserved_demand, marketplace.safety_buffer
    )
    price = marketplace.price_rule.apply(item.price) if item.price is not None else None
    return OfferTarget(item.sku, quantity, price)


def offer_targets(items: Iterable[WooItem], marketplace: Marketplace, demand: Mapping[str, int]) -> dict[str, OfferTarget]:
    """The offer of every item (offers with a SKU), by SKU; a shared stock pool is split between its offers.

    An item with its own stock gets :func:`offer_target` with its own unreserved demand. A pool
    of variations whose parent manages the stock (``manage_stock: "parent"``) holds ``S`` units
    (the quantity WooCommerce reports on each of them); its available to promise is computed
    *once*, ``A = max(0, S − D − B)`` with ``D`` the unreserved demand of all its variations and
    ``B`` the marketplace's buffer, and split between its published variations: each gets
    ``⌊A / n⌋`` and the ``A mod n`` units left go one each to the lowest WooCommerce ids (a fixed
    order, so offers do not move between cycles when nothing changed). The offers of a pool
    therefore sum to at most ``A``: whatever mix of variations customers buy on the marketplace,
    they cannot buy more than the pool holds. (Offering each variation ``A`` would let every one of
    them sell the whole pool.) All of a pool's variations must be among ``items``.
    """
    members: dict[str, list[WooItem]] = {}
    for item in items:
        members.setdefault(item.pool, []).append(item)
    targets: dict[str, OfferTarget] = {}
    for pool, pooled in members.items():
        unreserved = sum(int(demand.get(i.sku, 0)) for i in pooled)
        if not pool.startswith("parent:"):
            targets.update((i.sku, offer_target(i, marketplace, unreserved)) for i in pooled)
            continue
        selling = sorted((i for i in pooled if i.status in SELLABLE_STATUSES), key=lambda i: i.id)
        stock = woo_stock(selling[0], marketplace.unmanaged_in_stock_quantity) if selling else 0
        share, left = divmod(available_to_promise(stock, unreserved, marketplace.safety_buffer), len(selling) or 1)
        quantities = {i.sku: share + (1 if rank < left else 0) for rank, i in enumerate(selling)}
        for item in pooled:
            targets[item.sku] = replace(offer_target(item, marketplace), quantity=quantities.get(item.sku, 0))
    return targets


@dataclass(frozen=True)
class AcceptedOffer:
    """What the integration believes the marketplace holds for a SKU, and what is in flight."""

    quantity: int | None = None
    price: Decimal | None = None
    pending_quantity: int | None = None
    pending_price: Decimal | None = None


def quantity_to_send(target: OfferTarget, known: AcceptedOffer | None) -> int | None:
    """The quantity to put in this cycle's stock file, or None when the marketplace is up to date.

    While an import is in flight its value is the expected one (sending it again would be a
    double push); otherwise the accepted one is.
    """
    basis = None
    if known is not None:
        basis = known.pending_quantity if known.pending_quantity is not None else known.quantity
    return None if basis == target.quantity else target.quantity


def price_to_send(target: OfferTarget, known: AcceptedOffer | None) -> Decimal | None:
    """The price to put in this cycle's price file, or None when unchanged or unknown."""
    if target.price is None:
        return None
    basis = None
    if known is not None:
        basis = known.pending_price if known.pending_price is not None else known.price
    if basis is not None and Decimal(basis) == target.price:
        return None
    return target.price

