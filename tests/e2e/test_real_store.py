"""The flows on a sandbox that behaves like the recorded real WooCommerce store (issue 14).

Each test is one problem seen on a real store (shared/reference/woocommerce-real): VAT added a
second time, variations sharing their parent's stock, a product trashed between the SKU look-up
and the reservation, an unmanaged product out of stock, e-mails to the marketplace's customer.
The DAGs run with dag.test() against the sandbox over real HTTP; one sandbox for the module,
tests in file order.
"""
from __future__ import annotations

from decimal import Decimal

import pytest
import requests

from include.sandbox.scenarios import customer
from tests.e2e.conftest import NO_DEBIT, advance, run_dag

ORDERS = "mirakl_order_ingest__sandbox"
REFUNDS = "mirakl_refund_sync__sandbox"
INVENTORY = "mirakl_inventory_push__sandbox"
SHIPMENTS = "mirakl_shipment_confirm__sandbox"
MINUTE = 61
FR_VAT = {"country": "FR", "rate": "20.0000", "name": "TVA 20%", "shipping": True}

pytestmark = pytest.mark.usefixtures("airflow_env")


def run(sandbox, ledger, dag_id: str):
    advance(sandbox, ledger, MINUTE)
    dagrun = run_dag(dag_id)
    assert dagrun.state == "success"
    return dagrun


def place(sandbox, lines, index=0) -> str:
    with sandbox.lock:
        return sandbox.mirakl.place_order(lines=[{"offer_sku": s, "quantity": q} for s, q in lines],
                                          customer=customer(index), debit_delay_s=NO_DEBIT)["order_id"]


def mirakl_order(sandbox, order_id) -> dict:
    with sandbox.lock:
        return sandbox.mirakl.order(order_id)


def line_states(sandbox, order_id) -> dict[str, str]:
    return {line["offer_sku"]: line["order_line_state"] for line in mirakl_order(sandbox, order_id)["order_lines"]}


def woo_order(sandbox, ledger, order_id) -> dict:
    return sandbox.woo.order(ledger.get_order("sandbox", order_id).woo_order_id)


def meta(record: dict, key: str):
    return next((m["value"] for m in record["meta_data"] if m["key"] == key), None)


def charged(order: dict) -> Decimal:
    """What the customer paid Mirakl for the order's accepted lines (the sandbox's orders are TAX_INCLUDED)."""
    return sum((Decimal(str(line["price"])) + Decimal(str(line["shipping_price"])) for line in order["order_lines"]
                if line["order_line_state"] not in ("REFUSED", "CANCELED")), Decimal("0"))


@pytest.fixture(scope="module")
def shop(sandbox, ledger, mail_sink, airflow_env):
    """A store e-mailing through a local SMTP server, products of every kind of the recordings."""
    sandbox.woo.settings.update(smtp_port=mail_sink.port)
    sandbox.woo.add_simple_product("RW-MUG", "12.50", 100, name="Tasse bleue")
    sandbox.woo.add_simple_product("RW-TEE-M", "20.00", 100, name="T-shirt M")
    sandbox.woo.add_simple_product("RW-OOSU", "6.00", None, manage_stock=False, stock_status="outofstock",
                                   name="Unmanaged out of stock")
    sandbox.woo.add_simple_product("GONE-1", "9.00", 10, name="Trashed during the batch")
    sandbox.woo.add_variable_product("Shared stock tee", [
        {"sku": "SH-TEE-RED", "price": "15.00", "attributes": [{"name": "Color", "option": "Red"}]},
        {"sku": "SH-TEE-BLUE", "price": "15.00", "attributes": [{"name": "Color", "option": "Blue"}]},
    ], sku="SH-TEE", stock_quantity=2)
    with sandbox.lock:
        for sku, price in (("RW-MUG", 12.5), ("RW-TEE-M", 20.0), ("RW-OOSU", 6.0), ("GONE-1", 15.0),
                           ("SH-TEE-RED", 15.0), ("SH-TEE-BLUE", 15.0)):
            sandbox.mirakl.add_offer(sku, price, 50)
    return sandbox


TAX_MODES = {
    "taxes-off": {"calc_taxes": False},
    "taxes-on-exclusive": {"calc_taxes": True, "prices_include_tax": False, "tax_rates": [FR_VAT]},
    "taxes-on-inclusive": {"calc_taxes": True, "prices_include_tax": True, "tax_rates": [FR_VAT]},
}


