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
  (no ASGI task, routing or body parsing; the body is discarded as it arrives), keep-alive kept;
- **fast refusal**: while the server says it is saturated (`FastRefusal.busy`), a request whose
  headers arrive whole in one read and is plainly framed (HTTP/1.1 POST, one `Content-Length`, no
  `Transfer-Encoding`, `Expect` or `Upgrade`, no `Connection` but keep-alive, nothing after its
  body) is read by two regular expressions instead of the parser and refused without any
  per-request object (the rest of its body, by its Content-Length, is discarded as it arrives);
  anything else goes through the parser and the admission above: framing is the parser's whenever
  in doubt. Overload refusals are held `refusal_delay_s` (reading paused) on one shared timer, not
  one timer per refusal.

Two savings on every request, behaviour unchanged: a response of known length goes out in one socket
write, head and body together (`_HeadWithBody`; uvicorn writes them separately), and the header and
body deadlines are attributes behind one lazily re-set loop timer per connection, not two timers made
and cancelled per request (`_arm`).

Refusals are written straight to the socket (a few hundred bytes, no ASGI task), with
`Connection: close`. The limits come from `configure()`, called once per process before serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
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
    #: how long an admission refusal (503) is held before it is sent: clients that retry at once are
    #: slowed to at most one refusal per connection per this delay, so refusing cannot eat the CPU
    #: the accepted requests need
    refusal_delay_s: float = 0.0


#: admission(method, raw target, Content-Length or -1) -> a complete HTTP response to send instead of
#: running the app; or a callback to call once the admitted request is answered (or its connection
#: lost): the request holds a place until then; or None
Admission = Callable[[bytes, bytes, int], "bytes | Callable[[], None] | None"]


@dataclass(frozen=True)
class FastRefusal:
    """The server's side of the fast refusal path: `busy()` says cheaply whether scoring requests are being
    refused now; `refuse(target, content_length)` returns the complete response refusing that POST (and
    counts it), or None to let it through the parser and admission. Neither may change anything else."""

    busy: Callable[[], bool]
    refuse: Callable[[bytes, int], bytes | None]


_limits = HttpLimits()
_on_refusal: Callable[[str], None] | None = None
_admission: Admission | None = None
_fast: FastRefusal | None = None


def configure(
    limits: HttpLimits, on_refusal: Callable[[str], None] | None = None, admission: Admission | None = None,
    fast: FastRefusal | None = None,
) -> None:
    """Set the limits of every connection opened from now on in this process, a metrics hook, admission and
    the fast refusal path."""
    global _limits, _on_refusal, _admission, _fast
    _limits = limits
    _on_refusal = on_refusal
    _admission = admission
    _fast = fast


#: a plainly framed request head: `POST <origin-form target> HTTP/1.1`, then header lines `token:value` with no
#: CR or LF inside (obs-fold, a bare CR or LF, a space before the colon: no match), then the empty line
_SIMPLE_HEAD = re.compile(rb"POST (/[!-~]*) HTTP/1\.1\r\n((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*)\r\n")
#: the header lines that matter for framing and connection handling; any but one Content-Length: not simple
_FRAMING = re.compile(rb"^(content-length|transfer-encoding|connection|expect|upgrade|te|trailer):[ \t]*"
                      rb"([^\r]*?)[ \t]*\r$", re.IGNORECASE | re.MULTILINE)


