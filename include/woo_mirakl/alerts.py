"""Alerts: task failures reach the ledger's exceptions, e-mail and Slack.

E-mail goes through the SMTP provider's notifier and Slack through the Slack provider's
webhook notifier, each only when its connection exists, so a store without Slack still
gets e-mail. Provider imports happen inside :meth:`FailureAlert.notify`, never at
DAG-parse time.
"""
from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_alerts"
SLACK_CONN_ID = "slack_alerts"
EMAIL_VARIABLE = "woo_mirakl_alert_email"


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # the SDK raises its own not-found type, which moved between versions
        return False
    return True


def _alert_email() -> str | None:
    from airflow.sdk import Variable

    try:
        return Variable.get(EMAIL_VARIABLE)
    except Exception:  # a missing variable means no e-mail recipient configured
        return None


def failure_message(context: dict[str, Any], marketplace: str) -> tuple[str, str]:
    """Subject and body of a task-failure alert: DAG, task, marketplace, error, log link."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    error = context.get("exception")
    log_url = getattr(ti, "log_url", None) or ""
    subject = f"[woo-mirakl] {dag_id}.{task_id} failed ({marketplace})"
    body = (
        f"DAG: {dag_id}\nTask: {task_id}\nMarketplace: {marketplace}\n"
        f"Run: {getattr(context.get('dag_run'), 'run_id', '?')}\n"
        f"Error: {type(error).__name__ if error else 'unknown'}: {error}\n"
        f"Log: {log_url}\n"
    )
    return subject, body


class FailureAlert(BaseNotifier):
    """Task-failure callback for every flow: ledger exception, then e-mail and Slack."""

    template_fields = ()

    def __init__(self, marketplace: str):
        super().__init__()
        self.marketplace = marketplace

    def notify(self, context: dict[str, Any]) -> None:
        subject, body = failure_message(context, self.marketplace)
        ti = context.get("ti")
        key = f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}"
        try:
            from include.woo_mirakl.ledger import get_ledger

            get_ledger().raise_exception(
                "task_failure", key, {"subject": subject, "body": body}, marketplace=self.marketplace
            )
        except Exception:  # alerting must go on even when the ledger is what failed
            log.exception("could not record the task failure in the ledger")
        recipient = _alert_email()
        if recipient and _connection_exists(SMTP_CONN_ID):
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            SmtpNotifier(to=recipient, subject=subject, html_content=f"<pre>{body}</pre>",
                         smtp_conn_id=SMTP_CONN_ID).notify(context)
        if _connection_exists(SLACK_CONN_ID):
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN_ID, text=f"*{subject}*\n```{body}```").notify(context)


def failure_callbacks(marketplace: str) -> list[BaseNotifier]:
    return [FailureAlert(marketplace)]
