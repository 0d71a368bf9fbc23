"""The ASGI app: routes, auth, limits, readiness and metrics around one loaded model.

Endpoints (see docs/runtime.md): `GET /`, `POST /score` (Azure ML style), the Open Inference
Protocol V2 (`/v2`, `/v2/health/*`, `/v2/models/{name}[/versions/{v}][/ready|/infer]`) and
`GET /metrics`. The model loads in the background after start-up, so liveness answers at once
while readiness (`/v2/health/ready`, `/`) stays 503 until the model is loaded *and* warmed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scoring_runtime import __version__, telemetry
from scoring_runtime.batching import BatcherClosed
from scoring_runtime.flavours import (
    BadRequest,
    ModelLoadError,
    Scorer,
    UnsupportedMediaType,
    batching_for,
    flavour_kind,
    load_scorer,
)
from scoring_runtime.flavours.base import Job, decode_json, media_type
from scoring_runtime.flavours.errors import describe
from scoring_runtime.flavours.v2 import V2Tensor, parse_request
from scoring_runtime.manifest import ModelManifest, load_manifest
from scoring_runtime.server import protocol
from scoring_runtime.server.auth import ApiKeyAuth
from scoring_runtime.server.dispatch import Dispatcher, QueueFull, make_dispatcher
from scoring_runtime.server.errors import ApiError, ErrorHandlers, NotFound, NotReady, ScoringFailed, Unauthorized
from scoring_runtime.server.hot import HotPath
from scoring_runtime.server.http import JSON, RequestTooLarge, read_body
from scoring_runtime.server.logs import event
from scoring_runtime.server.metrics import Metrics
from scoring_runtime.server.openapi import openapi_document
from scoring_runtime.server.served_by import ServedBy, served_by_headers
from scoring_runtime.server.shadow import Mirror, ShadowTraffic
from scoring_runtime.settings import RuntimeSettings

log = logging.getLogger("scoring_runtime.server")
#: with several workers: a directory where each ready worker leaves a file named after its pid
READY_DIR_ENV = "_SCORING_SERVE_READY_DIR"
Loader = Callable[[RuntimeSettings], Scorer]
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: bodies and results above these sizes are parsed/rendered in the pool even for `parse_in_thread = False`
INLINE_MAX_BODY_BYTES = 64 * 1024
INLINE_MAX_ROWS = 16
#: a V2 tensor's "shape": [d0, d1, ...] in a raw body (bounded: a shape has at most 8 small integers)
_SHAPE_RE = re.compile(rb'"shape"\s*:\s*\[([0-9,\s]{0,200})\]')
#: exceptions the error handlers map by type; anything else from the request path is a ScoringFailed (500)
_EXPECTED = (BadRequest, ApiError, QueueFull, BatcherClosed, ClientDisconnect, ScoringFailed)


class Phase(enum.StrEnum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


class RequestMetrics:
    """Pure ASGI middleware: request counts, latency and in-flight gauge (and the optional access log)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.labelled(self.metrics.requests, endpoint, method, str(status)).inc()
            self.metrics.labelled(self.metrics.latency, endpoint).observe(elapsed)
            if self.access_log:
                event(log, logging.INFO, "request", method=method, path=scope["path"], status=status,
                      duration_ms=round(elapsed * 1000, 3))


class ScoringApp(Starlette):
    """The Starlette app with the scoring routes' fast lane (server/hot.py) in front of its stack."""

    hot: HotPath | None = None
    #: the middlewares the fast lane reproduces; with any other one added, every request takes the stack
    hot_reproduces: frozenset[type] = frozenset()
    _hot_checked = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot
        if hot is not None and scope["type"] == "http":
            if not self._hot_checked:  # (middleware cannot be added once the app serves)
                self._hot_checked = True
                hot.enabled = all(m.cls in self.hot_reproduces for m in self.user_middleware)
            if (match := hot.match(scope)) is not None:
                scope["app"] = self
                await hot(scope, receive, send, *match)
                return
        await super().__call__(scope, receive, send)


