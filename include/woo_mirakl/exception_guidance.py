"""Each exception kind in plain words, with what to do about it (the operations page's Detail column)."""
from __future__ import annotations

import re
from typing import Any, Mapping

# kind -> (what happened, what to do); {key} and detail fields fill in, missing ones read "?".
GUIDANCE: dict[str, tuple[str, str]] = {
    "task_failure": ("A task of {flow} failed: {error}",
                     "Open the log (link), fix the cause, then clear the task in Airflow to run it again."),
    "stock_drift": ("Mirakl shows {mirakl_quantity} for SKU {sku}; WooCommerce stock says {expected_quantity}.",
                    "Usually the next stock push corrects it; if it stays, run the inventory flow with full=true."),
    "unmatched_sku_missing_in_mirakl": ("WooCommerce product {sku} has no Mirakl offer.",
                                        "Publish it (catalogue flow) or leave it out of the marketplace selection."),
    "unmatched_sku_missing_in_woocommerce": ("Mirakl offer {sku} has no WooCommerce product with this SKU.",
                                             "Fix the SKU in WooCommerce, or delete the offer in the Mirakl back-office."),
    "status_drift": ("Order {key}: Mirakl says {mirakl_state}, WooCommerce says {woo_status}.",
                     "Check the order in both back-offices and bring the late one up to date."),
    "woo_order_missing": ("Mirakl order {key} is {mirakl_state} but has no WooCommerce order.",
                          "Create it by hand in WooCommerce, or re-run the order ingest after fixing the cause."),
    "order_invalid": ("Mirakl sent order {key} with data we cannot use: {problems}.",
                      "Decide it by hand in the Mirakl back-office before its acceptance deadline."),
    "order_reservation_failed": ("WooCommerce refused the order that reserves stock for {key}: {error}.",
                                 "Fix the cause (product, stock, store settings), then create the order by hand."),
    "acceptance_deadline": ("Order {key} is still undecided close to its acceptance deadline.",
                            "Accept or refuse it now in the Mirakl back-office, or it is cancelled automatically."),
    "carrier_unmapped": ("Carrier {carrier} of order {key} has no Mirakl carrier code.",
                         "Add it to include/config/carriers.yaml; the shipment is confirmed on the next run."),
    "shipment_overdue": ("Order {key} is past its shipping deadline and not shipped.",
                         "Ship it (or cancel it) in WooCommerce; late shipments hurt the shop's Mirakl rating."),
    "tracking_failed": ("Mirakl refused the tracking of order {key}: {error}.", "Correct the tracking number or carrier in WooCommerce."),
    "refund_refused": ("Mirakl refused WooCommerce refund {key} (Mirakl order {order_id}): {error}.", "Refund it in the Mirakl back-office and note it on the WooCommerce order."),
    "refund_failed": ("WooCommerce refund {key} has not reached Mirakl yet: {message}.",
                      "It is tried again every cycle; if it stays, check the order in both back-offices."),
    "shipment_failed": ("The shipment of order {key} is not confirmed on Mirakl: {message}.",
                        "Retried every cycle unless Mirakl refused it; if it stays, ship it in the Mirakl back-office."),
    "order_totals_mismatch": ("Order {key}: the totals differ between Mirakl and WooCommerce.", "Compare both orders; correct the WooCommerce order if needed."),
    "transaction_suite_failed": ("Mirakl's transaction lines of {key} failed validation: no report for that day.",
                                 "Read the failed checks in the detail, ask Mirakl support if the data is wrong, then re-run the day."),
    "inventory_product_unreadable": ("WooCommerce product {woocommerce_id}'s variations could not be read: {error}.",
                                     "Its offers keep their last quantity; check the product in WooCommerce (deleted? "
                                     "permissions?). It is read again every cycle."),
    "inventory_import_unreadable": ("Mirakl {import} import {import_id} could not be followed: {error}.",
                                    "Nothing to do unless it repeats: its lines were sent again with today's values."),
    "catalogue_product_unreadable": ("WooCommerce product {woocommerce_id}'s variations could not be read: {error}.",
                                     "No offer is retired while it lasts; check the product in WooCommerce."),
    "catalogue_import_unreadable": ("Mirakl {import} import {import_id} could not be followed: {error}.",
                                    "Nothing to do unless it repeats: its offers were sent again."),
}
GENERIC = ("{kind_words} for {key}.", "Look at the detail below and at the flow's last run.")


class _Defaulting(dict):
    def __missing__(self, name: str) -> str:
        return "?"


def _flat(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_flat(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def sku_of(key: str) -> str:
    """The SKU in an exception key (``vs_woocommerce:SKU-7`` -> ``SKU-7``)."""
    return key.rsplit(":", 1)[-1]


def guidance(kind: str, key: str, detail: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"what": ..., "todo": ...}`` for one exception."""
    detail = dict(detail or {})
    fields = _Defaulting({k: _flat(v) for k, v in detail.items()})
    fields.update(key=key, sku=sku_of(key), kind_words=kind.replace("_", " ").capitalize())
    if "error" not in detail and "message" in detail:  # the flows record the reason as either
        fields["error"] = _flat(detail["message"])
    if kind == "task_failure":
        fields["flow"] = key.split("__")[0]
        match = re.search(r"^Error: (.+)$", str(detail.get("body", "")), re.M)
        fields["error"] = match.group(1) if match else "see the log"
    what, todo = GUIDANCE.get(kind, GENERIC)
    return {"what": what.format_map(fields), "todo": todo}


def task_log_path(key: str, detail: Mapping[str, Any] | None) -> str | None:
    """The Airflow UI path of a failed task instance (``/dags/<dag>/runs/<run>/tasks/<task>``)."""
    from urllib.parse import quote

    dag_id, _, task_id = key.partition(".")
    match = re.search(r"^Run: (\S+)$", str((detail or {}).get("body", "")), re.M)
    if not (dag_id and task_id and match):
        return None
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(match.group(1), safe='')}/tasks/{quote(task_id, safe='')}"
