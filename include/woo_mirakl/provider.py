"""Provider metadata: registers the "Mirakl", "WooCommerce" and Slack-alerts connection types with Airflow.

Custom connection types can only come from a provider's ``apache_airflow_provider``
entry point (declared in pyproject.toml), never from a plugin. The form fields are
declarative (``conn-fields`` / ``ui-field-behaviour``), as Airflow 3.2+ expects.
"""
from __future__ import annotations

from typing import Any

PACKAGE_NAME = "woo-mirakl"
VERSION = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": PACKAGE_NAME,
        "name": "WooCommerce <-> Mirakl",
        "description": "Connections and hooks for the Mirakl seller API and the WooCommerce REST API.",
        "versions": [VERSION],
        "connection-types": [
            {
                "connection-type": "mirakl",
                "hook-class-name": "include.woo_mirakl.hooks.MiraklHook",
                "hook-name": "Mirakl",
                "conn-fields": {
                    "shop_id": {
                        "label": "Shop ID",
                        "description": "Only for API keys that give access to several shops.",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                    "auth_mode": {
                        "label": "Authentication",
                        "description": "api_key: the shop API key is the password. oauth_authorization_code: "
                        "connect with 'Connect to Mirakl' on the operations page (login = client id, password = "
                        "client secret). oauth_client_credentials: client id and secret issued by Mirakl.",
                        "schema": {"type": "string", "enum": ["api_key", "oauth_authorization_code",
                                                              "oauth_client_credentials"], "default": "api_key"},
                    },
                    "token_url": {
                        "label": "OAuth token URL",
                        "description": "Mirakl's authentication system; empty for https://auth.mirakl.net/oauth/token.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "refresh_token": {
                        "label": "OAuth refresh token",
                        "description": "Written by 'Connect to Mirakl'; leave it as it is.",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "authorize_url": {
                        "label": "OAuth authorize URL",
                        "description": "Where sellers sign in and consent; empty for https://auth.mirakl.net/oauth/authorize.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {"host": "Mirakl hostname", "password": "API key or OAuth client secret",
                                   "login": "OAuth client id (empty for an API key)"},
                    "placeholders": {
                        "host": "acme-dev.mirakl.net (from your back-office URL)",
                        "password": "the shop API key (back-office: My user settings > API key)",
                        "shop_id": "2001",
                    },
                },
            },
            {
                "connection-type": "woocommerce",
                "hook-class-name": "include.woo_mirakl.hooks.WooCommerceHook",
                "hook-name": "WooCommerce",
                "conn-fields": {
                    "query_string_auth": {
                        "label": "Query-string authentication",
                        "description": "Send the keys as query parameters, for servers that strip the "
                        "Authorization header (they then appear in the store's access logs).",
                        "schema": {"type": "boolean", "default": False},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port"],
                    "relabeling": {"host": "Store URL", "login": "Consumer key", "password": "Consumer secret"},
                    "placeholders": {
                        "host": "https://shop.example.com",
                        "login": "ck_...",
                        "password": "cs_...",
                        "extra": '{"verify_ssl": true, "timeout": 60}',
                    },
                },
            },
            {
                "connection-type": "woo_mirakl_slack_webhook",
                "hook-class-name": "include.woo_mirakl.slack_webhook.SlackAlertsWebhookHook",
                "hook-name": "Slack incoming webhook (alerts)",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "host"],
                    "relabeling": {"password": "Webhook URL"},
                    "placeholders": {
                        "password": "https://hooks.slack.com/services/T.../B.../...",
                        "extra": '{"timeout": 5}',
                    },
                },
            },
        ],
    }
