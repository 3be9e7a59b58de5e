"""Run the sandbox servers: ``python -m include.sandbox --mirakl-port 8081 --woo-port 8082 --auth-port 8083``."""
from __future__ import annotations

import argparse
import signal
import threading

from include.sandbox.core import Sandbox


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated Mirakl and WooCommerce APIs on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mirakl-port", type=int, default=8081)
    parser.add_argument("--woo-port", type=int, default=8082)
    parser.add_argument("--auth-port", type=int, default=8083, help="Mirakl's authentication system (OAuth 2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--scenario", default=None, help="scenario to load at start (e.g. demo)")
    parser.add_argument("--state-file", default=None, help="JSON file the state is kept in across restarts")
    parser.add_argument("--validate-requests", action="store_true", help="check Mirakl requests against the spec")
    parser.add_argument("--alert-sinks", action="store_true",
                        help="also the local SMTP (:8025) and Slack webhook (:8026) stand-ins airflow_settings.yaml uses")
    args = parser.parse_args(argv)
    sinks = []
    if args.alert_sinks:
        from include.sandbox.sinks import MailSink, SlackSink

        sinks = [MailSink(port=8025), SlackSink(token_path="/services/local-demo", port=8026)]

    sandbox = Sandbox(seed=args.seed, state_file=args.state_file, validate_requests=args.validate_requests)
    if args.scenario:
        from include.sandbox.scenarios import apply_scenario

        apply_scenario(sandbox, args.scenario)
    sandbox.start(args.mirakl_port, args.woo_port, args.host, auth_port=args.auth_port)
    print(f"sandbox: Mirakl on {sandbox.mirakl_url}  WooCommerce on {sandbox.woo_url}  "
          f"Mirakl authentication on {sandbox.auth_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    sandbox.stop()
    for sink in sinks:
        sink.stop()


if __name__ == "__main__":
    main()
