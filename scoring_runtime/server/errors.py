"""One handler per error type: every failure of a request becomes a JSON `{"error": ...}` answer.

Endpoints do not build error responses themselves: they raise. Each exception class is registered
with Starlette's exception handlers (as MLServer's REST layer does), and its handler picks the
status, the headers, the metrics reason and the log level:

| exception                         | status | reason (scoring_errors_total)          |
|-----------------------------------|--------|----------------------------------------|
| `ApiError` subclasses (below)     | its own| its own                                |
| `BadRequest` (flavours, parsing)  | 400/413/415/431 | bad_request, too_large, ...   |
| `ClientDisconnect`                | 499    | client_disconnect (debug log only)     |
| `QueueFull`                       | 503 + Retry-After | overloaded                  |
| `BatcherClosed`                   | 503 + Retry-After | shutting_down               |
| `HTTPException` (routing)         | 404/405| (counted by the request metrics)       |
| `ScoringFailed` (model crashed)   | 500    | internal (logged with the traceback)   |
| anything else                     | 500    | (logged by the outermost handler)      |

Messages are rendered by `http.error`, which bounds their size and never fails on odd text.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from scoring_runtime.batching import BatcherClosed
from scoring_runtime.flavours.errors import BadRequest
from scoring_runtime.server.dispatch import QueueFull
from scoring_runtime.server.http import error
from scoring_runtime.server.metrics import Metrics

log = logging.getLogger("scoring_runtime.server")

Handler = Callable[[Request, Exception], Awaitable[Response]]
#: BadRequest status -> scoring_errors_total reason
_BAD_REQUEST_REASONS = {413: "too_large", 415: "unsupported_media_type", 431: "headers_too_large"}


class ApiError(Exception):
    """An answer decided by the server before (or instead of) scoring: status, reason and headers."""

    status = 500
    reason = "internal"

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class Unauthorized(ApiError):
    status = 401
    reason = "unauthorized"


class NotFound(ApiError):
    """An unknown model or version (unknown routes are Starlette's HTTPException 404)."""

    status = 404
    reason = "not_found"


class NotReady(ApiError):
    """The model is loading, warming up or failed to load."""

    status = 503
    reason = "not_ready"


class ScoringFailed(Exception):
    """An unexpected exception while parsing, scoring or rendering (a bug or a broken model): a 500."""

    def __init__(self, protocol: str, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.protocol = protocol
        self.cause = cause


class ErrorHandlers:
    """The exception handlers of the app; `mapping()` is what `Starlette(exception_handlers=...)` takes."""

    def __init__(self, metrics: Metrics, retry_after_s: float) -> None:
        self.metrics = metrics
        self.retry_after_s = retry_after_s

    def mapping(self) -> dict[Any, Handler]:
        return {
            ApiError: self.api_error,
            BadRequest: self.bad_request,
            ClientDisconnect: self.client_disconnect,
            QueueFull: self.queue_full,
            BatcherClosed: self.batcher_closed,
            HTTPException: self.http_exception,
            ScoringFailed: self.scoring_failed,
            Exception: self.crash,
        }

    def _count(self, reason: str) -> None:
        self.metrics.errors.labels(reason).inc()

    async def api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        self._count(exc.reason)
        return error(exc.status, str(exc), exc.headers)

    async def bad_request(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        self._count(_BAD_REQUEST_REASONS.get(exc.status, "bad_request"))
        headers = {"Connection": "close"} if exc.status in (413, 431) else None
        return error(exc.status, str(exc), headers)

    async def client_disconnect(self, request: Request, exc: Exception) -> Response:
        # the client hung up mid-upload: nothing is wrong here and nobody reads the answer; 499
        # (nginx's "client closed request") keeps it apart from real errors in the metrics
        self._count("client_disconnect")
        log.debug("client_disconnect", extra={"fields": {"path": request.url.path}})
        return error(499, "the client closed the connection before sending the whole request")

    async def queue_full(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QueueFull)
        self._count("overloaded")
        retry = exc.retry_after_s if exc.retry_after_s is not None else self.retry_after_s
        return error(503, f"{exc}; retry after {retry:g} s", {"Retry-After": str(max(0, round(retry)))})

    async def batcher_closed(self, request: Request, exc: Exception) -> Response:
        self._count("shutting_down")
        return error(503, str(exc), {"Retry-After": "1"})

    async def http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            return error(404, f"no endpoint at {request.url.path}; see docs/runtime.md for the endpoints "
                              "(/score, /v2/models/{name}/infer, /v2/health/ready, /metrics ...)")
        if exc.status_code == 405:
            allowed = headers.get("Allow", "")
            return error(405, f"method {request.method} is not allowed on {request.url.path}; use {allowed}", headers)
        return error(exc.status_code, str(exc.detail), headers)

    async def scoring_failed(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ScoringFailed)
        self._count("internal")
        log.error("predict_failed", extra={"fields": {"protocol": exc.protocol, "error": str(exc)[:2000]}},
                  exc_info=exc.cause)
        return error(500, "internal error while scoring; the details are in the server log")

    async def crash(self, request: Request, exc: Exception) -> Response:
        # Starlette's outermost middleware calls this and then re-raises, so uvicorn logs the traceback too
        self._count("internal")
        log.error("unhandled_error", extra={"fields": {"path": request.url.path}}, exc_info=exc)
        return error(500, "internal server error; the details are in the server log")
