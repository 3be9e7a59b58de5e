"""Alerts: task failures and data-quality digests reach e-mail and Slack.

E-mail goes through the SMTP provider's notifier and Slack through the Slack provider's
webhook notifier, each only when its connection exists, so a store without Slack still
gets e-mail. Sending fails soft: a broken or missing mail server is logged and never fails
the task that alerts. Provider imports happen inside the functions, never at DAG-parse time.
"""
from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException

log = logging.getLogger(__name__)

SMTP_CONN_ID = "smtp_alerts"
SLACK_CONN_ID = "slack_alerts"
EMAIL_VARIABLE = "woo_mirakl_alert_email"
TASK_FAILURE = "task_failure"


class RefusedRequest(AirflowFailException):
    """The user's own mistake in a trigger form (e.g. a mistyped confirmation): the run fails with
    the message for the user, without retries, and nothing reaches on-call."""


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


def redact(text: str) -> str:
    """`text` with every secret Airflow knows of (connection passwords, masked values) hidden."""
    from airflow.sdk.log import redact as airflow_redact

    return str(airflow_redact(text))


@dataclass(frozen=True)
class Delivery:
    """Which channels were configured and which delivered one alert."""

    email: bool | None  # None: channel not configured
    slack: bool | None

    @property
    def delivered(self) -> bool:
        return bool(self.email or self.slack)


def send_email(subject: str, body: str, context: dict[str, Any] | None = None) -> bool | None:
    """E-mail `body` (plain text, sent as <pre>) to the alert address; None when not configured."""
    recipient = _alert_email()
    if not recipient or not _connection_exists(SMTP_CONN_ID):
        return None
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    try:
        SmtpNotifier(
            to=recipient, subject=redact(subject), html_content=f"<pre>{html.escape(redact(body))}</pre>",
            smtp_conn_id=SMTP_CONN_ID,
        ).notify(context or {})
    except Exception as exc:  # alerting must never break the task that alerts
        log.warning("alert e-mail via %s not sent: %s: %s", SMTP_CONN_ID, type(exc).__name__, redact(str(exc)))
        return False
    return True


def send_slack(text: str, context: dict[str, Any] | None = None) -> bool | None:
    """Post `text` to the Slack incoming webhook; None when not configured."""
    if not _connection_exists(SLACK_CONN_ID):
        return None
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    try:
        SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN_ID, text=redact(text)).notify(context or {})
    except Exception as exc:  # the webhook URL is the secret: never log the request, only the error type
        log.warning("Slack alert via %s not sent: %s: %s", SLACK_CONN_ID, type(exc).__name__, redact(str(exc)))
        return False
    return True


def send_alert(subject: str, body: str, context: dict[str, Any] | None = None) -> Delivery:
    """One alert on every configured channel: e-mail (subject + body) and Slack (bold subject, body as code)."""
    return Delivery(
        email=send_email(subject, body, context),
        slack=send_slack(f"*{subject}*\n```{body}```", context),
    )


def failure_message(context: dict[str, Any], marketplace: str) -> tuple[str, str]:
    """Subject and body of a task-failure alert: DAG, task, marketplace, error, log link."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    error = context.get("exception")
    try:
        log_url = getattr(ti, "log_url", None) or ""
    except Exception:  # log_url reads [api] base_url; a missing setting must not lose the alert
        log_url = ""
    subject = f"[woo-mirakl] {dag_id}.{task_id} failed ({marketplace})"
    body = (
        f"DAG: {dag_id}\nTask: {task_id}\nMarketplace: {marketplace}\n"
        f"Run: {getattr(context.get('dag_run'), 'run_id', None) or getattr(ti, 'run_id', '?')}\n"
        f"Try: {getattr(ti, 'try_number', '?')}\n"
        f"Error: {type(error).__name__ if error else 'unknown'}: {error}\n"
        f"Log: {log_url}\n"
    )
    return redact(subject), redact(body)


def _due_again(record: Any) -> bool:
    from include.woo_mirakl.digest import DigestPolicy

    try:
        policy = DigestPolicy.from_variables()
    except ValueError:  # a malformed quiet period must not swallow failure alerts
        log.warning("ignoring the malformed alert quiet period; alerting")
        return True
    # Acknowledged or not: a task that fails again after the quiet period alerts again.
    return record.notified_at is None or datetime.now(timezone.utc) - record.notified_at >= policy.quiet_period


class FailureAlert(BaseNotifier):
    """Task-failure callback for every flow: ledger exception, then e-mail and Slack."""

    template_fields = ()

    def __init__(self, marketplace: str):
        super().__init__()
        self.marketplace = marketplace

    def notify(self, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), RefusedRequest):
            log.info("refused request, not an incident: no exception recorded, nobody alerted")
            return
        subject, body = failure_message(context, self.marketplace)
        ti = context.get("ti")
        key = f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}"
        ledger = record = None
        try:
            from include.woo_mirakl.ledger import get_ledger

            ledger = get_ledger()
            record = ledger.raise_exception(
                TASK_FAILURE, key, {"subject": subject, "body": body}, marketplace=self.marketplace
            )
        except Exception:  # alerting must go on even when the ledger is what failed
            log.exception("could not record the task failure in the ledger")
        if record is not None and not record.newly_opened and not _due_again(record):
            # The same task keeps failing: one alert per quiet period, the ledger counts the rest.
            log.info("task failure %s already alerted (seen %d times); not alerting again yet", key, record.count)
            return
        delivery = send_alert(subject, body, context)
        if ledger is not None and record is not None and delivery.delivered:
            try:  # so the next data-quality digest does not repeat this alert
                ledger.mark_exceptions_notified([record.id])
            except Exception:
                log.exception("could not mark the task-failure alert as sent")
        CriticalAlert(self.marketplace).notify(context)  # what the task raised before failing


class CriticalAlert(BaseNotifier):
    """End-of-task callback for every flow: critical exceptions alert at once, not at the next digest.

    Whichever flow raised them (a deadline close, an order without its WooCommerce order, a refund
    refused), the task that raised them alerts when it ends; each opening alerts once.
    """

    template_fields = ()

    def __init__(self, marketplace: str):
        super().__init__()
        self.marketplace = marketplace

    def notify(self, context: dict[str, Any]) -> None:
        try:
            from include.woo_mirakl.digest import alert_critical_now
            from include.woo_mirakl.ledger import get_ledger

            alert_critical_now(get_ledger(), self.marketplace, context=context)
        except Exception as exc:  # alerting must never break (or retry) the task that alerts
            log.warning("critical exceptions of %s not alerted: %s: %s", self.marketplace, type(exc).__name__,
                        redact(str(exc)))


def failure_callbacks(marketplace: str) -> list[BaseNotifier]:
    return [FailureAlert(marketplace)]


def success_callbacks(marketplace: str) -> list[BaseNotifier]:
    return [CriticalAlert(marketplace)]