def simple_post(data: bytes, max_header_bytes: int, max_headers: int) -> tuple[bytes, int, int] | None:
    """(target, Content-Length, body bytes still to come) when `data` starts one plainly framed HTTP/1.1
    POST whose headers are all there: request line `POST <target> HTTP/1.1`, well-formed header lines
    (at most `max_headers`), exactly one Content-Length, no Transfer-Encoding, Expect, Upgrade, TE or
    Trailer, no Connection but keep-alive, and nothing after its body (which may still be on its way).
    None for anything else (the parser then reads it)."""
    if not data.startswith(b"POST /"):
        return None
    end = data.find(b"\r\n\r\n", 0, max_header_bytes)
    if end < 0:
        return None
    head = _SIMPLE_HEAD.fullmatch(data, 0, end + 4)
    if head is None:
        return None
    fields = head.group(2)
    if fields.count(b"\n") > max_headers:
        return None
    lengths = []
    for name, value in _FRAMING.findall(fields):
        name = name.lower()
        if name == b"content-length":
            lengths.append(value)
        elif name != b"connection" or value.lower() != b"keep-alive":  # keep-alive: HTTP/1.1's default anyway
            return None
    if len(lengths) != 1:
        return None
    value = lengths[0]
    if not value.isdigit() or len(value) > 15:
        return None
    missing = end + 4 + int(value) - len(data)
    return None if missing < 0 else (head.group(1), int(value), missing)


