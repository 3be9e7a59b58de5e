"""
### Account: verify or disconnect a Mirakl marketplace

Triggered by hand, with a form.

**verify** checks in plain words: the Mirakl host resolves and answers, the API key is accepted,
the shop id matches the key's shop (A01: name, currency, state — A01 may run once a day, so a
second verify the same day shows the last stored answer and says so), and the WooCommerce store
answers, its keys can read and write, its version, whether SKUs are unique across products and
variations, and whether Shipment Tracking is installed. The result is kept in the ledger and
returned as the XCom `summary`; the run fails when a check fails.

**reconnect** runs the same checks and, when they pass, resumes the flows the disconnect paused
and asks the inventory flow for a full comparison first (ledger cursor `full_comparison_requested`).

**disconnect** (with `dry_run` on, the default) reports what would happen: how many offers the
policy touches, which flows would be paused, which orders are still in progress. With `dry_run`
off and the confirmation `Disconnect`, it pauses every other flow of the marketplace, applies the
offers policy — **keep** (nothing sent), **zero** (one STO01 stock file setting every offer to 0) or
**remove** (OF24 deletes) — waits for Mirakl to process it, and marks the marketplace disconnected
in the ledger. Every write is an idempotent ledger action: a re-run sends nothing twice. History
(orders, actions, reconciliation) is kept.
"""
from __future__ import annotations

from airflow.sdk import Param, get_current_context, task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags
from include.woo_mirakl.task_log import tell

# The form's choices; include.woo_mirakl.account validates the same values at run time.
FLOW = "mirakl_account"
ACTIONS = {
    "verify": "Verify the connection",
    "disconnect": "Disconnect the marketplace",
    "reconnect": "Reconnect (verify, then resume the paused flows)",
}
POLICIES = {
    "keep": "Keep the offers as they are",
    "zero": "Zero their stock (all offers of this shop to 0)",
    "remove": "Remove them from Mirakl (delete the offers)",
}

PARAMS = {
    "action": Param(
        "verify", type="string", enum=list(ACTIONS), values_display=ACTIONS, title="Action",
        description="verify: check both connections, change nothing. disconnect: stop the integration for this "
        "marketplace (a dry run first). reconnect: verify, then resume the flows a disconnect paused.",
    ),
    # Null allowed: the form would otherwise mark it required, and verify/reconnect do not use it.
    "offers_policy": Param(
        "keep", type=["null", "string"], enum=[*POLICIES, None],
        values_display={**POLICIES, None: "(not needed for verify or reconnect)"}, title="Offers on disconnect",
        description="Only for disconnect: what happens to this shop's offers on Mirakl.",
    ),
    "confirmation": Param(
        "", type=["null", "string"], maxLength=40, title="Confirmation",
        description="For a real disconnect (dry run off), type exactly: Disconnect",
    ),
    "dry_run": Param(True, type="boolean", title="Dry run",
                     description="Report what a disconnect would do without doing it."),
}


def _params() -> dict:
    return get_current_context()["params"]


def _skip_unless(*actions: str) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    if _params()["action"] not in actions:
        raise AirflowSkipException(f"action is {_params()['action']!r}, not {' or '.join(actions)}")


def _request():
    from include.woo_mirakl.account import RequestRefused, check_request
    from include.woo_mirakl.alerts import RefusedRequest

    p = _params()
    try:
        return check_request(p["action"], p["offers_policy"], p.get("confirmation"), p["dry_run"])
    except RequestRefused as refused:
        raise RefusedRequest(str(refused)) from None


