"""Makes the connection list's Test button work for connections without a port (Airflow 3.3.2).

The UI's list row posts ``port: Number(connection.port)``, so a connection with no port is
tested with ``port: 0``; the API then sees another destination than the stored one and answers
400 "The host or port to test differs from the stored connection" (fixed upstream in
apache/airflow#73298, not in 3.3.2). No destination addresses port 0, so this ASGI middleware
drops ``port: 0`` from the test request before Airflow reads it. Delete it once Airflow ships the fix.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

TEST_PATH = "/api/v2/connections/test"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def without_port_zero(body: bytes) -> bytes:
    """The request body with a ``"port": 0`` removed; anything else unchanged."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or data.get("port") != 0 or isinstance(data.get("port"), bool):
        return body
    del data["port"]
    return json.dumps(data).encode()


class ConnectionTestPortFix:
    """ASGI middleware: rewrites only ``POST /api/v2/connections/test``, passes everything else through."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") != TEST_PATH:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = without_port_zero(b"".join(chunks))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app({**scope, "headers": headers}, replay, send)
