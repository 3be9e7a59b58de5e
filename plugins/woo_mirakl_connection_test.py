"""Registers :class:`~include.woo_mirakl.connection_test_fix.ConnectionTestPortFix` on Airflow's API server."""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.woo_mirakl.connection_test_fix import ConnectionTestPortFix


class WooMiraklConnectionTestPlugin(AirflowPlugin):
    """The connection list's Test button for connections without a port (until Airflow fixes it)."""

    name = "woo_mirakl_connection_test"
    fastapi_root_middlewares = [{"middleware": ConnectionTestPortFix, "name": "connection test without a port"}]