@pytest.mark.parametrize("mode", list(TAX_MODES))
def test_totals_equal_mirakls_after_create_completion_and_a_taxed_refund(shop, sandbox, ledger, mode):
    sandbox.woo.settings.update({"calc_taxes": False, "prices_include_tax": False, "tax_rates": [], **TAX_MODES[mode]})
    order_id = place(sandbox, [("RW-MUG", 2), ("RW-TEE-M", 1)], index=0)  # a customer in France
    run(sandbox, ledger, ORDERS)
    reserved = woo_order(sandbox, ledger, order_id)
    assert Decimal(reserved["total"]) == charged(mirakl_order(sandbox, order_id)) == Decimal("49.99")

    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    run(sandbox, ledger, ORDERS)
    completed = woo_order(sandbox, ledger, order_id)
    assert completed["status"] == "processing" and completed["shipping"]["country"] == "FR"
    # the completion carries addresses: a store with taxes on recalculates, and must add nothing
    assert (completed["total"], completed["total_tax"]) == ("49.99", "0.00")
    assert ledger.get_exception("order_totals_mismatch", order_id, "sandbox") is None

    # the shop refunds one mug "with its VAT" as WooCommerce's admin screen offers: 12.50 + 2.50
    mug = next(li for li in completed["line_items"] if li["sku"] == "RW-MUG")
    session = requests.Session()
    session.auth = (sandbox.woo.consumer_key, sandbox.woo.consumer_secret)
    taxed = session.post(f"{sandbox.woo_url}/wp-json/wc/v3/orders/{completed['id']}/refunds", json={
        "amount": "15.00", "reason": "Damaged", "api_refund": False,
        "line_items": [{"id": mug["id"], "quantity": 1, "refund_total": "12.50",
                        "refund_tax": [{"id": 1, "refund_total": "2.50"}]}]})
    assert taxed.status_code == 201, taxed.text
    run(sandbox, ledger, REFUNDS)
    refunds = {line["offer_sku"]: line["refunds"] for line in mirakl_order(sandbox, order_id)["order_lines"]}
    assert refunds["RW-MUG"] == []  # never more than Mirakl charged for the unit
    problem = ledger.get_exception("refund_unsendable", str(taxed.json()["id"]), "sandbox")
    assert problem is not None and "more than Mirakl charged for them: 12.50" in problem.detail["message"]

    fair = sandbox.woo.refund_order(completed["id"], [{"id": mug["id"], "quantity": 1, "refund_total": "12.50"}],
                                    reason="Damaged")
    run(sandbox, ledger, REFUNDS)
    [sent] = [r for line in mirakl_order(sandbox, order_id)["order_lines"] if line["offer_sku"] == "RW-MUG"
              for r in line["refunds"]]
    assert (sent["amount"], sent["quantity"]) == (12.5, 1) and fair["amount"] == "12.50"


def test_a_woocommerce_total_that_drifts_from_mirakls_is_an_exception_on_the_order(shop, sandbox, ledger):
    """A fee added in WooCommerce after the reservation (a plugin, a person): the completion's
    check finds WooCommerce's total above what Mirakl charged and says so on that order."""
    sandbox.woo.settings.update({"calc_taxes": False, "prices_include_tax": False, "tax_rates": []})
    order_id = place(sandbox, [("RW-MUG", 1)], index=1)
    run(sandbox, ledger, ORDERS)
    reserved = woo_order(sandbox, ledger, order_id)
    assert ledger.get_exception("order_totals_mismatch", order_id, "sandbox") is None
    session = requests.Session()
    session.auth = (sandbox.woo.consumer_key, sandbox.woo.consumer_secret)
    fee = session.put(f"{sandbox.woo_url}/wp-json/wc/v3/orders/{reserved['id']}",
                      json={"fee_lines": [{"name": "Handling", "total": "3.00"}]})
    assert fee.status_code == 200, fee.text
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    run(sandbox, ledger, ORDERS)
    completed = woo_order(sandbox, ledger, order_id)
    assert completed["status"] == "processing"  # the order goes on; the difference is told, not fixed
    charged_total = charged(mirakl_order(sandbox, order_id))
    assert Decimal(completed["total"]) == charged_total + Decimal("3.00")
    exception = ledger.get_exception("order_totals_mismatch", order_id, "sandbox")
    assert exception is not None and exception.status == "open"
    assert f"totals {completed['total']}, Mirakl charged {charged_total}" in exception.detail["problem"]


