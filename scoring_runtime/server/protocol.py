"""HTTP/1.1 connection guards below the ASGI app: header size and count, header and body timeouts.

uvicorn's httptools protocol has no limit on header size (httptools buffers a header of any length
before it reports it) and no timeout for a request that is still arriving: a client that sends
headers a byte at a time ("slowloris") or never finishes its body holds a connection forever, and a
64 MiB header is parsed in full. `GuardedHttpToolsProtocol` adds, per connection:

- **header bytes**: the request line plus headers may take at most `max_header_bytes`; the check
  runs on the raw bytes *before* they reach the parser, so an oversized header costs nothing → 431;
- **header count**: at most `max_headers` header fields → 431;
- **header timeout**: the request line and headers must arrive within `header_timeout_s` of the
  connection opening (or of the first byte of a later request on a kept-alive connection); else
  408 (or a silent close when nothing was sent) and the connection is closed;
- **body timeout**: a request body must arrive within `body_timeout_s` of its headers; else 408,
  the app sees the client as gone (499 in the metrics) and the connection is closed;
- **admission**: once the headers are in, the server may answer at once without running the app
  (a 503 when the model's queue is full): the canned response is written straight to the socket
  (no ASGI task, routing or body parsing; the body is discarded as it arrives), keep-alive kept.

Refusals are written straight to the socket (a few hundred bytes, no ASGI task), with
`Connection: close`. The limits come from `configure()`, called once per process before serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger("scoring_runtime.server")

_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0


#: admission(method, raw target) -> a complete HTTP response to send instead of running the app, or None
Admission = Callable[[bytes, bytes], bytes | None]
_limits = HttpLimits()
_on_refusal: Callable[[str], None] | None = None
_admission: Admission | None = None


def configure(
    limits: HttpLimits, on_refusal: Callable[[str], None] | None = None, admission: Admission | None = None
) -> None:
    """Set the limits of every connection opened from now on in this process, a metrics hook, and admission."""
    global _limits, _on_refusal, _admission
    _limits = limits
    _on_refusal = on_refusal
    _admission = admission


def response_bytes(status: int, message: str, headers: dict[str, str] | None = None, close: bool = False) -> bytes:
    """A complete HTTP/1.1 response with the body `{"error": message}`."""
    body = orjson.dumps({"error": message})
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "content-type: application/json",
             f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def refusal_bytes(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection: `{"error": message}`."""
    return response_bytes(status, message, close=True)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the refusal is already recorded."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the guards in the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _limits
        self._timer: asyncio.TimerHandle | None = None
        self._header_phase = True  # bytes now arriving belong to a request line or headers
        self._header_bytes = 0
        self._header_count = 0
        self._tail = b""
        self._refusal: tuple[int, str, str] | None = None

    # ------------------------------------------------------------------ timers
    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes == 0:
            self._count("idle_timeout")
            self.transport.close()  # never sent a byte: nothing to answer
            return
        self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout_s:g} s; "
                          "send the whole request line and headers at once", "header_timeout")

    def _body_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(refusal_bytes(
                408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s of its headers"))
        self._count("body_timeout")
        if cycle is not None:
            cycle.disconnected = True  # the app's receive() now returns http.disconnect (a 499)
            cycle.message_event.set()
        self.transport.close()

    # ------------------------------------------------------------------ refusals
    def _count(self, reason: str) -> None:
        if _on_refusal is not None:
            _on_refusal(reason)
        log.debug("connection_refused", extra={"fields": {"reason": reason}})

    def _refuse(self, status: int, message: str, reason: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._count(reason)
            self.transport.write(refusal_bytes(status, message))
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this when the parser fails; a failure we caused in a callback is our refusal
        if self._refusal is not None:
            self._refuse(*self._refusal)
            return
        self._refuse(400, "invalid HTTP request", "bad_http")

    # ------------------------------------------------------------------ protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_phase:
            budget = self.limits.max_header_bytes - self._header_bytes
            # over budget: fine only if the headers end within it (the rest is body or a next request)
            if len(data) > budget and b"\r\n\r\n" not in self._tail + data[: max(budget, 0) + 4]:
                self._refuse(431, f"the request line and headers exceed {self.limits.max_header_bytes} bytes; "
                                  "send fewer or smaller headers", "headers_too_large")
                return
            self._header_bytes += len(data)
            self._tail = data[-3:]
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._timer is None:  # a later request on a kept-alive connection: its own header deadline
            self._arm(self.limits.header_timeout_s, self._header_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (431, f"the request has more than {self.limits.max_headers} header fields",
                             "headers_too_many")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._header_phase = False
        self._disarm()
        if self._has_body():
            self._arm(self.limits.body_timeout_s, self._body_timeout)
        canned = _admission(self.parser.get_method(), self.url) if _admission is not None else None
        previous = self.cycle
        if canned is None or (previous is not None and not previous.response_complete):
            super().on_headers_complete()  # (a pipelined request waits its turn: the app refuses it)
            return
        self._answer_now(canned)

    def _answer_now(self, response: bytes) -> None:
        """Send `response` for the request whose headers just arrived, without running the app."""
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        self.scope["method"] = self.parser.get_method().decode("ascii", "replace")
        cycle = RequestResponseCycle(
            scope=self.scope, transport=self.transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=False, default_headers=[],
            message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.response_started = cycle.response_complete = True  # on_body now discards the body
        self.cycle = cycle
        self.transport.write(response)
        if keep_alive:
            self.on_response_complete()
        else:
            self.transport.close()

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_phase = True
        self._header_bytes = 0
        self._tail = b""
        super().on_message_complete()

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return True
            if name == b"content-length" and value.strip() not in (b"", b"0"):
                return True
        return False
