"""Seeded scenarios that fill both simulated systems with a consistent world.

A catalogue is created in WooCommerce (simple and variable products, every variation its
own SKU) with matching Mirakl offers, minus a few on purpose: some WooCommerce SKUs have
no offer and some offers have no product, as in real shops. Orders, operator debits,
direct web-shop sales, shipments and refunds are separate steps tests can call.
"""
from __future__ import annotations

import random
from typing import Any, Callable

from include.sandbox.core import Sandbox

CUSTOMERS = [
    {"firstname": "Zoé", "lastname": "Lefèvre", "city": "Besançon", "country_iso_code": "FRA", "zip_code": "25000",
     "street_1": "12 rue de l'Église", "phone": "+33 3 81 00 00 00", "email": "zoe@example.fr", "locale": "fr_FR"},
    {"firstname": "Jürgen", "lastname": "Müller", "city": "München", "country_iso_code": "DEU", "zip_code": "80331",
     "street_1": "Marienplatz 1", "phone": "+49 89 000000", "email": "jm@example.de", "locale": "de_DE"},
    {"firstname": "Ana", "lastname": "Peña", "city": "A Coruña", "country_iso_code": "ESP", "zip_code": "15001",
     "street_1": "Calle Real 5", "phone": None, "email": "ana@example.es", "locale": "es_ES"},
]
MESSAGES = [None, "Merci de livrer après 18h — code porte 1234", "Bitte beim Nachbarn abgeben 🙂"]


def customer(index: int) -> dict[str, Any]:
    """A Mirakl customer with billing and shipping addresses (non-ASCII on purpose)."""
    base = CUSTOMERS[index % len(CUSTOMERS)]
    address = {
        "firstname": base["firstname"], "lastname": base["lastname"], "street_1": base["street_1"],
        "street_2": None, "zip_code": base["zip_code"], "city": base["city"], "country": base["country_iso_code"],
        "country_iso_code": base["country_iso_code"], "phone": base["phone"], "company": None, "state": None,
    }
    return {
        "firstname": base["firstname"], "lastname": base["lastname"], "locale": base["locale"], "billing_address": dict(address), "shipping_address": dict(address),
    }


def catalogue(sandbox: Sandbox, n_skus: int = 20, seed: int = 42, variable_share: float = 0.3,
              missing_offer_share: float = 0.05, orphan_offers: int = 2, stock_range: tuple[int, int] = (0, 50),
              prefix: str = "SKU") -> dict[str, Any]:
    """Create ``n_skus`` sellable units (simple products and variations) with offers."""
    rng = random.Random(seed)
    woo, mirakl = sandbox.woo, sandbox.mirakl
    skus: list[str] = []
    without_offer: list[str] = []
    made = 0
    parent_no = 0
    while made < n_skus:
        if rng.random() < variable_share and n_skus - made >= 3:
            parent_no += 1
            sizes = ["S", "M", "L"]
            variations = []
            for size in sizes:
                made += 1
                variations.append({
                    "sku": f"{prefix}-{made:06d}-{size}",
                    "price": f"{rng.randint(10, 120)}.{rng.choice(['00', '50', '99'])}",
                    "stock_quantity": rng.randint(*stock_range),
                    "attributes": [{"name": "Size", "option": size}],
                })
            woo.add_variable_product(f"T-shirt {parent_no}", variations=variations)
            new = [v["sku"] for v in variations]
            prices = {v["sku"]: v["price"] for v in variations}
            stocks = {v["sku"]: v["stock_quantity"] for v in variations}
        else:
            made += 1
            sku = f"{prefix}-{made:06d}"
            price = f"{rng.randint(5, 300)}.{rng.choice(['00', '49', '90'])}"
            stock = rng.randint(*stock_range)
            woo.add_simple_product(sku, price, stock, name=f"Product {made}")
            new, prices, stocks = [sku], {sku: price}, {sku: stock}
        for sku in new:
            skus.append(sku)
            if rng.random() < missing_offer_share:
                without_offer.append(sku)
                continue
            mirakl.add_offer(sku, float(prices[sku]), stocks[sku])
    orphans = [f"{prefix}-GONE-{i:03d}" for i in range(orphan_offers)]
    for sku in orphans:
        mirakl.add_offer(sku, 9.99, 3)
    return {"skus": skus, "without_offer": without_offer, "orphan_offers": orphans}


def place_orders(sandbox: Sandbox, count: int, skus: list[str], seed: int = 42, max_lines: int = 3,
                 **order_kwargs: Any) -> list[str]:
    """Place ``count`` orders of 1..max_lines lines on random offers; returns their ids."""
    rng = random.Random(seed)
    ids = []
    for i in range(count):
        lines = [{"offer_sku": sku, "quantity": rng.randint(1, 2)}
                 for sku in rng.sample(skus, k=min(len(skus), rng.randint(1, max_lines)))]
        order = sandbox.mirakl.place_order(lines=lines, customer=customer(i),
                                           customer_message=MESSAGES[i % len(MESSAGES)], **order_kwargs)
        ids.append(order["order_id"])
    return ids


def demo(sandbox: Sandbox, seed: int = 42) -> dict[str, Any]:
    """A small shop: a catalogue, a few orders including an unknown SKU and a short-stock line."""
    world = catalogue(sandbox, n_skus=12, seed=seed, stock_range=(2, 20))
    offered = [s for s in world["skus"] if s not in world["without_offer"]]
    orders = place_orders(sandbox, 3, offered, seed=seed, debit_delay_s=120)
    # An offer with no WooCommerce product, and more units than the store has.
    orphan = world["orphan_offers"][0]
    orders.append(sandbox.mirakl.place_order(lines=[{"offer_sku": orphan, "quantity": 1},
                                                    {"offer_sku": offered[0], "quantity": 1}],
                                             customer=customer(1), debit_delay_s=120)["order_id"])
    short = offered[1]
    stock = sandbox.woo.product_by_sku(short)["stock_quantity"]
    sandbox.mirakl.add_offer(short, float(sandbox.woo.product_by_sku(short)["price"]), stock + 5)
    orders.append(sandbox.mirakl.place_order(lines=[{"offer_sku": short, "quantity": stock + 3}],
                                             customer=customer(2), debit_delay_s=120)["order_id"])
    return {**world, "orders": orders}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "empty": lambda sandbox, **_: {},
    "demo": demo,
    "catalogue": catalogue,
}


def apply_scenario(sandbox: Sandbox, name: str, **params: Any) -> dict[str, Any]:
    """Run a named scenario against the sandbox's state (caller holds or gets the lock)."""
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}") from None
    with sandbox.lock:
        return scenario(sandbox, **params)
