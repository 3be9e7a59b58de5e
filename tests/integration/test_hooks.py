"""The Mirakl and WooCommerce connection types: the real `airflow connections test` CLI, and the
hooks' test_connection messages, against a sandbox started in this test process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from include.sandbox.core import Sandbox

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
MIRAKL_KEY, WOO_KEY, WOO_SECRET = "sandbox-mirakl-key", "ck_sandbox", "cs_sandbox"
WRONG_MIRAKL_KEY, WRONG_WOO_SECRET = "wrong-mirakl-key-91c4", "cs_wrong_secret_77ab"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(seed=3).start()
    yield sb
    sb.stop()


def mirakl_conn(sandbox: Sandbox, key: str = MIRAKL_KEY, **extra: Any) -> str:
    return json.dumps({"conn_type": "mirakl", "host": sandbox.mirakl_url, "password": key,
                       "extra": {"shop_id": "2001", **extra}})


def woo_conn(sandbox: Sandbox, secret: str = WOO_SECRET) -> str:
    return json.dumps({"conn_type": "woocommerce", "host": sandbox.woo_url, "login": WOO_KEY, "password": secret})


def cli_test(conn_id: str, conn_env: dict[str, str], home: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__CORE__TEST_CONNECTION="Enabled", AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=str(ROOT), **conn_env,
    )
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([AIRFLOW, "connections", "test", conn_id], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_airflow_connections_test_cli(sandbox: Sandbox, tmp_path: Path) -> None:
    # Airflow's CLI takes seconds to start: run the four cases side by side.
    runs = {
        "mirakl ok": cli_test("mirakl_sandbox", {"AIRFLOW_CONN_MIRAKL_SANDBOX": mirakl_conn(sandbox)},
                              tmp_path / "a"),
        "mirakl bad key": cli_test(
            "mirakl_sandbox", {"AIRFLOW_CONN_MIRAKL_SANDBOX": mirakl_conn(sandbox, WRONG_MIRAKL_KEY)}, tmp_path / "b"),
        "woo ok": cli_test("woocommerce_default", {"AIRFLOW_CONN_WOOCOMMERCE_DEFAULT": woo_conn(sandbox)},
                           tmp_path / "c"),
        "woo bad secret": cli_test(
            "woocommerce_default", {"AIRFLOW_CONN_WOOCOMMERCE_DEFAULT": woo_conn(sandbox, WRONG_WOO_SECRET)},
            tmp_path / "d"),
    }
    results = {name: (proc.wait(timeout=240), proc.stdout.read()) for name, proc in runs.items()}

    for name in ("mirakl ok", "woo ok"):
        code, output = results[name]
        assert code == 0 and "Connection success!" in output, (name, output)
    code, output = results["mirakl bad key"]
    assert code == 1 and "rejected the API key (HTTP 401)" in output, output
    code, output = results["woo bad secret"]
    assert code == 1 and "Consumer secret is invalid." in output, output
    for code, output in results.values():
        for secret in (MIRAKL_KEY, WRONG_MIRAKL_KEY, WOO_SECRET, WRONG_WOO_SECRET):
            assert secret not in output
    assert sandbox.log.count("mirakl", "A01") >= 2 and sandbox.log.count("woo", "woo.system_status") >= 2


# The hooks in-process: the messages the UI's Test button shows ---------------------------------------
@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.setenv("AIRFLOW_CONN_WOO_MIRAKL_LEDGER", json.dumps(
        {"conn_type": "generic", "extra": {"sqlalchemy_url": f"sqlite:///{tmp_path / 'ledger.db'}"}}))
    return monkeypatch


def test_mirakl_test_connection_reports_the_shop_then_spares_a01(sandbox: Sandbox, env: pytest.MonkeyPatch) -> None:
    from include.woo_mirakl.hooks import MiraklHook

    env.setenv("AIRFLOW_CONN_MIRAKL_SANDBOX", mirakl_conn(sandbox))
    hook = MiraklHook("mirakl_sandbox")
    a01 = sandbox.log.count("mirakl", "A01")
    ok, message = hook.test_connection()
    assert ok, message
    assert "'Sandbox Shop' (id 2001)" in message and "currency EUR" in message and "state OPEN" in message

    # A01 is allowed once a day: the second test proves the key with OF21 instead
    ok, message = hook.test_connection()
    assert ok and "via OF21" in message and "once a day" in message, message
    assert sandbox.log.count("mirakl", "A01") == a01 + 1


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        (lambda sb: mirakl_conn(sb, WRONG_MIRAKL_KEY), "rejected the API key (HTTP 401)"),
        (lambda sb: json.dumps({"conn_type": "mirakl", "host": sb.mirakl_url, "password": MIRAKL_KEY,
                                "extra": {"shop_id": 9999}}), "refused access to shop 9999"),
        (lambda sb: json.dumps({"conn_type": "mirakl", "host": "no-such-instance.invalid",
                                "password": MIRAKL_KEY}), "does not resolve"),
        (lambda sb: json.dumps({"conn_type": "mirakl", "host": f"http://127.0.0.1:{_closed_port()}",
                                "password": MIRAKL_KEY}), "connection was refused"),
        (lambda sb: json.dumps({"conn_type": "mirakl", "host": sb.woo_url, "password": MIRAKL_KEY}),
         "has no Mirakl seller API"),
        (lambda sb: json.dumps({"conn_type": "mirakl", "host": sb.mirakl_url, "password": MIRAKL_KEY,
                                "extra": {"shop_id": "abc"}}), "shop_id must be a number"),
    ],
    ids=["bad key", "shop id mismatch", "unknown host", "refused", "not mirakl", "bad shop id"],
)
def test_mirakl_test_connection_failures_are_clear(
    sandbox: Sandbox, env: pytest.MonkeyPatch, conn: Any, expected: str
) -> None:
    from include.woo_mirakl.hooks import MiraklHook

    env.delenv("AIRFLOW_CONN_WOO_MIRAKL_LEDGER")  # no ledger: A01 is called without a budget
    env.setenv("AIRFLOW_CONN_MIRAKL_X", conn(sandbox))
    ok, message = MiraklHook("mirakl_x").test_connection()
    assert not ok and expected in message, message
    assert WRONG_MIRAKL_KEY not in message and MIRAKL_KEY not in message


def test_woocommerce_test_connection(sandbox: Sandbox, env: pytest.MonkeyPatch) -> None:
    from include.woo_mirakl.hooks import WooCommerceHook

    env.setenv("AIRFLOW_CONN_WOOCOMMERCE_DEFAULT", woo_conn(sandbox))
    ok, message = WooCommerceHook().test_connection()
    assert ok and "WooCommerce 9.8.0" in message, message

    env.setenv("AIRFLOW_CONN_WOOCOMMERCE_DEFAULT", woo_conn(sandbox, WRONG_WOO_SECRET))
    ok, message = WooCommerceHook().test_connection()
    assert not ok and "rejected the API keys (HTTP 401" in message and WRONG_WOO_SECRET not in message


def test_hooks_build_clients_from_connection_extras(sandbox: Sandbox, env: pytest.MonkeyPatch) -> None:
    from include.woo_mirakl.hooks import MiraklHook, WooCommerceHook

    env.setenv("AIRFLOW_CONN_MIRAKL_SANDBOX", mirakl_conn(sandbox, timeout=5, retry_base_delay=0.05))
    client = MiraklHook("mirakl_sandbox").get_client()
    assert (client.shop_id, client.retry.timeout, client.retry.base_delay) == (2001, 5.0, 0.05)
    assert MiraklHook("mirakl_sandbox").budget_scope() == f"mirakl:{sandbox.mirakl_url}:shop=2001"

    env.setenv("AIRFLOW_CONN_WOOCOMMERCE_DEFAULT", json.dumps({
        "conn_type": "woocommerce", "host": sandbox.woo_url, "login": WOO_KEY, "password": WOO_SECRET,
        "extra": {"query_string_auth": "true", "timeout": "7"}}))
    woo = WooCommerceHook().get_client()
    assert woo.retry.timeout == 7.0 and woo.session.auth is None and woo.version() == (9, 8, 0)

    from airflow.sdk._shared.secrets_masker import redact  # what Airflow applies to every log line

    assert redact(f"key {MIRAKL_KEY} secret {WOO_SECRET}") == "key *** secret ***"


@pytest.mark.parametrize(("conn_type", "host", "extra", "words"), [
    ("mirakl", "http://acme.mirakl.net", {}, "uses plain http:// to acme.mirakl.net"),
    ("mirakl", "acme.mirakl.net", {"verify_ssl": "false"}, "has verify_ssl false for acme.mirakl.net"),
    ("mirakl", "acme.mirakl.net", {"auth_mode": "oauth_client_credentials", "token_url": "http://auth.example/token"},
     "uses plain http:// to auth.example"),
    ("woocommerce", "http://shop.example.com", {}, "uses plain http:// to shop.example.com"),
    ("woocommerce", "https://shop.example.com", {"verify_ssl": False}, "has verify_ssl false for shop.example.com"),
], ids=["mirakl http", "mirakl unverified", "mirakl oauth http", "woo http", "woo unverified"])
def test_a_connection_without_tls_to_another_host_is_refused_before_any_call(
    env: pytest.MonkeyPatch, conn_type: str, host: str, extra: dict, words: str
) -> None:
    from include.woo_mirakl.hooks import MiraklHook, WooCommerceHook

    env.setenv("AIRFLOW_CONN_SHOP_X", json.dumps({"conn_type": conn_type, "host": host, "login": WOO_KEY,
                                                  "password": WOO_SECRET, "extra": extra}))
    hook = MiraklHook("shop_x") if conn_type == "mirakl" else WooCommerceHook("shop_x")
    ok, message = hook.test_connection()  # the Test button and `airflow connections test`
    assert not ok and message.startswith(f"connection 'shop_x' {words}"), message
    with pytest.raises(ValueError, match="shop_x") as refused:  # every run: the flows build clients here
        hook.get_client()
    for secret in (WOO_KEY, WOO_SECRET):
        assert secret not in message and secret not in str(refused.value)


def test_a_host_named_in_the_plain_http_variable_is_allowed(env: pytest.MonkeyPatch) -> None:
    from include.woo_mirakl.hooks import WooCommerceHook

    env.setenv("AIRFLOW_CONN_SHOP_X", json.dumps({"conn_type": "woocommerce", "host": "http://sandbox:8082",
                                                  "login": WOO_KEY, "password": WOO_SECRET}))
    with pytest.raises(ValueError, match="plain http://"):
        WooCommerceHook("shop_x").get_client()
    env.setenv("WOO_MIRAKL_PLAIN_HTTP_HOSTS", "sandbox")
    assert WooCommerceHook("shop_x").get_client().base_url == "http://sandbox:8082"


def test_provider_declares_its_connection_types() -> None:
    from include.woo_mirakl.provider import get_provider_info

    info = get_provider_info()
    types = {t["connection-type"]: t for t in info["connection-types"]}
    assert info["package-name"] == "woo-mirakl" and set(types) == {"mirakl", "woocommerce", "woo_mirakl_slack_webhook"}
    assert types["mirakl"]["hook-class-name"] == "include.woo_mirakl.hooks.MiraklHook"
    relabeling = types["mirakl"]["ui-field-behaviour"]["relabeling"]
    assert relabeling["host"] == "Mirakl hostname" and "API key" in relabeling["password"]
    assert {"shop_id", "auth_mode", "token_url", "authorize_url", "refresh_token"} <= set(types["mirakl"]["conn-fields"])
    assert types["mirakl"]["conn-fields"]["refresh_token"]["schema"]["format"] == "password"  # masked in the UI
    assert types["woocommerce"]["ui-field-behaviour"]["relabeling"]["login"] == "Consumer key"
    assert "query_string_auth" in types["woocommerce"]["conn-fields"]
    assert types["woo_mirakl_slack_webhook"]["hook-class-name"] == "include.woo_mirakl.slack_webhook.SlackAlertsWebhookHook"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
