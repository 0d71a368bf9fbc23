"""Shadow traffic from a real `scoring serve`: which requests are copied, what a copy carries, the share,
a slow or dead shadow (dropped / failed, clients unaffected), the config file, an https shadow."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from scoring_runtime.server.shadow import ShadowConfigError, ShadowTarget, parse_config
from tests.runtime.certs import TestCA, write_like_a_secret_volume
from tests.runtime.support import SCORING, clean_process_env, free_port, scoring_serve, v2_questions

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
BODY = {"question": "I forgot my console password"}
KEY = "k" * 24
MAX_IN_FLIGHT = 8


@dataclass
class Copy:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A stand-in shadow runtime: records every request it gets; answers `status` after `delay` s."""

    url: str
    copies: list[Copy] = field(default_factory=list)
    delay: float = 0.0
    status: int = 200
    server: ThreadingHTTPServer | None = None

    def wait_for(self, n: int, timeout: float = 10) -> list[Copy]:
        deadline = time.monotonic() + timeout
        while len(self.copies) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.copies)


@contextmanager
def recorder(tls: tuple[Path, Path] | None = None) -> Iterator[Recorder]:
    rec = Recorder(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            rec.copies.append(Copy(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(rec.delay)
            out = b'{"ignored": true}'
            self.send_response(rec.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    rec.url = f"{scheme}://localhost:{server.server_address[1]}"
    rec.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def metric(url: str, name: str, **verify: Any) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10, **verify).text
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def shadow_counts(url: str, **verify: Any) -> dict[str, float]:
    raw = metric(url, "scoring_shadow_requests_total", **verify)
    return {re.search(r'outcome="(\w+)"', k).group(1): v for k, v in raw.items()}  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------- units


def test_config_file_parsing() -> None:
    assert parse_config("") is None
    assert parse_config("{}") is None
    assert parse_config('{"url": "http://s.ns.svc:80/", "percent": 12.5}') == ShadowTarget("http://s.ns.svc:80", 12.5)
    assert parse_config('{"url": "https://s:8443"}') == ShadowTarget("https://s:8443", 100.0)
    assert parse_config('{"url": "http://s:80", "percent": 0}') is None
    for bad, why in (("[1]", "JSON object"), ("{", "not JSON"), ('{"url": "ftp://x"}', "http://host:port"),
                     ('{"url": "http://x", "percent": 101}', "percent must be a number from 0 to 100"),
                     ('{"url": "http://x", "percent": "10"}', "percent must be"),
                     ('{"url": "http://u:p@x"}', "credentials")):
        with pytest.raises(ShadowConfigError, match=re.escape(why)):
            parse_config(bad)


# ------------------------------------------------------------------------------------------- env form


def test_scoring_requests_are_copied_with_path_body_and_auth(faq_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    with recorder() as shadow:
        env = clean_process_env() | {"SCORING_SHADOW_URL": shadow.url, "SCORING_SHADOW_PERCENT": "100"}
        with scoring_serve(faq_dir, "--api-key-file", str(keys), log=tmp_path / "serve.log", env=env) as stable:
            auth = {"Authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=stable.url, headers=auth, timeout=10) as c:
                direct = c.post("/score", json=BODY)
                assert direct.status_code == 200
                v2 = c.post("/v2/models/faq-matcher/infer?trace=1", json=v2_questions("reset my password"))
                assert v2.status_code == 200, v2.text
                pinned = c.post("/v2/models/faq-matcher/versions/1/infer", json=v2_questions("billing"))
                assert pinned.status_code == 200
                # not copied: reads, a request that is itself a copy (no loops), an overload-free 404
                assert c.get("/v2/models/faq-matcher").status_code == 200
                assert c.post("/score", json=BODY, headers={"x-scoring-shadow": "1"}).status_code == 200
                assert c.post("/nope", json=BODY).status_code in (404, 405)
            shadow.wait_for(3)
            time.sleep(0.5)
            # each copy is sent by its own task, so two copies in flight together may arrive in either order
            by_path = {c.path: c for c in shadow.copies}
            assert sorted(c.path for c in shadow.copies) == sorted([
                "/score", "/v2/models/faq-matcher/infer?trace=1", "/v2/models/faq-matcher/versions/1/infer"])
            first = by_path["/score"]
            assert json.loads(first.body) == BODY
            assert first.headers["authorization"] == f"Bearer {KEY}"
            assert first.headers["x-scoring-shadow"] == "1"
            assert first.headers["content-type"] == "application/json"
            assert json.loads(by_path["/v2/models/faq-matcher/infer?trace=1"].body) == v2_questions("reset my password")
            # the client got the stable runtime's own answer
            assert direct.json()["matches"][0]["id"] == 101
            counts = shadow_counts(stable.url)
            assert counts == {"sent": 3.0, "failed": 0.0, "dropped": 0.0}
            assert metric(stable.url, "scoring_shadow_percent") == {"": 100.0}


# ------------------------------------------------------------------------------------------- config file form


@dataclass
class Stable:
    url: str
    log: Path
    config: Path
    ca: TestCA

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def set_target(self, doc: dict[str, Any] | str | None) -> None:
        """Write the config file (None: remove it) and wait until the runtime logged the switch."""
        before = self.output.count('"shadow_o') + self.output.count('"shadow_config_invalid"')
        if doc is None:
            self.config.unlink(missing_ok=True)
        else:
            # a ConfigMap volume update: the ..data symlink swap
            write_like_a_secret_volume(self.config.parent, {
                self.config.name: (doc if isinstance(doc, str) else json.dumps(doc)).encode()})
        deadline = time.monotonic() + 10
        while self.output.count('"shadow_o') + self.output.count('"shadow_config_invalid"') == before:
            assert time.monotonic() < deadline, f"config change not picked up:\n{self.output}"
            time.sleep(0.1)

    def client(self) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(self.ca.ca_file))
        return httpx.Client(base_url=self.url, timeout=10, verify=verify)


@pytest.fixture(scope="module")
def stable(faq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stable]:
    """A stable runtime that itself serves HTTPS, shadowing per its config file (MAX_IN_FLIGHT copies at most)."""
    root = tmp_path_factory.mktemp("shadow")
    ca = TestCA(root / "ca")
    pair = ca.issue(["localhost"])
    (root / "tls.crt").write_bytes(pair.cert_pem)
    (root / "tls.key").write_bytes(pair.key_pem)
    config = root / "shadow-config" / "shadow.json"
    port = free_port()
    log = root / "serve.log"
    env = clean_process_env() | {
        "SCORING_SHADOW_CONFIG_FILE": str(config), "SCORING_SHADOW_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
        "SCORING_SHADOW_CA_FILE": str(ca.ca_file), "SCORING_SHADOW_TIMEOUT_S": "5",
        "SCORING_TLS_CERT_FILE": str(root / "tls.crt"), "SCORING_TLS_KEY_FILE": str(root / "tls.key"),
    }
    with log.open("w") as out:
        proc = subprocess.Popen([*SCORING, "serve", "--model-dir", str(faq_dir), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    s = Stable(f"https://localhost:{port}", log, config, ca)
    try:
        with s.client() as c:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, s.output
                try:
                    if c.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, s.output
                time.sleep(0.2)
        yield s
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, s.output


def counts(s: Stable) -> dict[str, float]:
    return shadow_counts(s.url, verify=ssl.create_default_context(cafile=str(s.ca.ca_file)))


def test_no_file_means_no_shadowing_then_the_file_starts_and_stops_it(stable: Stable) -> None:
    with recorder() as shadow, stable.client() as c:
        for _ in range(5):
            assert c.post("/score", json=BODY).status_code == 200
        time.sleep(0.5)
        assert shadow.copies == []
        stable.set_target({"url": shadow.url, "percent": 100})
        for _ in range(5):
            assert c.post("/score", json=BODY).status_code == 200
            time.sleep(0.1)  # one copy at a time: none dropped
        assert len(shadow.wait_for(5)) == 5
        stable.set_target("{}")
        for _ in range(5):
            assert c.post("/score", json=BODY).status_code == 200
        time.sleep(0.5)
        assert len(shadow.copies) == 5
        stable.set_target("{not json")
        assert "shadow_config_invalid" in stable.output


def test_share_of_copies_follows_percent(stable: Stable) -> None:
    with recorder() as shadow, stable.client() as c:
        before = counts(stable)
        stable.set_target({"url": shadow.url, "percent": 25})
        n = 400
        for _ in range(n):
            assert c.post("/score", json=BODY).status_code == 200
        time.sleep(1.0)
        after = counts(stable)
        assert after["sent"] - before["sent"] == len(shadow.copies)
        picked = len(shadow.copies) + after["dropped"] - before["dropped"]  # (a busy machine may drop some)
        share = picked / n
        assert 0.18 <= share <= 0.32, share  # 25% +- 7 points (3 standard deviations at n=400 is ~6.5)


def test_slow_shadow_drops_copies_and_never_slows_clients(stable: Stable) -> None:
    with recorder() as shadow, stable.client() as c:
        shadow.delay = 3.0
        before = counts(stable)
        stable.set_target({"url": shadow.url, "percent": 100})
        latencies = []
        for _ in range(30):
            t0 = time.perf_counter()
            r = c.post("/score", json=BODY)
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200
        assert max(latencies) < 1.5, latencies  # each copy takes the shadow 3 s
        after = counts(stable)
        assert after["dropped"] - before["dropped"] >= 20, after
        assert len(shadow.copies) <= MAX_IN_FLIGHT, "never more than max_in_flight copies on their way"
        stable.set_target("{}")


def test_dead_shadow_counts_failures_logs_them_rarely(stable: Stable) -> None:
    before = counts(stable)
    logged = stable.output.count('"shadow_requests_failing"')
    stable.set_target({"url": f"http://127.0.0.1:{free_port()}", "percent": 100})
    with stable.client() as c:
        for _ in range(20):
            assert c.post("/score", json=BODY).status_code == 200
    def lost() -> tuple[float, float]:
        now = counts(stable)
        return now["failed"] - before["failed"], now["dropped"] - before["dropped"]

    deadline = time.monotonic() + 10
    while sum(lost()) < 20:
        assert time.monotonic() < deadline, counts(stable)
        time.sleep(0.1)
    failed, dropped = lost()
    assert failed >= 10 and failed + dropped == 20, (failed, dropped)
    time.sleep(0.5)
    now_logged = stable.output.count('"shadow_requests_failing"')
    assert now_logged >= 1 and now_logged - logged <= 1, "failures are logged at most once a minute"
    stable.set_target("{}")


def test_shadow_answering_errors_counts_as_failed(stable: Stable) -> None:
    with recorder() as shadow, stable.client() as c:
        shadow.status = 500
        before = counts(stable)
        stable.set_target({"url": shadow.url, "percent": 100})
        for _ in range(5):
            assert c.post("/score", json=BODY).status_code == 200
            time.sleep(0.1)
        shadow.wait_for(5)
        time.sleep(0.3)
        assert counts(stable)["failed"] - before["failed"] == 5
        stable.set_target("{}")


def test_https_shadow_verified_with_the_ca_file(stable: Stable) -> None:
    root = stable.config.parent.parent
    pair = stable.ca.issue(["localhost"])
    (root / "shadow.crt").write_bytes(pair.cert_pem)
    (root / "shadow.key").write_bytes(pair.key_pem)
    with recorder(tls=(root / "shadow.crt", root / "shadow.key")) as shadow, stable.client() as c:
        before = counts(stable)
        stable.set_target({"url": shadow.url, "percent": 100})
        for _ in range(3):
            assert c.post("/score", json=BODY).status_code == 200
            time.sleep(0.1)
        assert len(shadow.wait_for(3)) == 3
        time.sleep(0.3)
        assert counts(stable)["sent"] - before["sent"] == 3
        stable.set_target("{}")
    # a shadow whose certificate the CA did not sign gets nothing
    other = TestCA(root / "other-ca", name="other")
    stray = other.issue(["localhost"])
    (root / "stray.crt").write_bytes(stray.cert_pem)
    (root / "stray.key").write_bytes(stray.key_pem)
    with recorder(tls=(root / "stray.crt", root / "stray.key")) as shadow, stable.client() as c:
        before = counts(stable)
        stable.set_target({"url": shadow.url, "percent": 100})
        assert c.post("/score", json=BODY).status_code == 200
        deadline = time.monotonic() + 5
        while counts(stable)["failed"] == before["failed"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert shadow.copies == []
        stable.set_target("{}")


# ------------------------------------------------------------------------------------------- the client


async def _raw_server(answer: bytes, close_after: float | None) -> tuple[Any, list[bytes]]:
    """An asyncio server that answers every request with `answer`; closes each connection `close_after`
    seconds after answering (None: keeps it open)."""
    import asyncio

    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                seen.append(head + await reader.readexactly(length))
                writer.write(answer)
                await writer.drain()
                if close_after is not None:
                    await asyncio.sleep(close_after)
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


async def test_client_reuses_connections_and_survives_servers_closing_them() -> None:
    import asyncio

    from scoring_runtime.server.shadow_client import ShadowClient

    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    server, seen = await _raw_server(ok, close_after=None)
    port = server.sockets[0].getsockname()[1]
    client = ShadowClient(f"http://localhost:{port}/prefix", limit=4)
    for _ in range(3):
        assert await client.post("/score?x=1", [("authorization", "Bearer k")], b'{"a": 1}', 5) == 200
    assert len(client._open) == 1, "one keep-alive connection, reused"
    assert seen[0].startswith(b"POST /prefix/score?x=1 HTTP/1.1\r\nhost: localhost:")
    assert b"authorization: Bearer k" in seen[0] and seen[0].endswith(b'{"a": 1}')
    client.close()
    server.close()

    # a server that closes idle connections (its keep-alive timeout): the next copy opens a new one
    server, seen = await _raw_server(ok, close_after=0.05)
    port = server.sockets[0].getsockname()[1]
    client = ShadowClient(f"http://127.0.0.1:{port}", limit=4)
    for _ in range(3):
        assert await client.post("/score", [], b"{}", 5) == 200
        await asyncio.sleep(0.2)
    assert len(seen) == 3
    client.close()
    server.close()

    # "connection: close" answers, a 503, and a server that answers garbage
    unavailable = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    for answer, expected in ((unavailable, 503), (b"NOT HTTP\r\n\r\n", None)):
        server, seen = await _raw_server(answer, close_after=None)
        port = server.sockets[0].getsockname()[1]
        client = ShadowClient(f"http://127.0.0.1:{port}", limit=4)
        for _ in range(2):
            if expected is None:
                with pytest.raises(Exception, match="invalid HTTP answer"):
                    await client.post("/score", [], b"{}", 5)
            else:
                assert await client.post("/score", [], b"{}", 5) == expected
        client.close()
        server.close()


async def test_client_times_out_on_a_silent_server() -> None:
    import asyncio

    from scoring_runtime.server.shadow_client import ShadowClient

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = ShadowClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await client.post("/score", [], b"{}", 0.3)
    assert time.monotonic() - t0 < 2
    assert client._idle == [], "a timed-out connection is not reused"
    client.close()
    server.close()
