"""Plain words for the reconciliation's metric and finding names, for people (files keep the names)."""
from __future__ import annotations

FINDINGS = {
    "transaction_amount_invalid": "Mirakl line with an unreadable amount",
    "order_missing_in_woocommerce": "Paid on Mirakl, missing in WooCommerce",
    "order_missing_in_mirakl": "Shipped in WooCommerce, missing on Mirakl",
    "commission_off_rate": "Commission not at the agreed rate",
    "refund_missing_in_mirakl": "Refunded in WooCommerce only",
    "refund_missing_in_woocommerce": "Refunded on Mirakl only",
    "refund_amount_mismatch": "Refunded for a different amount",
    "payout_mismatch": "Payout differs from its lines",
}
METRICS = {
    "date": "Day", "currency": "Currency", "transaction_lines": "Mirakl transaction lines", "orders": "Orders",
    "sales": "Sales (items and shipping)", "order_amount": "Items sold", "shipping_amount": "Shipping charged",
    "commissions": "Commissions (with tax)", "commission_fee": "Commission", "commission_tax": "Tax on commission",
    "refunds": "Refunds", "other_fees": "Other fees", "net_amount": "Net of the day", "payouts": "Payouts",
    "payout_expected": "Payout expected", "payout_paid": "Payout paid", "findings": "Findings",
    **{f"findings_{kind}": f"Findings: {label}" for kind, label in FINDINGS.items()},
}


def label(name: str) -> str:
    """``findings_refund_missing_in_woocommerce`` -> ``Findings: Refunded on Mirakl only``."""
    return METRICS.get(name) or FINDINGS.get(name) or name.replace("_", " ").capitalize()
