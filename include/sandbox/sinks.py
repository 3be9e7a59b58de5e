"""Stand-ins for the alert channels: an SMTP server and a Slack incoming webhook on loopback.

Both keep what they receive, so tests can assert on it and ``make demo`` can show it.
"""
from __future__ import annotations

import json
import warnings

# smtpd is deprecated (removed in Python 3.12) but is the stdlib's only SMTP server; the
# project runs on 3.11, and a real SMTP conversation is what the alert tests need.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="smtpd|asyncore")


class MailSink:
    """An SMTP server on loopback (stdlib smtpd) that keeps every message it receives."""

    def __init__(self, port: int = 0) -> None:
        import asyncore
        import smtpd
        import threading

        sink = self
        self.messages: list = []

        class _Server(smtpd.SMTPServer):
            def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
                import email
                from email import policy

                sink.messages.append(email.message_from_bytes(data, policy=policy.default))

        self._map: dict = {}
        self._server = _Server(("127.0.0.1", port), None, map=self._map, decode_data=False)
        self.port = self._server.socket.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._loop, args=(asyncore,), daemon=True)
        self._thread.start()

    def _loop(self, asyncore) -> None:
        while self._running:
            asyncore.loop(timeout=0.05, count=1, map=self._map)

    def bodies(self) -> list[str]:
        return [m.get_body(preferencelist=("html", "plain")).get_content() for m in self.messages]

    def stop(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self._server.close()


class SlackSink:
    """An HTTP server on loopback standing in for a Slack incoming webhook; keeps every JSON payload."""

    def __init__(self, token_path: str = "/services/T0SANDBOX/B0SANDBOX/xoxb-sandbox-webhook-secret",
                 port: int = 0) -> None:
        import http.server
        import threading

        sink = self
        self.token_path = token_path
        self.payloads: list[dict] = []

        class _Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = 404, b"no_service"
                if self.path == sink.token_path:
                    try:
                        payload = json.loads(body)
                    except ValueError:
                        payload = None
                    # As Slack: nothing is posted without a text (or blocks/attachments).
                    if not isinstance(payload, dict):
                        status, answer = 400, b"invalid_payload"
                    elif not any(payload.get(k) for k in ("text", "blocks", "attachments")):
                        status, answer = 400, b"no_text"
                    else:
                        status, answer = 200, b"ok"
                        sink.payloads.append(payload)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{token_path}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def texts(self) -> list[str]:
        return [p.get("text", "") for p in self.payloads]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