class _Tarpit:
    """Held refusals, answered in arrival order by one timer (all are held the same time): a refusal costs
    an append, not a timer of its own. Answers due within `slack` are sent together."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, slack: float = 0.002) -> None:
        self.loop, self.delay, self.slack = loop, delay, slack
        self.held: deque[tuple[float, GuardedHttpToolsProtocol, bytes]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def hold(self, proto: GuardedHttpToolsProtocol, response: bytes) -> None:
        due = self.loop.time() + self.delay
        self.held.append((due, proto, response))
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.timer = None
        limit = self.loop.time() + self.slack
        held = self.held
        while held and held[0][0] <= limit:
            _, proto, response = held.popleft()
            proto._release_held(response)
        if held:
            self.timer = self.loop.call_at(held[0][0], self._fire)


_tarpit: _Tarpit | None = None


def _tarpit_for(loop: asyncio.AbstractEventLoop, delay: float) -> _Tarpit:
    global _tarpit
    if _tarpit is None or _tarpit.loop is not loop or _tarpit.delay != delay:
        _tarpit = _Tarpit(loop, delay)
    return _tarpit


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


class _HeadWithBody:
    """The transport as one request's response cycle sees it: a response head of known length
    (`Content-Length`, not chunked) is held back until the first body bytes and written together with
    them, one socket write (one system call, one TCP segment) for a small response instead of two.

    uvicorn writes the head as soon as the app sends `http.response.start`; a JSON answer follows
    at once, so holding it costs nothing, and on loopback or a pod network each write is a system
    call that runs the TCP stack (the receiving side's too, on loopback). Anything else passes
    straight through: a `100 Continue` (written before the response starts), chunked responses (a
    stream must show its head at once), HEAD requests (no body follows: never wrapped). Closing
    writes a held head first, as uvicorn would have.
    """

    __slots__ = ("cycle", "head", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self.transport = transport
        # until the response starts; then dropped (no reference cycle left for the garbage collector)
        self.cycle: RequestResponseCycle | None = cycle
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.head is not None:
            data, self.head = self.head + data, None
        elif self.cycle is not None and self.cycle.response_started:  # the head: the first write once started
            known_length = self.cycle.chunked_encoding is False
            self.cycle = None
            if known_length:
                self.head = data
                return
        self.transport.write(data)

    def close(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.write(head)
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the refusal is already recorded."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the guards in the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _limits
        self._timer: asyncio.TimerHandle | None = None  # the loop timer behind the deadline (see _arm)
        self._timer_at = 0.0  # when it fires
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None  # what to do at the deadline; None: disarmed
        self._header_phase = True  # bytes now arriving belong to a request line or headers
        self._header_bytes = 0
        self._header_count = 0
        self._tail = b""
        self._refusal: tuple[int, str, str] | None = None
        self._releases: list[Callable[[], None]] = []  # admitted requests' places, oldest first
        self._discard = 0  # body bytes still to come of a request refused on the fast path

    # ------------------------------------------------------------------ timers
    # One deadline per connection (header or body), kept in attributes: arming and disarming, twice per
    # request, only set them. The loop timer behind them is made only when the deadline comes earlier than
    # the pending one; when it fires early (the deadline moved on meanwhile), it is set again for the new
    # one: about one timer per connection per header timeout instead of two timers made and cancelled per
    # request.
    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        deadline = self.loop.time() + seconds
        self._deadline, self._on_deadline = deadline, callback
        if self._timer is not None and deadline < self._timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._deadline_due)

    def _disarm(self) -> None:
        self._on_deadline = None

    def _cancel_timer(self) -> None:
        self._on_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline_due(self) -> None:
        self._timer = None
        callback = self._on_deadline
        if callback is None:
            return
        if self.loop.time() < self._deadline:  # re-armed since this timer was set
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._deadline_due)
            return
        self._on_deadline = None
        callback()

    def _header_timeout(self) -> None:
        if self.transport.is_closing():
            return
        if self._header_bytes == 0:
            self._count("idle_timeout")
            self.transport.close()  # never sent a byte: nothing to answer
            return
        self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout_s:g} s; "
                          "send the whole request line and headers at once", "header_timeout")

    def _body_timeout(self) -> None:
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
        self._cancel_timer()
        while self._releases:
            self._releases.pop(0)()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discard:  # the rest of a fast-refused request's body
            n = min(self._discard, len(data))
            self._discard -= n
            data = data[n:]
            if not data:
                return
        if (_fast is not None and self._header_bytes == 0 and self._header_phase and _fast.busy()
                and (self.cycle is None or self.cycle.response_complete) and not self.pipeline):
            simple = simple_post(data, self.limits.max_header_bytes, self.limits.max_headers)
            if simple is not None:
                target, length, missing = simple
                refusal = _fast.refuse(target, length)
                if refusal is not None:
                    self._discard = missing
                    self._refuse_fast(refusal)
                    return
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
        if self._on_deadline is None:  # a later request on a kept-alive connection: its own header deadline
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
        canned = (_admission(self.parser.get_method(), self.url, self._content_length())
                  if _admission is not None else None)
        previous = self.cycle
        if callable(canned):  # admitted, holding a place until answered
            self._releases.append(canned)
            canned = None
        if canned is None or (previous is not None and not previous.response_complete):
            super().on_headers_complete()  # (a pipelined request waits its turn: the app refuses it)
            cycle = self.cycle
            if cycle is not None and cycle is not previous and self.scope["method"] != "HEAD":
                cycle.transport = _HeadWithBody(self.transport, cycle)  # type: ignore[assignment]
            return
        self._answer_now(canned)

    def on_response_complete(self) -> None:
        if self._releases:
            self._releases.pop(0)()
        super().on_response_complete()

    def _refuse_fast(self, response: bytes) -> None:
        """Refuse a whole request that bypassed the parser (see `simple_post`); the connection stays open."""
        self._unset_keepalive_if_required()
        self._disarm()  # no header deadline while it waits: it has sent a whole request
        delay = self.limits.refusal_delay_s
        if delay > 0:
            self.flow.pause_reading()  # nothing more from this client until it has its answer
            _tarpit_for(self.loop, delay).hold(self, response)
        else:
            self._release_held(response)

    def _release_held(self, response: bytes) -> None:
        """Send a held fast refusal; then read again, with the keep-alive timeout armed as after any answer."""
        if self.transport.is_closing():
            return
        self.transport.write(response)
        self.flow.resume_reading()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

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
        delay = self.limits.refusal_delay_s
        if delay > 0:
            self.flow.pause_reading()  # nothing more from this client until it has its answer
            self.loop.call_later(delay, self._send_answer, response, keep_alive)
        else:
            self._send_answer(response, keep_alive)

    def _send_answer(self, response: bytes, keep_alive: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(response)
        if keep_alive:
            self.on_response_complete()  # resumes reading, arms the keep-alive timeout
        else:
            self.transport.close()

    def on_message_complete(self) -> None:
        self._disarm()
        self._header_phase = True
        self._header_bytes = 0
        self._tail = b""
        super().on_message_complete()

    def _content_length(self) -> int:
        for name, value in self.headers:
            if name == b"content-length":
                return int(value) if value.isdigit() else -1
        return -1

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return True
            if name == b"content-length" and value.strip() not in (b"", b"0"):
                return True
        return False
