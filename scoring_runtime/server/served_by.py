"""Response headers naming who answered: the pod (host name) and the model version it serves.

Why: behind a Service, a client (and an end-to-end test) can tell which pod and which model
version produced an answer, e.g. to see a rollout switch versions with no failed request.
"""

from __future__ import annotations

import socket

from starlette.types import ASGIApp, Message, Receive, Scope, Send

POD_HEADER = "x-scoring-pod"
MODEL_HEADER = "x-model-name"
VERSION_HEADER = "x-model-version"


def served_by_headers(model: str, version: str, host: str | None = None) -> list[tuple[bytes, bytes]]:
    """The raw headers: the pod (host name), the model and its version."""
    return [
        (POD_HEADER.encode(), (host or socket.gethostname()).encode()),
        (MODEL_HEADER.encode(), model.encode()),
        (VERSION_HEADER.encode(), version.encode()),
    ]


class ServedBy:
    """Pure ASGI middleware adding the pod, model and version headers to every HTTP response."""

    def __init__(self, app: ASGIApp, model: str, version: str, host: str | None = None) -> None:
        self.app = app
        self.headers = served_by_headers(model, version, host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)
