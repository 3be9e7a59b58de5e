"""The order-ingest task log says what happened to each order (issue 17, item 4): one line per
order with its Mirakl id, each line's SKU, quantity and decision with its reason, and the
WooCommerce order number."""
from __future__ import annotations

import logging
import re

from include.sandbox.scenarios import customer
from tests.e2e.conftest import advance, run_dag

DAG_ID = "mirakl_order_ingest__sandbox"


def test_one_log_line_per_order_with_lines_decisions_reasons_and_the_woocommerce_number(
        sandbox, ledger, airflow_env, tmp_path):
    sandbox.woo.add_simple_product("LOG-MUG", "12.50", 10)
    sandbox.woo.add_simple_product("LOG-LAST", "9.00", 1)
    with sandbox.lock:
        for sku in ("LOG-MUG", "LOG-LAST", "LOG-UNKNOWN"):
            sandbox.mirakl.add_offer(sku, 15.0, 50)
        mixed = sandbox.mirakl.place_order(lines=[{"offer_sku": "LOG-MUG", "quantity": 2},
                                                  {"offer_sku": "LOG-LAST", "quantity": 3}],
                                           customer=customer(0), debit_delay_s=864000)["order_id"]
        refused = sandbox.mirakl.place_order(lines=[{"offer_sku": "LOG-UNKNOWN", "quantity": 1}],
                                             customer=customer(1), debit_delay_s=864000)["order_id"]
    advance(sandbox, ledger, 61)

    # A file on the module's own logger: the task may run in a child process whose root logger
    # Airflow configures itself.
    path = tmp_path / "orders.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("include.woo_mirakl.orders")
    level = logger.level
    logger.setLevel(logging.INFO)  # the tests run Airflow at WARNING; a deployment logs INFO
    logger.addHandler(handler)
    try:
        assert run_dag(DAG_ID).state == "success"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()

    lines = {m.split(" ")[2]: m for m in path.read_text(encoding="utf-8").splitlines() if m.startswith("Mirakl order ")}
    woo_id = ledger.get_order("sandbox", mixed).woo_order_id
    assert woo_id
    assert set(lines) == {mixed, refused}
    assert re.search(r"LOG-MUG ×2 accepted.*; LOG-LAST ×3 refused \(.+\)", lines[mixed]), lines[mixed]
    assert lines[mixed].endswith(f"→ WooCommerce order #{woo_id}")
    assert re.search(r"LOG-UNKNOWN ×1 refused \(.+\)", lines[refused]) and "no WooCommerce order" in lines[refused]
