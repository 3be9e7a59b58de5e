"""The operations page's plain-language line for an exception fills in the reason the flow recorded."""
from include.woo_mirakl.exception_guidance import guidance


def test_a_reason_recorded_as_message_fills_the_error_of_the_line():
    line = guidance("refund_refused", "81", {"woo_refund_id": 81, "order_id": "M-9", "message": "Mirakl refused OR28: amount too high"})
    assert line["what"] == "Mirakl refused WooCommerce refund 81 (Mirakl order M-9): Mirakl refused OR28: amount too high."


def test_a_recorded_error_wins_over_the_message():
    line = guidance("tracking_failed", "M-1", {"error": "carrier unknown", "message": "other"})
    assert line["what"] == "Mirakl refused the tracking of order M-1: carrier unknown."


def test_a_field_nobody_recorded_reads_as_a_question_mark():
    assert guidance("tracking_failed", "M-2", {})["what"] == "Mirakl refused the tracking of order M-2: ?."
