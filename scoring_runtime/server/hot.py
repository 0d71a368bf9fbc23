"""The scoring routes' fast lane: `POST /score` and `POST /v2/models/{name}[/versions/{v}]/infer`
without the generic ASGI stack around them.

Why: for a cheap model the server's own per-request cost is dominated by layers every request
crosses: Starlette's error middleware, our three middlewares (metrics, telemetry, served-by), the
exception middleware, the router's regex match, the endpoint wrapper and the response object's
send. Profiled under load they cost about as much as the whole HTTP stack beneath them. `HotPath`
does what those layers do for these two routes in one function: the same endpoint code
(`ScoringServer.score` / `infer`, so every check and error is the same), the same metrics, the
same response headers, the same error handlers (looked up by exception type as Starlette does).

Everything else goes through the full stack, and so do the scoring routes whenever a layer is
present that the lane does not reproduce: telemetry on (a span per request), or any middleware
added to the app besides the three above (`HotPath.applies`), so a new middleware is never skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from scoring_runtime.server.logs import event
from scoring_runtime.server.metrics import Metrics
from scoring_runtime.telemetry import setup as telemetry_setup

log = logging.getLogger("scoring_runtime.server")
Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]

SCORE = "/score"
INFER = "/v2/models/{name}/infer"
INFER_VERSION = "/v2/models/{name}/versions/{version}/infer"


class _RouteName:
    """What `scope["route"]` holds for the metrics (the route template), as Starlette's Route would."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class HotPath:
    """Serves the scoring routes directly; `match` says whether a request is one of them."""

    def __init__(
        self,
        score: Endpoint,
        infer: Endpoint,
        handlers: Mapping[Any, Handler],
        metrics: Metrics,
        extra_headers: list[tuple[bytes, bytes]],
        access_log: bool,
    ) -> None:
        self.score = score
        self.infer = infer
        self.handlers = dict(handlers)
        self.metrics = metrics
        self.extra_headers = extra_headers
        self.access_log = access_log
        self.enabled = True
        self._routes = {t: _RouteName(t) for t in (SCORE, INFER, INFER_VERSION)}
        self._in_flight = metrics.in_flight
        self._ok = {t: metrics.labelled(metrics.requests, t, "POST", "200") for t in self._routes}
        self._latency = {t: metrics.labelled(metrics.latency, t) for t in self._routes}

    def match(self, scope: Scope) -> tuple[str, dict[str, str]] | None:
        """(route template, path parameters) for a scoring request the lane serves, else None."""
        if not self.enabled or scope["method"] != "POST" or telemetry_setup.active() is not None:
            return None
        path: str = scope["path"]
        if path == SCORE:
            return SCORE, {}
        if not (path.startswith("/v2/models/") and path.endswith("/infer")):
            return None
        # Starlette's "{name}" matches one path segment: [^/]+
        parts = path[len("/v2/models/"):-len("/infer")].split("/")
        if len(parts) == 1 and parts[0]:
            return INFER, {"name": parts[0]}
        if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
            return INFER_VERSION, {"name": parts[0], "version": parts[2]}
        return None

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:  # the most specific registered class, as Starlette looks them up
            if cls in self.handlers:
                return self.handlers[cls]
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route: str, params: dict[str, str]) -> None:
        start = time.perf_counter()
        scope["route"] = self._routes[route]
        scope["path_params"] = params
        request = Request(scope, receive)
        endpoint = self.score if route == SCORE else self.infer
        status = 500
        crash: Exception | None = None
        self._in_flight.inc()
        try:
            try:
                response = await endpoint(request)
            except Exception as exc:
                handler = self._handler(exc)
                if handler is None:
                    raise
                response = await handler(request, exc)
                if Exception in self.handlers and handler is self.handlers[Exception]:
                    crash = exc  # Starlette re-raises after answering, so the server logs the traceback
            status = response.status_code
            await send({"type": "http.response.start", "status": status,
                        "headers": [*response.raw_headers, *self.extra_headers]})
            await send({"type": "http.response.body", "body": response.body})
        finally:
            elapsed = time.perf_counter() - start
            self._in_flight.dec()
            if status == 200:
                self._ok[route].inc()
            else:
                self.metrics.labelled(self.metrics.requests, route, "POST", str(status)).inc()
            self._latency[route].observe(elapsed)
            if self.access_log:
                event(log, logging.INFO, "request", method="POST", path=scope["path"], status=status,
                      duration_ms=round(elapsed * 1000, 3))
        if crash is not None:
            raise crash
