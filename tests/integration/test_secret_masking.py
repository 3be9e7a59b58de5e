"""No "Skipping masking for a secret as it's too short" warnings (issue 17, item 11).

Airflow's Task SDK registers every value of a connection's extras and every Variable it reads with
the secrets masker, and warns for each string shorter than five characters before it even looks
at whether the key is sensitive. The project's own settings must not hand it such a string (it was
``shop_id: "2001"`` on every Mirakl call, and the quiet-period Variable ``"240"``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WARNING = "too short"


@pytest.fixture()
def masker_warnings():
    from airflow.sdk._shared.secrets_masker import secrets_masker

    logger = logging.getLogger(secrets_masker.__name__)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger.addHandler(handler)
    secrets_masker.SecretsMasker._has_warned_short_secret = False  # it warns once per process
    yield records
    logger.removeHandler(handler)


def _sdk_connection(conn: dict):
    from airflow.sdk import Connection

    return Connection(conn_id=conn["conn_id"], conn_type=conn["type"], host=conn["host"], login=conn["login"],
                      password=conn["password"], port=conn["port"], extra=conn["extra"])


def test_the_local_settings_give_the_masker_no_short_value(masker_warnings, monkeypatch):
    from airflow.sdk.log import mask_secret

    from include.woo_mirakl.settings_loader import parse_settings

    monkeypatch.setenv("WOO_MIRAKL_HOME", str(ROOT))
    settings = parse_settings((ROOT / "airflow_settings.yaml").read_text())
    for conn in settings.connections:
        extra = _sdk_connection(conn).extra_dejson  # what every hook reads, and the SDK masks
        assert extra is not None
    for variable in settings.variables:  # as Variable.get() does
        mask_secret(variable["value"], variable["key"])
    assert [r.getMessage() for r in masker_warnings if WARNING in r.getMessage()] == []
    mirakl = next(c for c in settings.connections if c["type"] == "mirakl")
    assert json.loads(mirakl["extra"])["shop_id"] == 2001  # still read as the shop id


def test_the_probe_sees_a_short_string_extra(masker_warnings):
    # The check above can fail: a string shop id is exactly what used to warn.
    conn = {"conn_id": "m", "type": "mirakl", "host": "h", "login": None, "password": "long-enough-key",
            "port": None, "extra": json.dumps({"shop_id": "2001"})}
    _sdk_connection(conn).extra_dejson
    assert any(WARNING in r.getMessage() for r in masker_warnings)


def test_an_integer_shop_id_still_reaches_the_client(monkeypatch):
    from include.woo_mirakl.hooks import MiraklHook

    monkeypatch.setenv("AIRFLOW_CONN_MIRAKL_INT", json.dumps(
        {"conn_type": "mirakl", "host": "https://acme.mirakl.net", "password": "k" * 12, "extra": {"shop_id": 2001}}))
    assert MiraklHook("mirakl_int").budget_scope().endswith("shop=2001")