def test_unmanaged_out_of_stock_is_refused_and_offered_zero(shop, sandbox, ledger):
    # before any stock push: the marketplace still shows the offer it was created with
    order_id = place(sandbox, [("RW-OOSU", 1), ("RW-MUG", 1)], index=2)
    run(sandbox, ledger, ORDERS)
    assert line_states(sandbox, order_id) == {"RW-OOSU": "REFUSED", "RW-MUG": "WAITING_DEBIT_PAYMENT"}
    run(sandbox, ledger, INVENTORY)
    run(sandbox, ledger, INVENTORY)  # Mirakl applies a stock import a little later
    with sandbox.lock:
        assert sandbox.mirakl.offer("RW-OOSU")["quantity"] == 0


def test_two_orders_on_two_parent_managed_variations_share_the_pool(shop, sandbox, ledger):
    sandbox.woo.settings.update(calc_taxes=False)
    with sandbox.lock:  # offers made by hand at the pool's quantity, before any split push
        for sku in ("SH-TEE-RED", "SH-TEE-BLUE"):
            sandbox.mirakl.add_offer(sku, 15.0, 2)
    red = place(sandbox, [("SH-TEE-RED", 2)], index=0)
    blue = place(sandbox, [("SH-TEE-BLUE", 2)], index=1)
    run(sandbox, ledger, ORDERS)
    assert line_states(sandbox, red) == {"SH-TEE-RED": "WAITING_DEBIT_PAYMENT"}
    assert line_states(sandbox, blue) == {"SH-TEE-BLUE": "REFUSED"}
    assert ledger.get_order("sandbox", blue).lines[0].decision_reason == "short stock: 0 available, 2 ordered"
    assert sandbox.woo.product_by_sku("SH-TEE")["stock_quantity"] == 0  # never below zero

    run(sandbox, ledger, INVENTORY)
    run(sandbox, ledger, INVENTORY)
    with sandbox.lock:
        offered = {sku: sandbox.mirakl.offer(sku)["quantity"] for sku in ("SH-TEE-RED", "SH-TEE-BLUE")}
    assert offered == {"SH-TEE-RED": 0, "SH-TEE-BLUE": 0}


def test_a_sku_trashed_between_look_up_and_create_is_not_reserved(shop, sandbox, ledger, monkeypatch):
    from include.woo_mirakl.clients.woocommerce import WooCommerceClient

    look_up = WooCommerceClient.products_by_sku

    def then_trash(self, skus, unread=None):  # the shop trashes the product while the batch is being decided
        found = look_up(self, skus, unread)
        if "GONE-1" in found:
            with sandbox.lock:
                sandbox.woo.store.trash_item(sandbox.woo.store.by_sku("GONE-1"))
        return found

    monkeypatch.setattr(WooCommerceClient, "products_by_sku", then_trash)
    order_id = place(sandbox, [("GONE-1", 1), ("RW-MUG", 1)], index=1)
    mug_before = sandbox.woo.product_by_sku("RW-MUG")["stock_quantity"]
    run(sandbox, ledger, ORDERS)
    # the reservation came back without GONE-1: undone, and nothing accepted on Mirakl yet
    assert [o["status"] for o in sandbox.woo.orders() if meta(o, "_mirakl_order_id") == order_id] == ["cancelled"]
    assert mirakl_order(sandbox, order_id)["order_state"] == "WAITING_ACCEPTANCE"
    assert sandbox.woo.product_by_sku("RW-MUG")["stock_quantity"] == mug_before
    run(sandbox, ledger, ORDERS)  # the next run reserves what is left, then accepts and refuses

    undone = [o for o in sandbox.woo.orders() if meta(o, "_mirakl_order_id") == order_id]
    assert [o["status"] for o in undone] == ["cancelled", "on-hold"]
    assert undone[0]["line_items"][0]["product_id"] == 0  # what the real store answered: nothing reserved
    problem = ledger.get_exception("order_product_vanished", order_id, "sandbox")
    assert problem is not None and problem.detail["lines"] == [f"{order_id}-1"]
    assert line_states(sandbox, order_id) == {"GONE-1": "REFUSED", "RW-MUG": "WAITING_DEBIT_PAYMENT"}
    assert ledger.get_order("sandbox", order_id).woo_order_id == undone[1]["id"]
    assert sandbox.woo.product_by_sku("RW-MUG")["stock_quantity"] == mug_before - 1  # held once