class _Ticket:
    """One admitted scoring request's place, counted in `ScoringServer._admitted` until released."""

    __slots__ = ("released", "server")

    def __init__(self, server: ScoringServer) -> None:
        self.server = server
        self.released = False
        server._admitted += 1

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.server._admitted -= 1

    def __enter__(self) -> _Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ScoringServer:
    """One model behind HTTP. `build()` returns the Starlette app; state lives here."""

    def __init__(
        self,
        settings: RuntimeSettings,
        loader: Loader | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        try:
            self.manifest: ModelManifest = load_manifest(settings.model_dir)
        except (FileNotFoundError, ValueError) as e:
            raise ModelLoadError(f"cannot read the model manifest: {e}") from None
        self.flavour = flavour_kind(self.manifest)
        self.loader: Loader = loader or load_scorer
        self.on_fatal = on_fatal
        self.auth = ApiKeyAuth(settings.api_key_file) if settings.api_key_file else None
        self.metrics = Metrics()
        self.mirror = Mirror(settings, self.metrics)
        self.phase = Phase.LOADING
        self.failure: str | None = None
        self.scorer: Scorer | None = None
        self.dispatcher: Dispatcher | None = None
        self.executor: ThreadPoolExecutor | None = None
        self._openapi: tuple[Scorer | None, Response] | None = None
        self._admitted = 0  # scoring requests admitted whose job is not queued yet (see _Ticket)
        self._in_flight = 0  # scoring requests admitted by the connection guard, not answered yet
        self._canned: dict[str, bytes] = {}
        self._canned_busy: bytes | None = None
        self._overload_count = self.metrics.errors.labels("overloaded")
        self._capacity: int | None = None  # requests the queue and one running batch hold (batching only)
        self._large_admitted = 0
        self._large_lock: asyncio.Lock | None = None
        self._large_executor: ThreadPoolExecutor | None = None
        self.load_seconds: float | None = None
        self.warmup_seconds: float | None = None
        ready_dir = os.environ.get(READY_DIR_ENV)
        self.ready_dir = Path(ready_dir) if ready_dir and settings.workers > 1 else None

    # ------------------------------------------------------------------ lifecycle
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        # Per worker process (after the fork); exports only when APPLICATIONINSIGHTS_CONNECTION_STRING is set.
        telemetry.configure_telemetry(
            "scoring-runtime", service_version=__version__, prometheus_registry=self.metrics.registry,
            secret_files=[self.settings.api_key_file] if self.settings.api_key_file else [],
            resource_attributes={"scoring.model": self.manifest.name,
                                 "scoring.model_version": str(self.manifest.version)},
        )
        st = self.settings
        protocol.configure(
            protocol.HttpLimits(max_header_bytes=st.max_header_bytes, max_headers=st.max_headers,
                                header_timeout_s=st.header_timeout_s, body_timeout_s=st.body_timeout_s,
                                refusal_delay_s=st.overload_refusal_delay_ms / 1000),
            on_refusal=lambda reason: self.metrics.errors.labels(reason).inc(),
            admission=self._admission,
            fast=protocol.FastRefusal(busy=self._busy, refuse=self._refuse_fast),
        )
        self.executor = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="scoring")
        self._large_executor = ThreadPoolExecutor(1, thread_name_prefix="scoring-large")
        self._large_lock = asyncio.Lock()  # FIFO: large requests are scored in arrival order
        task = asyncio.create_task(self._load(), name="load-model")
        await self.mirror.start()
        try:
            yield
        finally:
            await self.mirror.stop()
            self.phase = Phase.STOPPING
            self.metrics.ready.set(0)
            if self.ready_dir is not None:
                (self.ready_dir / str(os.getpid())).unlink(missing_ok=True)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.dispatcher is not None:
                await self.dispatcher.stop()
            self.executor.shutdown(wait=False, cancel_futures=True)
            self._large_executor.shutdown(wait=False, cancel_futures=True)
            self.metrics.process_exit()
            telemetry.shutdown_telemetry()

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        m = self.manifest
        try:
            t0 = time.perf_counter()
            scorer = await loop.run_in_executor(self.executor, self.loader, self.settings)
            self.load_seconds = time.perf_counter() - t0
            self.metrics.load_seconds.set(self.load_seconds)
            event(log, logging.INFO, "model_loaded", model=m.name, version=m.version, flavour=self.flavour,
                  seconds=round(self.load_seconds, 3))
            self.phase = Phase.WARMING_UP
            t1 = time.perf_counter()
            if self.settings.warmup:
                await loop.run_in_executor(self.executor, scorer.warmup)
            self.warmup_seconds = time.perf_counter() - t1
            self.metrics.warmup_seconds.set(self.warmup_seconds)
            # What is alive now (libraries, the model) lives as long as the process: keep it out of every
            # later garbage collection, which would otherwise walk ~300k objects (a >100 ms pause on the
            # loop) whenever allocation-heavy traffic (a flood of refusals) triggers a full collection
            gc.collect()
            gc.freeze()
            dispatcher = make_dispatcher(scorer, self.settings, self.executor, self.metrics.registry)
            await dispatcher.start()
            if hasattr(dispatcher, "queued_rows"):
                batch = getattr(getattr(dispatcher, "config", None), "max_batch_rows", 0) or 0
                self._capacity = self.settings.max_queue_rows + int(batch)
            self.scorer, self.dispatcher = scorer, dispatcher
            self.phase = Phase.READY
            self.metrics.ready.set(1)
            if self.ready_dir is not None:
                (self.ready_dir / str(os.getpid())).touch()
            self.metrics.info.labels(m.name, str(m.version), self.flavour).set(1)
            event(log, logging.INFO, "model_ready", model=m.name, version=m.version,
                  warmup_seconds=round(self.warmup_seconds, 3),
                  max_batch_size=batching_for(scorer, self.settings).max_batch_size)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            known = isinstance(e, ModelLoadError)
            self.failure = str(e) if known else f"{type(e).__name__}: {e}"
            self.phase = Phase.FAILED
            log.error("model_load_failed", extra={"fields": {"model": m.name, "error": self.failure}},
                      exc_info=None if known else e)
            if self.on_fatal is not None:
                self.on_fatal(self.failure)

    # ------------------------------------------------------------------ guards (raise; see server/errors.py)
    def _deny(self, request: Request) -> None:
        if self.auth is None:
            return
        why = self.auth.check(request.headers.get("authorization"))
        if why is None:
            return
        if why == "missing":
            raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'",
                               {"WWW-Authenticate": 'Bearer realm="scoring"'})
        raise Unauthorized("invalid API key: send a current key as 'Authorization: Bearer <key>'",
                           {"WWW-Authenticate": 'Bearer realm="scoring", error="invalid_token"'})

    def _unknown_model(self, request: Request) -> None:
        name = request.path_params.get("name")
        version = request.path_params.get("version")
        if name != self.manifest.name:
            raise NotFound(f"model {describe(name)} not found; this server serves {self.manifest.name!r}")
        if version is not None and version != str(self.manifest.version):
            raise NotFound(f"model {describe(name)} has no version {describe(version)} here; it serves version "
                           f"{self.manifest.version}")

    def _not_ready(self) -> None:
        if self.phase is Phase.READY:
            return
        if self.phase is Phase.FAILED:
            raise NotReady(f"the model failed to load: {self.failure}")
        raise NotReady(f"the model is {self.phase.value.replace('_', ' ')}; retry when GET /v2/health/ready "
                       "answers 200", {"Retry-After": "1"})

    def _overloaded(self, content_length: int = -1) -> QueueFull | None:
        """Is the model's queue (or, for a large body, the large-request lane) already full? Checked
        before a body is read (each request counts at least one row)."""
        if self.phase is not Phase.READY:
            return None
        queued = getattr(self.dispatcher, "queued_rows", None)
        # requests admitted but not queued yet count too: else, with the queue momentarily empty, every
        # client whose headers arrive at that moment would be let in, parse, and only then be refused
        if queued is not None and queued + self._admitted >= self.settings.max_queue_rows:
            return QueueFull(f"request queue full ({queued} rows waiting, {self._admitted} requests on their way, "
                             f"limit {self.settings.max_queue_rows}); retry later or add replicas")
        if content_length > self.settings.large_request_bytes:
            return self._large_full()
        return None

    def _large_full(self) -> QueueFull | None:
        limit = self.settings.max_large_requests
        if self._large_admitted < limit:
            return None
        return QueueFull(f"too many large requests in progress ({self._large_admitted}, limit {limit}); "
                         "retry later, send smaller requests or add replicas")

    def _admission(self, method: bytes, target: bytes, content_length: int) -> bytes | Callable[[], None] | None:
        """Called by the connection guard once a request's headers are in. A scoring request finding the
        model saturated is answered there, before routing, auth and reading the body, so refusing costs
        next to nothing. Saturated: as many scoring requests in flight (from their headers to their
        answer) as the queue plus one running batch hold, which no in-app count can see in time: many
        requests' headers are taken in one turn of the event loop, before any of them runs."""
        if method != b"POST" or not (target.startswith(b"/score") or b"/infer" in target):
            return None
        full = self._overloaded(content_length)
        if full is None and self._capacity is not None and self._in_flight >= self._capacity:
            full = QueueFull(f"requests in flight fill the model's queue and running batch ({self._in_flight}); "
                             "retry later or add replicas")
        if full is not None:
            self._overload_count.inc()
            return self._refusal_503(str(full))
        if self._capacity is None:
            return None
        self._in_flight += 1
        return self._release_in_flight

    def _busy(self) -> bool:
        """Would a scoring request be refused now (queue full, or requests in flight fill queue and batch)? A few
        attribute reads: the connection asks this before it reads a request on the fast refusal path."""
        if self._capacity is None or self.phase is not Phase.READY:
            return False
        return (self._in_flight >= self._capacity
                or self.dispatcher.queued_rows + self._admitted >= self.settings.max_queue_rows)  # type: ignore[union-attr]

    def _refuse_fast(self, target: bytes, content_length: int) -> bytes | None:
        """The canned 503 for a POST to `target` while `_busy()`, as `_admission` would answer it (counted);
        None for a route that is not scoring (it goes through the parser and the app)."""
        if not (target.startswith(b"/score") or b"/infer" in target) or not self._busy():
            return None
        self._overload_count.inc()
        canned = self._canned_busy
        if canned is None:
            canned = self._canned_busy = self._refusal_503("request queue full")
        return canned

    def _refusal_503(self, why: str) -> bytes:
        """The canned overload answer; its text names the limit, not live counts, so it is built once per reason."""
        reason = why.split("(", 1)[0].strip()
        cached = self._canned.get(reason)
        if cached is None:
            retry = self.settings.retry_after_s
            cached = protocol.response_bytes(503, f"{reason}: the model is saturated; retry after {retry:g} s or "
                                                  "on another replica", {"Retry-After": str(retry)})
            self._canned[reason] = cached
        return cached

    def _release_in_flight(self) -> None:
        self._in_flight -= 1

    async def _codec(self, protocol: str, fn: Callable[..., Any], *args: Any, big: bool = False) -> Any:
        """Run flavour parse/render code in the pool; inline only when the flavour says it is cheap
        and the input is small (a multi-megabyte body parsed on the loop would stall every request)."""
        assert self.scorer is not None
        try:
            if self.scorer.parse_in_thread or big:
                return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
            return fn(*args)
        except _EXPECTED:
            raise
        except RecursionError:
            # orjson accepts JSON nested up to 1,024 levels; code that recurses over such a value is
            # answered as the client's problem, not a crash
            raise BadRequest("the request nests JSON arrays/objects too deeply; send flat values") from None
        except Exception as e:
            raise ScoringFailed(protocol, e) from e

    def _admit(self, request: Request) -> _Ticket:
        """Admit a scoring request (or raise QueueFull) before its body is read; it holds a place in the
        queue until its job is queued (`_predict`) or it fails."""
        if (full := self._overloaded(self._declared_length(request))) is not None:
            raise full
        return _Ticket(self)

    def _declared_length(self, request: Request) -> int:
        value = request.headers.get("content-length", "")
        return int(value) if value.isdigit() else -1

    async def _predict(self, job: Job, protocol: str, body_bytes: int, ticket: _Ticket) -> Any:
        assert self.dispatcher is not None
        if job.rows > self.settings.max_request_rows:
            raise RequestTooLarge(f"the request has {job.rows} rows; the limit is {self.settings.max_request_rows} "
                                  "(server setting SCORING_MAX_REQUEST_ROWS): split it")
        self.metrics.labelled(self.metrics.rows, protocol).observe(job.rows)
        t0 = time.perf_counter()
        try:
            # one row cannot be split into chunks: a big single image goes to the batcher like any other
            # image (the lane would only take its batching away)
            if body_bytes > self.settings.large_request_bytes and job.rows > 1:
                ticket.release()
                return await self._predict_large(job, body_bytes)
            ticket.release()  # submit queues the job before it first yields: the place passes to it
            return await self.dispatcher.submit(job)
        except _EXPECTED:
            raise
        except Exception as e:
            raise ScoringFailed(protocol, e) from e
        finally:
            self.metrics.labelled(self.metrics.model_seconds, protocol).observe(time.perf_counter() - t0)

    async def _predict_large(self, job: Job, body_bytes: int) -> Any:
        """A large request: scored alone on its own thread, in chunks of about `chunk_bytes` of body, one
        large request at a time. Small requests keep flowing through the dispatcher meanwhile, and the
        chunks bound the memory the model needs for it."""
        assert self.scorer is not None and self._large_lock is not None
        st = self.settings
        if (full := self._large_full()) is not None:  # (a request without Content-Length gets here)
            raise full
        self._large_admitted += 1
        try:
            async with self._large_lock:
                rows = max(1, job.rows * st.chunk_bytes // max(body_bytes, 1))
                parts = self.scorer.split(job, rows) if self.scorer.splittable and job.rows > rows else [job]
                loop = asyncio.get_running_loop()
                results = [await loop.run_in_executor(self._large_executor, self._predict_one, part) for part in parts]
            return results[0] if len(parts) == 1 else self.scorer.join(job, results)
        finally:
            self._large_admitted -= 1

    def _predict_one(self, job: Job) -> Any:
        assert self.scorer is not None
        results = self.scorer.predict([job])
        if len(results) != 1:
            raise RuntimeError(f"{type(self.scorer).__name__}.predict returned {len(results)} results for 1 job")
        return results[0]

    # ------------------------------------------------------------------ health and metadata
    def _workers_ready(self) -> int:
        """How many live worker processes are ready (several workers share one port)."""
        if self.ready_dir is None:
            return 1
        ready = 0
        for marker in self.ready_dir.iterdir():
            try:
                os.kill(int(marker.name), 0)
            except ProcessLookupError:  # a worker that died without cleaning up
                marker.unlink(missing_ok=True)
                continue
            except (ValueError, PermissionError):
                continue
            ready += 1
        return ready

    def _pod_not_ready(self) -> None:
        """Readiness of the whole server: with N workers, a probe may reach any one of them, so
        the server is ready only when all N are (else some requests would still get 503)."""
        self._not_ready()
        if (n := self._workers_ready()) < self.settings.workers:
            raise NotReady(f"{n} of {self.settings.workers} workers are ready", {"Retry-After": "1"})

    async def root(self, request: Request) -> Response:
        self._pod_not_ready()
        return JSON({"status": "ready", "model": self.manifest.name, "version": self.manifest.version})

    async def live(self, request: Request) -> Response:
        return JSON({"live": True})

    async def ready(self, request: Request) -> Response:
        if self.phase is Phase.READY:
            if (n := self._workers_ready()) < self.settings.workers:
                return JSON({"ready": False, "status": f"{n} of {self.settings.workers} workers ready"},
                            status_code=503)
            return JSON({"ready": True})
        body: dict[str, Any] = {"ready": False, "status": self.phase.value}
        if self.failure:
            body["error"] = f"the model failed to load: {self.failure}"
        return JSON(body, status_code=503)

    async def server_metadata(self, request: Request) -> Response:
        return JSON({"name": "scoring-runtime", "version": __version__, "extensions": []})

    async def model_ready(self, request: Request) -> Response:
        self._deny(request)
        self._unknown_model(request)
        ok = self.phase is Phase.READY
        return JSON({"name": self.manifest.name, "ready": ok}, status_code=200 if ok else 503)

    async def model_metadata(self, request: Request) -> Response:
        self._deny(request)
        self._unknown_model(request)
        self._not_ready()
        assert self.scorer is not None
        return JSON({
            "name": self.manifest.name,
            "versions": [str(self.manifest.version)],
            "platform": self.scorer.platform,
            **self.scorer.v2_metadata(),
        })

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI document of these routes for the served model (keyed like the model metadata)."""
        self._deny(request)
        if self._openapi is None or (self._openapi[0] is None and self.scorer is not None):
            self._openapi = (self.scorer, JSON(openapi_document(self.manifest, self.scorer, self.settings)))
        return self._openapi[1]

    async def metrics_text(self, request: Request) -> Response:
        body, ctype = self.metrics.render()
        return Response(body, media_type=ctype)

    # ------------------------------------------------------------------ scoring
    def _prescan_v2(self, body: bytes) -> None:
        """Refuse a V2 body whose declared tensor shapes are over the limits *before* decoding it: a
        near-limit body of millions of values costs seconds and hundreds of MiB to decode. The pattern
        cannot match inside a JSON string (a quote there is escaped); the decoder checks the rest."""
        st = self.settings
        for m in _SHAPE_RE.finditer(body):
            try:
                dims = [int(d) for d in m.group(1).split(b",") if d.strip()]
            except ValueError:
                continue  # not a list of integers: the decoder says what is wrong
            if dims and dims[0] > st.max_request_rows:
                raise RequestTooLarge(f"an input has shape {dims[:8]}: {dims[0]} rows; the limit is "
                                      f"{st.max_request_rows} (SCORING_MAX_REQUEST_ROWS): split the request")
            if dims and math.prod(dims) > st.max_request_elements:
                raise RequestTooLarge(f"an input has shape {dims[:8]}: {math.prod(dims)} values; the limit is "
                                      f"{st.max_request_elements} (SCORING_MAX_REQUEST_ELEMENTS): split the request")

    def _parse_v2(self, body: bytes) -> tuple[str | None, Job]:
        assert self.scorer is not None
        self._prescan_v2(body)
        req = parse_request(decode_json(body))
        job = self.scorer.parse_v2(req)
        job.outputs = req.outputs  # here, not in each flavour, so every flavour honours `outputs`
        return req.id, job

    @staticmethod
    def _select(tensors: list[V2Tensor], wanted: list[str] | None) -> list[V2Tensor]:
        if wanted is None:
            return tensors
        by_name = {t.name: t for t in tensors}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            raise BadRequest(f"unknown output(s) {', '.join(map(describe, unknown[:8]))}; this model has: "
                             f"{', '.join(by_name)}")
        return [by_name[w] for w in wanted]

    async def infer(self, request: Request) -> Response:
        self._deny(request)
        self._unknown_model(request)
        self._not_ready()
        assert self.scorer is not None
        with self._admit(request) as ticket:
            body = await read_body(request, self.settings.max_body_bytes)
            self.metrics.labelled(self.metrics.body_bytes, "infer").observe(len(body))
            req_id, job = await self._codec("v2", self._parse_v2, body, big=len(body) > INLINE_MAX_BODY_BYTES)
            result = await self._predict(job, "v2", len(body), ticket)
        tensors = await self._codec("v2", self.scorer.render_v2, result, job, big=job.rows > INLINE_MAX_ROWS)
        outputs = self._select(tensors, job.outputs)
        out: dict[str, Any] = {
            "model_name": self.manifest.name,
            "model_version": str(self.manifest.version),
            "outputs": [t.to_json() for t in outputs],
        }
        if req_id is not None:
            out["id"] = req_id
        return JSON(out)

    async def score(self, request: Request) -> Response:
        self._deny(request)
        self._not_ready()
        scorer = self.scorer
        assert scorer is not None
        ctype = request.headers.get("content-type") or "application/json"
        if media_type(ctype) not in scorer.score_media_types:
            raise UnsupportedMediaType(f"Content-Type {describe(media_type(ctype))} is not accepted by this model; "
                                       f"use one of: {', '.join(scorer.score_media_types)}")
        with self._admit(request) as ticket:
            body = await read_body(request, self.settings.max_body_bytes)
            self.metrics.labelled(self.metrics.body_bytes, "score").observe(len(body))
            job = await self._codec("score", scorer.parse_score, body, ctype, big=len(body) > INLINE_MAX_BODY_BYTES)
            result = await self._predict(job, "score", len(body), ticket)
        out = await self._codec("score", scorer.render_score, result, job, big=job.rows > INLINE_MAX_ROWS)
        return JSON(out)

    # ------------------------------------------------------------------ app
    def build(self) -> Starlette:
        models = "/v2/models/{name}"
        versions = "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/", self.root, methods=["GET"]),
            Route("/score", self.score, methods=["POST"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route(models, self.model_metadata, methods=["GET"]),
            Route(versions, self.model_metadata, methods=["GET"]),
            Route(models + "/ready", self.model_ready, methods=["GET"]),
            Route(versions + "/ready", self.model_ready, methods=["GET"]),
            Route(models + "/infer", self.infer, methods=["POST"]),
            Route(versions + "/infer", self.infer, methods=["POST"]),
        ]
        handlers = ErrorHandlers(self.metrics, self.settings.retry_after_s).mapping()
        app = ScoringApp(routes=routes, lifespan=self.lifespan, exception_handlers=handlers)
        # Starlette's own slash redirect builds an absolute Location from the Host header; ours is relative
        app.router.redirect_slashes = False
        if self.mirror.configured:  # copies of scoring requests to a shadow runtime (server/shadow.py)
            app.add_middleware(ShadowTraffic, mirror=self.mirror, max_body_bytes=self.settings.max_body_bytes)
        app.add_middleware(RequestMetrics, metrics=self.metrics, access_log=self.settings.access_log)
        app.add_middleware(telemetry.TelemetryMiddleware)  # a span per request while telemetry is on
        app.add_middleware(ServedBy, model=self.manifest.name, version=str(self.manifest.version))
        # POST /score and /infer skip the generic stack; they get the same checks, metrics, headers, errors
        app.hot = HotPath(self.score, self.infer, handlers, self.metrics,
                          served_by_headers(self.manifest.name, str(self.manifest.version)), self.settings.access_log)
        app.hot_reproduces = frozenset({RequestMetrics, telemetry.TelemetryMiddleware, ServedBy})
        app.state.server = self
        return app


def create_app(
    settings: RuntimeSettings,
    loader: Loader | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> Starlette:
    """The ASGI app for `settings` (the model loads when the app's lifespan starts)."""
    return ScoringServer(settings, loader=loader, on_fatal=on_fatal).build()
