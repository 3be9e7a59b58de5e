"""One log line per decided Mirakl order, so a task log says what happened to each order."""
from __future__ import annotations

from typing import Any


def decision_line(record: Any) -> str:
    """``Mirakl order X (accepted): SKU-1 ×2 accepted; SKU-2 ×1 refused (out of stock) → WooCommerce order #12``."""
    lines = "; ".join(
        f"{line.offer_sku or '(no SKU)'} ×{line.quantity if line.quantity is not None else '?'} "
        f"{line.decision or 'undecided'}" + (f" ({line.decision_reason})" if line.decision_reason else "")
        for line in record.lines
    ) or "no lines"
    if record.woo_order_id:
        woo = f"WooCommerce order #{record.woo_order_id}"
    elif record.decision == "refused":
        woo = "no WooCommerce order (all lines refused)"
    else:
        woo = "no WooCommerce order yet (the reservation is retried next run)"
    return f"Mirakl order {record.mirakl_order_id} ({record.decision or 'undecided'}): {lines} → {woo}"
