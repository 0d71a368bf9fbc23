"""Connection guards of a real `scoring serve`: header size/count limits, header and body timeouts.

Regression for issue 11: a 64 MiB header was accepted (and stalled everyone for seconds), and
connections sending partial headers were never closed (slowloris).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from tests.runtime.support import ServeProcess, clean_process_env, free_port, scoring_serve, serving

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(faq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    env = clean_process_env() | {"SCORING_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "SCORING_BODY_TIMEOUT_S": "1",
                                 "SCORING_MAX_HEADER_BYTES": "8192", "SCORING_MAX_HEADERS": "50"}
    with scoring_serve(faq_dir, log=tmp_path_factory.mktemp("guards") / "serve.log", env=env) as s:
        yield s


def _port(server: ServeProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def _exchange(server: ServeProcess, data: bytes, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send `data`, read until the server closes; (everything read, seconds until the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
    t0 = time.monotonic()
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.read(-1), wait_s)
    writer.close()
    return got, time.monotonic() - t0


async def test_oversized_headers_are_refused_with_431_before_parsing(server: ServeProcess) -> None:
    huge = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4 * 1024 * 1024 + b"\r\n\r\n"

    def send_huge() -> bytes:
        with socket.create_connection(("127.0.0.1", _port(server))) as sock:
            with contextlib.suppress(OSError):  # the server closes while we are still sending
                sock.sendall(huge)
            try:
                return sock.recv(65536)
            except OSError:
                return b""

    t0 = time.monotonic()
    got = await asyncio.to_thread(send_huge)
    assert time.monotonic() - t0 < 3
    if got:  # the 431 may be lost to a reset, as the client was still sending
        assert got.startswith(b"HTTP/1.1 431"), got[:100]
    got, _ = await _exchange(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 431") and b"exceed 8192 bytes" in got
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(60))
    got, _ = await _exchange(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert got.startswith(b"HTTP/1.1 431") and b"more than 50 header fields" in got
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


async def _slow_client(server: ServeProcess, trickle: bool) -> tuple[bytes, float]:
    """A slowloris client: partial headers, then a byte every 0.1 s (or nothing at all); what it got and when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
    t0 = time.monotonic()
    if trickle:
        writer.write(b"POST /score HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    read = asyncio.create_task(reader.read(-1))
    while not read.done() and time.monotonic() - t0 < HEADER_TIMEOUT_S + 5:
        if trickle:
            with contextlib.suppress(OSError):  # the server may have closed it already
                writer.write(b"a")
        await asyncio.wait({read}, timeout=0.1)
    took = time.monotonic() - t0
    try:
        got = read.result() if read.done() else b"<still open>"
    except OSError:
        got = b"<reset>"  # closed while we were still writing
    writer.close()
    return got, took


async def test_slow_header_clients_are_dropped_while_probes_stay_fast(server: ServeProcess) -> None:
    t0 = time.monotonic()
    clients = asyncio.gather(*(_slow_client(server, trickle=i < 40) for i in range(50)))

    async def probes() -> list[float]:
        lat = []
        async with httpx.AsyncClient() as client:
            while time.monotonic() - t0 < HEADER_TIMEOUT_S + 1:
                s = time.monotonic()
                assert (await client.get(f"{server.url}/v2/health/live")).status_code == 200
                lat.append(time.monotonic() - s)
                await asyncio.sleep(0.02)
        return lat

    latencies = await probes()
    results = await clients
    slow, idle = results[:40], results[40:]
    assert all(took < HEADER_TIMEOUT_S + 1.5 for _, took in results), [t for _, t in results]
    assert all(got.startswith(b"HTTP/1.1 408") or got == b"<reset>" for got, _ in slow), slow[0]
    assert sum(got.startswith(b"HTTP/1.1 408") for got, _ in slow) >= 20
    assert all(got == b"" for got, _ in idle)  # idle connections are closed without an answer
    assert max(latencies) < 1.0, latencies  # probes never waited for the slow clients


async def test_a_body_that_never_completes_gets_408(server: ServeProcess) -> None:
    got, took = await _exchange(server, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Content-Length: 100\r\n\r\n{\"question\": ")
    assert got.startswith(b"HTTP/1.1 408") and b"request body did not arrive" in got
    assert 0.8 < took < 3


async def test_a_kept_alive_connection_gets_a_fresh_header_deadline(server: ServeProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b'{"live":true}'), 3)
    assert first.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(HEADER_TIMEOUT_S * 1.5)  # longer than the first deadline: keep-alive idle is fine
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # but this one never finishes
    await writer.drain()
    t0 = time.monotonic()
    rest = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < HEADER_TIMEOUT_S + 1.5


@contextlib.asynccontextmanager
async def guarded_server(app: Any, **configure: Any) -> AsyncIterator[int]:
    """A uvicorn server on the guarded protocol, configured with `protocol.configure(**configure)`; its port.

    The protocol's module-level configuration is reset when the server stops, so tests never leak it.
    """
    import uvicorn

    from scoring_runtime.server import protocol

    protocol.configure(**configure)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol.GuardedHttpToolsProtocol,
                                           lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield port
    finally:
        protocol.configure(protocol.HttpLimits())
        server.should_exit = True
        await task


async def test_admission_answers_a_full_queue_without_running_the_app() -> None:
    """The canned 503 is written by the connection itself; the body is discarded and keep-alive kept."""
    from starlette.responses import PlainTextResponse
    from starlette.types import Receive, Scope, Send

    from scoring_runtime.server import protocol

    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        await PlainTextResponse("app")(scope, receive, send)

    full = protocol.response_bytes(503, "queue full", {"Retry-After": "2"})
    async with guarded_server(app, limits=protocol.HttpLimits(),
                              admission=lambda m, t, n: full if m == b"POST" and t == b"/score" else None) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.post("/score", content=b'{"question": "' + b"x" * 200_000 + b'"}')
            assert r.status_code == 503 and r.headers["retry-after"] == "2"
            assert r.json() == {"error": "queue full"}
            r = await c.get("/score")  # same connection: the discarded body did not corrupt it
            assert r.status_code == 200 and r.text == "app"
        assert calls == ["/score"]


async def test_a_full_queue_is_refused_before_the_body_is_read(faq_app: Callable[..., Starlette]) -> None:
    app = faq_app(max_batch_size=4, max_queue_rows=8)
    async with serving(app) as c:
        server = app.state.server
        server.dispatcher._queued_rows = 8  # as if 8 rows were waiting for the model
        read: list[int] = []

        async def body() -> AsyncIterator[bytes]:
            read.append(1)
            yield b'{"question": "reset my password"}'

        r = await c.post("/score", content=body(), headers={"content-type": "application/json"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "queue full" in r.json()["error"]
        assert read == []
        assert server._admission(b"POST", b"/v2/models/faq-matcher/infer", 10).startswith(b"HTTP/1.1 503")
        assert server._admission(b"GET", b"/v2/health/ready", -1) is None
        server.dispatcher._queued_rows = 0
        place = server._admission(b"POST", b"/score", 10)  # admitted: holds a place until answered
        assert callable(place)
        place()
        assert (await c.post("/score", json={"question": "reset my password"})).status_code == 200


async def test_admission_counts_requests_in_flight_up_to_queue_plus_one_batch(
    faq_app: Callable[..., Starlette]
) -> None:
    app = faq_app(max_batch_size=4, max_queue_rows=8)
    async with serving(app):
        server = app.state.server
        places = [server._admission(b"POST", b"/score", 40) for _ in range(12)]  # 8 queued + a batch of 4
        assert all(callable(p) for p in places)
        refused = server._admission(b"POST", b"/v2/models/faq-matcher/infer", 40)
        assert isinstance(refused, bytes) and refused.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in \
            refused.lower()
        assert server._admission(b"GET", b"/v2/health/ready", -1) is None  # probes are never refused
        places[0]()  # one answered
        assert callable(server._admission(b"POST", b"/score", 40))


async def test_overload_refusals_are_held_for_the_refusal_delay() -> None:
    from starlette.responses import PlainTextResponse
    from starlette.types import Receive, Scope, Send

    from scoring_runtime.server import protocol

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await PlainTextResponse("app")(scope, receive, send)

    full = protocol.response_bytes(503, "busy", {"Retry-After": "1"})
    async with guarded_server(app, limits=protocol.HttpLimits(refusal_delay_s=0.2),
                              admission=lambda m, t, n: full if m == b"POST" else None) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        t0 = time.monotonic()
        r = await c.post("/score", content=b"{}")
        held = time.monotonic() - t0
        assert r.status_code == 503 and 0.19 < held < 2
        t0 = time.monotonic()
        assert (await c.get("/")).text == "app" and time.monotonic() - t0 < 0.19  # only refusals wait


def test_only_plainly_framed_whole_posts_take_the_fast_refusal_path() -> None:
    """The fast path must frame a request exactly as the parser would, or leave it to the parser."""
    from scoring_runtime.server.protocol import simple_post

    body = b'{"question": "hi"}'
    ok = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
          % len(body)) + body
    assert simple_post(ok, 8192, 50) == (b"/score", len(body), 0)
    assert simple_post(ok.replace(b"Content-Length", b"content-LENGTH"), 8192, 50) == (b"/score", len(body), 0)
    assert simple_post(ok[:-5], 8192, 50) == (b"/score", len(body), 5)  # the rest of the body is on its way
    assert simple_post(ok.replace(b"Host: x", b"Connection: Keep-Alive"), 8192, 50) == (b"/score", len(body), 0)
    to_parser = [
        ok.replace(b"Host: x", b"Transfer-Encoding: chunked"),  # two framings: the parser decides
        ok.replace(b"Host: x", b"Content-Length: %d" % len(body)),  # two lengths
        ok.replace(b"Content-Length:", b"Content-Length :"),  # space before the colon
        ok.replace(b"Host: x\r\n", b"Host: x\r\n folded\r\n"),  # obs-fold
        ok.replace(b"Host: x\r\n", b"Host: x\nX-A: 1\r\n"),  # bare LF
        ok.replace(b"Host: x\r\n", b"Host: x\rX-A: 1\r\n"),  # bare CR
        ok.replace(b"HTTP/1.1", b"HTTP/1.0"), ok.replace(b"Host: x", b"Connection: close"),
        ok.replace(b"Host: x", b"Expect: 100-continue"), ok.replace(b"Host: x", b"Upgrade: h2c"),
        ok[:40],  # the headers are not all there
        ok + b"GET / HTTP/1.1\r\n\r\n",  # a pipelined request follows
        ok.replace(b"Content-Length: %d\r\n" % len(body), b""),  # no length
        ok.replace(b"Length: %d" % len(body), b"Length: +%d" % len(body)),
        ok.replace(b"POST", b"GET"), ok.replace(b"POST /score", b"POST http://x/score"),
    ]
    assert [simple_post(r, 8192, 50) for r in to_parser] == [None] * len(to_parser)
    assert simple_post(ok, 8192, 2) is None  # more header fields than allowed
    assert simple_post(ok, 40, 50) is None  # headers longer than allowed


async def test_fast_refusals_are_held_without_the_parser_and_the_connection_stays_usable() -> None:
    """While busy, whole plainly framed POSTs are refused by the connection (held the refusal delay, on one
    timer for all), keep-alive kept; other requests, and all requests once not busy, reach the app."""
    from starlette.responses import PlainTextResponse
    from starlette.types import Receive, Scope, Send

    from scoring_runtime.server import protocol

    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            calls.append(f"{scope['method']} {scope['path']}")
            await PlainTextResponse("app")(scope, receive, send)

    busy = [True]
    refused: list[tuple[bytes, int]] = []
    full = protocol.response_bytes(503, "busy", {"Retry-After": "1"})

    def refuse(target: bytes, length: int) -> bytes | None:
        if not busy[0] or target != b"/score":
            return None
        refused.append((target, length))
        return full

    async with guarded_server(app, limits=protocol.HttpLimits(refusal_delay_s=0.2), admission=lambda m, t, n: None,
                              fast=protocol.FastRefusal(busy=lambda: busy[0], refuse=refuse)) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(
                max_connections=20)) as c:
            t0 = time.monotonic()
            rs = await asyncio.gather(*(c.post("/score", content=b'{"q": 1}') for _ in range(20)))
            held = time.monotonic() - t0
            assert [r.status_code for r in rs] == [503] * 20 and rs[0].json() == {"error": "busy"}
            assert 0.19 < held < 2 and refused == [(b"/score", 8)] * 20
            big = await c.post("/score", content=b"x" * 300_000)  # refused on its headers, its body discarded
            assert big.status_code == 503 and refused[-1] == (b"/score", 300_000)
            assert (await c.post("/other", content=b"{}")).text == "app"  # not a scoring route: the app
            busy[0] = False
            rs = await asyncio.gather(*(c.post("/score", content=b'{"q": 1}') for _ in range(20)))
            assert [r.text for r in rs] == ["app"] * 20  # the same connections, in step, now admitted
        assert calls == ["POST /other"] + ["POST /score"] * 20


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _cycle(transport: _RecordingTransport, method: str = "POST", expect_100: bool = False) -> Any:
    """uvicorn's real response cycle, its transport seen through the guard's `_HeadWithBody`."""
    import logging
    from types import SimpleNamespace

    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    from scoring_runtime.server import protocol

    cycle = RequestResponseCycle(
        scope={"type": "http", "method": method, "http_version": "1.1"}, transport=transport,  # type: ignore[arg-type,typeddict-item]
        flow=SimpleNamespace(write_paused=False, resume_reading=lambda: None),  # type: ignore[arg-type]
        logger=logging.getLogger("t"), access_logger=logging.getLogger("t"), access_log=False, default_headers=[],
        message_event=asyncio.Event(), expect_100_continue=expect_100, keep_alive=True, on_response=lambda: None)
    cycle.transport = protocol._HeadWithBody(transport, cycle)  # type: ignore[arg-type,assignment]
    return cycle


async def test_a_response_of_known_length_is_one_socket_write() -> None:
    t = _RecordingTransport()
    cycle = _cycle(t)
    await cycle.send({"type": "http.response.start", "status": 200,
                      "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    assert t.writes == []  # held for its body
    await cycle.send({"type": "http.response.body", "body": b"{}"})
    assert len(t.writes) == 1 and t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and t.writes[0].endswith(b"\r\n\r\n{}")
    assert cycle.response_complete and cycle.transport.cycle is None  # no reference cycle left behind


async def test_streams_100_continue_and_aborted_responses_are_written_as_before() -> None:
    t = _RecordingTransport()
    cycle = _cycle(t)  # chunked (no Content-Length): the head goes at once, a stream must show it
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    assert len(t.writes) == 1 and b"transfer-encoding: chunked" in t.writes[0]
    await cycle.send({"type": "http.response.body", "body": b"ab", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b""})
    assert t.writes[1:] == [b"2\r\nab\r\n", b"0\r\n\r\n"]

    t = _RecordingTransport()
    cycle = _cycle(t, expect_100=True)  # the interim answer is written before the response starts
    cycle.more_body = False
    cycle.message_event.set()
    await cycle.receive()
    assert t.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]

    t = _RecordingTransport()
    cycle = _cycle(t)  # a head held when the connection is closed is written first, as uvicorn would have
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    cycle.transport.close()
    assert len(t.writes) == 1 and t.writes[0].startswith(b"HTTP/1.1 200") and t.closed


async def test_kept_alive_requests_do_not_each_make_and_cancel_deadline_timers() -> None:
    """Header and body deadlines are attributes behind one loop timer per connection: twenty requests on
    one connection set it at most twice (before: two timers made and cancelled per request)."""
    from starlette.responses import JSONResponse
    from starlette.types import Receive, Scope, Send

    from scoring_runtime.server import protocol

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await JSONResponse({"ok": True})(scope, receive, send)

    loop = asyncio.get_running_loop()
    made: list[object] = []
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        # the guard's own deadline timers (uvicorn's keep-alive timer, the floor's too, is not the guard's)
        if getattr(callback, "__qualname__", "").startswith("GuardedHttpToolsProtocol."):
            made.append(callback)
        return real_call_at(when, callback, *args, **kwargs)

    loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]
    try:
        limits = protocol.HttpLimits(header_timeout_s=30, body_timeout_s=60)
        async with (guarded_server(app, limits=limits) as port,
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c):
            for _ in range(20):
                r = await c.post("/score", content=b'{"question": "x"}')
                assert r.status_code == 200 and r.json() == {"ok": True}
            r = await c.head("/score")  # HEAD: no body follows, nothing held
            assert r.status_code == 200 and r.headers["content-length"] == "11"
    finally:
        del loop.call_at
    assert 1 <= len(made) <= 2, made
