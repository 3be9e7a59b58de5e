"""The required action of one order that needs a person: Airflow's human-in-the-loop operator.

:class:`OrderReviewOperator` is a :class:`~airflow.providers.standard.operators.hitl.HITLOperator`
whose options are fixed (accept every line, refuse every line, apply the line choices, leave it to
Mirakl) so they survive the task's resume, while the body and the per-line fields are built when it
runs, from the ledger. Its response timeout ends :func:`~include.woo_mirakl.human_review.decision_due`
before Mirakl's acceptance deadline; Airflow then answers with the marketplace's timeout default
(Airflow 3.3: the scheduler's awaiting-input sweep). Whatever the answer, it is recorded in the
ledger with who gave it, and the order ingest takes it from there.
"""
from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.definitions.param import ParamsDict

# human_review (and the Mirakl models under it) is imported by the methods: the DAG file only
# maps this operator, which builds no instance, and parsing must not pay for those modules.


class OrderReviewOperator(HITLOperator):
    """Ask a person to accept or refuse a Mirakl order, line by line, before its deadline."""

    def __init__(self, *, marketplace: str, order_id: str, timeout_default: str = "refuse", **kwargs: Any):
        from include.woo_mirakl import human_review as hr

        self.marketplace = marketplace
        self.order_id = order_id
        # the wait is bounded by response_timeout (set when it runs), never by the flows' execution_timeout
        kwargs["execution_timeout"] = None
        super().__init__(
            subject=f"Mirakl order {order_id}",
            options=list(hr.OPTION_LABELS.values()),
            defaults=[hr.OPTION_LABELS[hr.TIMEOUT_OPTION[timeout_default]]],
            multiple=False,
            **kwargs,
        )

    def execute(self, context: Any) -> Any:
        from include.woo_mirakl import human_review as hr
        from include.woo_mirakl.config import get_marketplace
        from include.woo_mirakl.ledger import get_ledger

        marketplace = get_marketplace(self.marketplace)
        ledger = get_ledger()
        record = ledger.get_order(self.marketplace, self.order_id)
        now = hr.mirakl_now(ledger, self.marketplace)
        due = hr.decision_due(record, marketplace) if record else None
        if record is None or due is None or due <= now or hr.review_state(record) != hr.PENDING:
            # nothing to ask any more (or no time left): the default applies now, recorded as such
            option = hr.TIMEOUT_OPTION[marketplace.human_review.timeout_default]
            return hr.record_decision(ledger, marketplace, self.order_id, option, None,
                                      "timeout default (no time left to ask)", timed_out=True, now=now)
        self.subject, self.body, params = hr.review_form(record, marketplace)
        self.params = ParamsDict({name: _param(spec) for name, spec in params.items()})
        self.response_timeout = due - now
        # called by HITLOperator once the required action exists, just before the task waits
        self.notifiers = [lambda ctx: self._notify(ctx, ledger, marketplace, record)]
        return super().execute(context)

    def _notify(self, context: Any, ledger: Any, marketplace: Any, record: Any) -> None:
        from airflow.configuration import conf

        from include.woo_mirakl import human_review as hr
        from include.woo_mirakl.alerts import send_alert

        ti = context["task_instance"]
        link = hr.required_action_link(conf.get("api", "base_url", fallback=None), ti.dag_id, ti.run_id,
                                       ti.task_id, ti.map_index)
        hr.notify_required_action(ledger, marketplace, record, link,
                                  lambda subject, body: send_alert(subject, body, context))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from include.woo_mirakl import human_review as hr
        from include.woo_mirakl.config import get_marketplace
        from include.woo_mirakl.ledger import get_ledger

        response = super().execute_complete(context, event)
        label = response["chosen_options"][0]
        option = next(key for key, text in hr.OPTION_LABELS.items() if text == label)
        user = response.get("responded_by_user") or {}
        timed_out = bool(event.get("timedout")) or not user
        by = (user.get("name") or user.get("id")) if user else "timeout default (no answer in time)"
        return hr.record_decision(get_ledger(), get_marketplace(self.marketplace), self.order_id, option,
                                  dict(response.get("params_input") or {}), str(by), timed_out=timed_out)


def _param(spec: dict[str, Any]) -> Any:
    from airflow.sdk import Param

    spec = dict(spec)
    return Param(spec.pop("value"), **spec)