def test_sku_look_ups_ask_only_for_the_fields_they_use(shop, sandbox):
    look_ups = [e for e in sandbox.log.entries("woo", "woo.products.list") if "sku" in e["query"]]
    assert look_ups and all(e["query"].get("_fields") for e in look_ups)


def test_no_woocommerce_email_reaches_the_marketplace_customer(shop, sandbox, ledger, mail_sink):
    order_id = place(sandbox, [("RW-MUG", 1)], index=0)
    run(sandbox, ledger, ORDERS)
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    run(sandbox, ledger, ORDERS)
    woo = woo_order(sandbox, ledger, order_id)
    address = mirakl_order(sandbox, order_id)["customer_notification_email"]
    assert woo["billing"]["email"] == "" and meta(woo, "_mirakl_customer_email") == address
    sandbox.woo.ship_order(woo["id"])
    sandbox.woo.refund_order(woo["id"], amount="1.00", reason="Goodwill")
    run(sandbox, ledger, SHIPMENTS)
    run(sandbox, ledger, REFUNDS)

    recipients = [m["To"] for m in mail_sink.messages]
    assert "admin@store.sandbox" in recipients  # the store does send (new orders to the shop)
    customers = {mirakl_order(sandbox, o.mirakl_order_id)["customer_notification_email"]
                 for o in ledger.orders_in_states("sandbox", ["SHIPPING", "SHIPPED", "WAITING_ACCEPTANCE",
                                                              "WAITING_DEBIT_PAYMENT", "REFUSED", "CANCELED"])}
    assert address in customers and not customers & set(recipients)
    assert not [m for m in sandbox.woo.store.emails if m["template"].startswith("customer_")]


def shipped_order(sandbox, ledger, index: int) -> tuple[str, int]:
    """A Mirakl order taken to SHIPPING (WooCommerce ``processing``): (Mirakl id, WooCommerce id)."""
    order_id = place(sandbox, [("RW-MUG", 1)], index=index)
    run(sandbox, ledger, ORDERS)
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    run(sandbox, ledger, ORDERS)
    return order_id, ledger.get_order("sandbox", order_id).woo_order_id


def test_a_store_without_tracking_is_said_once_and_advanced_shipment_tracking_is_read(shop, sandbox, ledger):
    # the store of the recordings: no Shipment Tracking extension, no core fulfillments
    untracked, woo_id = shipped_order(sandbox, ledger, 1)
    sandbox.woo.ship_order(woo_id, tracking_provider="Colissimo", tracking_number="6A0001")  # kept nowhere
    run(sandbox, ledger, SHIPMENTS)
    assert mirakl_order(sandbox, untracked)["order_state"] == "SHIPPED"
    said = ledger.get_exception("no_tracking_source", "woocommerce", "sandbox")
    assert said is not None and said.status == "open" and said.severity == "warning"
    assert said.count == 1  # said once, though two cycles shipped orders (see the e-mail test)
    probes = [e for e in sandbox.log.entries("woo") if e["operation"] in ("woo.tracking.list", "woo.fulfillments.list")]
    assert probes == []  # and no 404 per order and cycle

    sandbox.woo.settings["ast_installed"] = True  # the shop installs Advanced Shipment Tracking
    tracked, woo_id = shipped_order(sandbox, ledger, 2)
    sandbox.woo.ship_order(woo_id, tracking_provider="Colissimo", tracking_number="6A0002")
    run(sandbox, ledger, SHIPMENTS)
    shown = mirakl_order(sandbox, tracked)
    assert (shown["order_state"], shown["shipping_carrier_code"], shown["shipping_tracking"]) == (
        "SHIPPED", "COLISSIMO", "6A0002")
    assert ledger.get_exception("no_tracking_source", "woocommerce", "sandbox").status == "resolved"