def build(marketplace: Marketplace) -> None:
    @task(pool="mirakl_api")
    def verify_mirakl() -> list[dict]:
        """Host, key and shop (A01, within its once-a-day budget)."""
        from include.woo_mirakl import account
        from include.woo_mirakl.account import FAILED, Check, verify_mirakl as run_checks
        from include.woo_mirakl.hooks import TEST_RETRY, MiraklHook
        from include.woo_mirakl.ledger import get_ledger

        _skip_unless("verify", "reconnect")
        ledger = get_ledger()
        hook = MiraklHook(marketplace.mirakl_conn_id)
        try:
            if _params()["action"] == "reconnect":
                account.clear_not_connected(hook, ledger)
            client = hook.get_client(budget=hook.get_budget(ledger), retry=TEST_RETRY)
            scope = hook.budget_scope()
        except ValueError as error:
            return [Check("mirakl.connection", "Mirakl connection", FAILED, str(error)).as_dict()]
        return [c.as_dict() for c in run_checks(client, ledger=ledger, marketplace=marketplace.name,
                                                budget_scope=scope)]

    @task(pool="woocommerce_api")
    def verify_woocommerce() -> list[dict]:
        """Store, key permissions, version, SKU uniqueness, Shipment Tracking."""
        from include.woo_mirakl.account import FAILED, Check, verify_woocommerce as run_checks
        from include.woo_mirakl.hooks import TEST_RETRY, WooCommerceHook

        _skip_unless("verify", "reconnect")
        try:
            client = WooCommerceHook(marketplace.woocommerce_conn_id).get_client(retry=TEST_RETRY)
        except ValueError as error:
            return [Check("woo.connection", "WooCommerce connection", FAILED, str(error)).as_dict()]
        return [c.as_dict() for c in run_checks(client)]

    @task(pool="mirakl_api")
    def report_verification(mirakl: list[dict], woocommerce: list[dict]) -> dict:
        """Log the report, keep it in the ledger, fail the run when a check failed."""
        from datetime import datetime, timezone

        from airflow.sdk.exceptions import AirflowFailException

        from include.woo_mirakl.account import Check, VerifyReport, record_verification
        from include.woo_mirakl.ledger import get_ledger

        context = get_current_context()
        checks = [Check(**c) for c in [*mirakl, *woocommerce]]
        report = VerifyReport(marketplace.name, datetime.now(timezone.utc), checks)
        tell(report.render())
        record_verification(get_ledger(), report, context["run_id"])
        summary = report.summary()
        context["ti"].xcom_push(key="summary", value=summary)  # passed or not, under the README's key
        if not report.ok:
            raise AirflowFailException(
                "verification failed: " + "; ".join(f"{c.title}: {c.message}" for c in report.failures)
            )
        return summary

    @task(pool="mirakl_api")
    def plan_disconnect() -> dict:
        """Refuse without the confirmation; list offers (OF21), open orders and flows; freeze the plan."""
        from include.woo_mirakl import account
        from include.woo_mirakl.hooks import MiraklHook
        from include.woo_mirakl.ledger import get_ledger

        _skip_unless("disconnect")
        request = _request()
        ledger = get_ledger()
        listing = account.list_flows_to_pause(marketplace.name)
        # A re-run (after a later step failed) keeps the first run's plan: no offer listing, which a
        # revoked authorization could no longer make.
        plan = None if request.dry_run else account.stored_plan(ledger, marketplace.name, request.offers_policy)
        if plan is None:
            client = MiraklHook(marketplace.mirakl_conn_id).get_client()
            offers = [account.OfferRef.from_offer(o) for o in client.iter_offers()]
            plan = account.plan_disconnect(marketplace.name, request.offers_policy, offers,
                                           account.open_orders_from_ledger(ledger, marketplace.name),
                                           list(listing.flows))
        if not request.dry_run:
            plan = account.freeze_plan(ledger, plan)
            account.mark_disconnecting(ledger, marketplace.name, plan.policy)
        heading = "DRY RUN — nothing will be changed. A disconnect would:" if request.dry_run else "Disconnecting:"
        lines = [*plan.describe(),
                 *([f"Already paused, left as they are: {', '.join(listing.already_paused)}."]
                   if listing.already_paused else []),
                 *([f"WARNING: {listing.problem}"] if listing.problem else [])]
        tell("\n".join([heading, *(f"  - {line}" for line in lines)]))
        return {"dry_run": request.dry_run, "policy": plan.policy, "counts": plan.counts(),
                "flows": list(plan.flows), "flows_listed_via": listing.how, "can_pause": listing.can_pause,
                "already_paused": list(listing.already_paused),
                "open_orders": [o["order_id"] for o in plan.open_orders][:100], "plan": lines}

    @task(pool="mirakl_api")
    def disconnect(planned: dict) -> dict:
        """Pause the flows, apply the offers policy through ledger actions, mark the marketplace disconnected."""
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from include.woo_mirakl import account
        from include.woo_mirakl.hooks import MiraklHook
        from include.woo_mirakl.ledger import get_ledger

        request = _request()
        if request.dry_run:
            raise AirflowSkipException("dry run: nothing was changed (see plan_disconnect for what would happen)")
        ledger = get_ledger()
        plan = account.load_frozen_plan(ledger, marketplace.name, request.offers_policy)
        try:
            pauser = account.default_pauser()
            paused = account.pause_flows(pauser, marketplace.name)
        except Exception as error:
            raise AirflowFailException(
                f"could not pause the flows of {marketplace.name!r} ({type(error).__name__}: {error}). Add an "
                f"'{account.API_CONN_ID}' connection to the Airflow API server, or pause these DAGs by hand: "
                f"{', '.join(plan.flows) or 'none'}. The marketplace is marked 'disconnecting' in the ledger."
            ) from None
        account.record_paused(ledger, marketplace.name, paused, pauser.how)
        tell(f"paused via {pauser.how}: {', '.join(paused) or 'no other flow found'}")
        hook = MiraklHook(marketplace.mirakl_conn_id)
        # A one-off manual flow may wait for its call slots (STO01/OF24 once a minute, STO02 every 15 s).
        client = hook.get_client(budget=hook.get_budget(ledger, max_wait=65.0))
        outcome = account.apply_offers_policy(plan, client, ledger)
        state = account.mark_disconnected(ledger, marketplace.name, plan.policy)
        # Last, since the offers policy needed the token: an OAuth authorization is revoked and dropped.
        authorization = account.revoke_mirakl_authorization(hook, ledger, marketplace.name)
        summary = {**outcome.summary(), "paused": paused, "paused_via": pauser.how, "status": state["status"],
                   "authorization": authorization}
        tell(f"offers policy {plan.policy!r}: sent {len(outcome.sent)} request(s), "
             f"{len(outcome.already_done)} already sent by an earlier run; imports: {outcome.imports}")
        if outcome.failures:
            get_current_context()["ti"].xcom_push(key="summary", value=summary)
            raise AirflowFailException("disconnected, but Mirakl reported problems: " + "; ".join(outcome.failures))
        return summary

    @task(pool="mirakl_api")
    def reconnect(verified: dict) -> dict:
        """After a passing verification: resume the flows the disconnect paused, new connection generation."""
        from include.woo_mirakl import account
        from include.woo_mirakl.ledger import get_ledger

        _skip_unless("reconnect")
        pauser = account.default_pauser()
        state = account.reconnect(get_ledger(), marketplace.name, pauser)
        tell(state.get("note") or f"resumed via {pauser.how}: {', '.join(state['resumed_flows']) or 'no flow'}")
        return state

    reconnect(report_verification(verify_mirakl(), verify_woocommerce()))
    disconnect(plan_disconnect())


globals().update(
    marketplace_dags(FLOW, build, schedule=None, doc_md=__doc__, tags=["account", "manual"], params=PARAMS,
                    description="Manual, with a form: verify, disconnect or reconnect this marketplace")
)
