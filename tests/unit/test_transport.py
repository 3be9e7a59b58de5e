"""The transport rule of the Mirakl and WooCommerce connections: TLS, verified, except to this machine."""
from __future__ import annotations

import pytest

from include.woo_mirakl.hooks import check_transport


@pytest.mark.parametrize("url", ["http://127.0.0.1:8081", "http://127.9.9.9", "http://localhost:8082/shop",
                                 "http://[::1]:8081", "http://api.localhost"])
def test_loopback_may_be_plain_or_unverified(url):
    check_transport("mirakl_sandbox", url, verify=True)
    check_transport("mirakl_sandbox", url, verify=False)


def test_https_with_a_verified_certificate_passes():
    check_transport("mirakl_prod", "https://acme.mirakl.net", verify=True)


@pytest.mark.parametrize(("url", "verify", "words"), [
    ("http://acme.mirakl.net", True, "uses plain http:// to acme.mirakl.net"),
    ("http://10.0.0.5:8081", True, "uses plain http:// to 10.0.0.5"),
    ("http://127.0.0.1.attacker.example", True, "uses plain http:// to 127.0.0.1.attacker.example"),
    ("https://shop.example.com", False, "has verify_ssl false for shop.example.com"),
])
def test_plain_or_unverified_to_another_host_is_refused_naming_the_connection(url, verify, words):
    with pytest.raises(ValueError) as refused:
        check_transport("woocommerce_default", url, verify=verify)
    assert str(refused.value).startswith(f"connection 'woocommerce_default' {words}")


def test_the_message_carries_no_credentials_from_the_url():
    with pytest.raises(ValueError) as refused:
        check_transport("woocommerce_default", "http://ck_user:cs_secret@shop.example.com/?consumer_secret=cs_x",
                        verify=True)
    assert "cs_secret" not in str(refused.value) and "cs_x" not in str(refused.value)


def test_a_named_host_is_allowed_with_a_warning(caplog):
    check_transport("mirakl_sandbox", "http://sandbox:8081", verify=True, allowed=["Sandbox"])
    assert "allowed by WOO_MIRAKL_PLAIN_HTTP_HOSTS" in caplog.text
    with pytest.raises(ValueError):
        check_transport("mirakl_sandbox", "http://other:8081", verify=True, allowed=["sandbox"])
