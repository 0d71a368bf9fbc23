"""Shadow traffic: copies of a share of the scoring requests sent to another runtime, answers discarded.

A new model version can be judged on real traffic before it serves anyone: this runtime (the
stable one) copies `percent` of its scoring requests (`POST /score`, `POST /v2/models/{name}
[/versions/{v}]/infer`: same path, query, body and auth headers, plus `x-scoring-shadow: 1`) to
the shadow's base URL. The shadow's own metrics then tell how it did. Rules:

- a copy is sent only *after* the client's own answer went out, as a separate task: mirroring
  never delays or fails a client's request;
- at most `max_in_flight` copies are on their way at once (over a pool of keep-alive connections,
  see shadow_client.py); a copy beyond that is dropped, so a slow or dead shadow costs the stable
  runtime nothing but a counter;
- a request carrying `x-scoring-shadow` is never copied (no loops between runtimes);
- outcomes are counted in `scoring_shadow_requests_total{outcome="sent|failed|dropped"}` (sent: the
  shadow answered below 500; failed: no answer in time, a connection error, or a 5xx); failures are
  logged at most once a minute, with counts, never per request and never with bodies or headers.

Where the target comes from: `SCORING_SHADOW_URL`/`SCORING_SHADOW_PERCENT`, or, when
`SCORING_SHADOW_CONFIG_FILE` is set, a JSON file `{"url": ..., "percent": ...}` polled every few
seconds (a mounted ConfigMap: the operator starts and stops shadowing without restarting the pods;
a missing or empty file means no shadowing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scoring_runtime.server.logs import event
from scoring_runtime.server.metrics import Metrics
from scoring_runtime.server.shadow_client import ShadowClient
from scoring_runtime.settings import RuntimeSettings, shadow_url_problem

log = logging.getLogger("scoring_runtime.server")

SHADOW_HEADER = "x-scoring-shadow"
_SHADOW_HEADER_RAW = SHADOW_HEADER.encode()
#: the requests worth copying: scoring, nothing else (health, metadata and metrics are not traffic)
SCORING_PATH = re.compile(r"^/(?:score|v2/models/[^/]+(?:/versions/[^/]+)?/infer)$")
#: request headers a copy carries (auth included: the shadow checks keys like the stable runtime)
FORWARDED = frozenset({b"authorization", b"content-type", b"content-encoding", b"accept", b"x-request-id",
                       b"x-ms-client-request-id", b"traceparent", b"tracestate"})
CONFIG_POLL_S = 2.0
FAILURE_LOG_EVERY_S = 60.0


class ShadowConfigError(ValueError):
    """The shadow config file is not `{"url": "http(s)://...", "percent": 0-100}`."""


@dataclass(frozen=True)
class ShadowTarget:
    url: str  # base URL without a trailing slash
    percent: float


def parse_config(text: str) -> ShadowTarget | None:
    """The target a config file describes; None for an empty file, `{}` or percent 0."""
    if not text.strip():
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShadowConfigError(f"not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict):
        raise ShadowConfigError('expected a JSON object like {"url": "http://name-shadow.ns.svc:80", "percent": 10}')
    if not doc or doc.get("url") in (None, ""):
        return None
    url, percent = doc.get("url"), doc.get("percent", 100)
    if not isinstance(url, str) or (problem := shadow_url_problem(url)):
        raise ShadowConfigError(problem if isinstance(url, str) and problem else "url must be a string")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise ShadowConfigError(f"percent must be a number from 0 to 100, got {percent!r}")
    return ShadowTarget(url.rstrip("/"), float(percent)) if percent > 0 else None


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Mirror:
    """Sends the copies (see the module docstring); one per worker process."""

    def __init__(self, settings: RuntimeSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.max_in_flight = settings.shadow_max_in_flight
        self.config_file = settings.shadow_config_file
        self.target: ShadowTarget | None = None
        if self.config_file is None and settings.shadow_url and settings.shadow_percent > 0:
            self.target = ShadowTarget(settings.shadow_url, settings.shadow_percent)
        self.in_flight = 0
        self._counts = {o: metrics.shadow.labels(o) for o in ("sent", "failed", "dropped")}
        self._percent_gauge = metrics.shadow_percent
        self._percent_gauge.set(self.target.percent if self.target else 0)
        self._started = False
        self._ssl: ssl.SSLContext | None = None  # None: the system CAs
        self._client: ShadowClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._failed_since_log = 0
        self._last_error = ""
        self._next_failure_log = 0.0

    @property
    def configured(self) -> bool:
        """Shadowing may happen in this process (a URL or a config file is set)."""
        return self.config_file is not None or self.target is not None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if not self.configured:
            return
        if self.settings.shadow_ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=str(self.settings.shadow_ca_file))
        self._started = True
        if self.config_file is not None:
            self.reload_config()
            self._poller = asyncio.create_task(self._poll_config(), name="shadow-config")
        if self.target is not None:
            event(log, logging.INFO, "shadow_on", url=self.target.url, percent=self.target.percent)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            self._client = None
        self._started = False

    # ------------------------------------------------------------------ config file
    def reload_config(self) -> bool:
        """Re-read the config file if it changed; True when the target changed."""
        assert self.config_file is not None
        stamp = _file_stamp(self.config_file)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        old = self.target
        try:
            text = self.config_file.read_text(encoding="utf-8") if stamp is not None else ""
            self.target = parse_config(text)
        except (OSError, UnicodeDecodeError, ShadowConfigError) as e:
            # A broken file stops the copies (no load on a shadow nobody asked for) until it is fixed.
            self.target = None
            event(log, logging.ERROR, "shadow_config_invalid", file=str(self.config_file),
                  error=str(e), action="shadowing stopped until the file is fixed")
        if self.target != old:
            self._percent_gauge.set(self.target.percent if self.target else 0)
            if self.target is None:
                event(log, logging.INFO, "shadow_off", file=str(self.config_file))
            else:
                event(log, logging.INFO, "shadow_on", url=self.target.url, percent=self.target.percent,
                      file=str(self.config_file))
            return True
        return False

    async def _poll_config(self) -> None:
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            self.reload_config()

    # ------------------------------------------------------------------ copies
    def pick(self) -> ShadowTarget | None:
        """The target if this request is to be copied (sampled by percent), else None."""
        t = self.target
        if t is None or not self._started:
            return None
        if t.percent >= 100 or random.random() * 100 < t.percent:
            return t
        return None

    def submit(self, target: ShadowTarget, scope: Scope, body: bytes) -> None:
        """Send a copy of the request in `scope` with `body`, unless too many are on their way."""
        if self.in_flight >= self.max_in_flight:
            self._counts["dropped"].inc()
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k in FORWARDED]
        headers.append((SHADOW_HEADER, "1"))
        query = scope.get("query_string") or b""
        path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        client = self._client
        if client is None or client.base_url != target.url:
            if client is not None:
                client.retire()  # copies on their way to the old target finish there
            client = self._client = ShadowClient(target.url, self._ssl, limit=self.max_in_flight)
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(client, path, headers, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, client: ShadowClient, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        try:
            status = await client.post(path, headers, body, self.settings.shadow_timeout_s)  # the answer: discarded
            if status >= 500:
                self._failed(f"the shadow answered {status}")
            else:
                self._counts["sent"].inc()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # connection refused, TLS, timeout, a broken answer: all just counted
            self._failed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        finally:
            self.in_flight -= 1

    def _failed(self, error: str) -> None:
        self._counts["failed"].inc()
        self._failed_since_log += 1
        self._last_error = error
        now = time.monotonic()
        if now >= self._next_failure_log:
            self._next_failure_log = now + FAILURE_LOG_EVERY_S
            event(log, logging.WARNING, "shadow_requests_failing", failed=self._failed_since_log,
                  last_error=self._last_error[:300], target=self.target.url if self.target else None,
                  note=f"logged at most every {FAILURE_LOG_EVERY_S:g} s; see scoring_shadow_requests_total")
            self._failed_since_log = 0


class ShadowTraffic:
    """Pure ASGI middleware: picks scoring requests to copy, keeps their body, hands it over once answered."""

    def __init__(self, app: ASGIApp, mirror: Mirror, max_body_bytes: int) -> None:
        self.app = app
        self.mirror = mirror
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or self.mirror.target is None:
            await self.app(scope, receive, send)
            return
        if not SCORING_PATH.match(scope["path"]) or any(k == _SHADOW_HEADER_RAW for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        target = self.mirror.pick()
        if target is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        complete = False
        status = 0

        async def keep_body() -> Message:
            nonlocal size, complete
            message = await receive()
            if message["type"] == "http.request" and size <= self.max_body_bytes:
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                complete = not message.get("more_body", False)
            return message

        async def see_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, keep_body, see_status)
        # The client has its answer now. An overloaded stable runtime (503) passes nothing on.
        if complete and size <= self.max_body_bytes and status and status != 503:
            self.mirror.submit(target, scope, chunks[0] if len(chunks) == 1 else b"".join(chunks))
