"""The alerts' Slack incoming webhook as a connection type with a working Test button.

The Slack provider's ``slackwebhook`` hook cannot be tested (it has no ``test_connection``), and
a test must not post a message to the on-call channel. Slack answers a webhook request without
text with HTTP 400 ``no_text`` (``invalid_payload`` for a body it cannot read) before posting
anything, while an unknown, revoked or archived webhook gets 403/404/410: an empty request proves
the URL without a message.
"""
from __future__ import annotations

from typing import Any

from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

NOTHING_POSTED = ("no_text", "invalid_payload", "missing_text_or_fallback_or_attachments")


class SlackAlertsWebhookHook(SlackWebhookHook):
    """A Slack incoming webhook (URL in the password field) whose Test posts nothing."""

    conn_type = "woo_mirakl_slack_webhook"
    hook_name = "Slack incoming webhook (alerts)"
    default_conn_name = "slack_alerts"

    def __init__(self, slack_webhook_conn_id: str = default_conn_name, **kwargs: Any):
        super().__init__(slack_webhook_conn_id=slack_webhook_conn_id, **kwargs)

    def test_connection(self) -> tuple[bool, str]:
        try:
            answer = self.client.send_dict({})
        except Exception as error:  # the URL is the secret: name the error type, never the request
            return False, f"Cannot reach the Slack webhook: {type(error).__name__}."
        body = (answer.body or "").strip()
        if answer.status_code == 400 and body in NOTHING_POSTED or answer.status_code == 200:
            return True, "Slack accepted the webhook (a request without text, so nothing was posted)."
        return False, (f"Slack refused the webhook (HTTP {answer.status_code} {body}): check the URL in the "
                       "password field; a removed app or archived channel gives this too.")
