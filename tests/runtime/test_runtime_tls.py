"""HTTPS served by `scoring serve` itself: start-up checks, a certificate rotated without a restart,
the connection guards over TLS, several workers."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from scoring_runtime.settings import RuntimeSettings
from tests.runtime.certs import Issued, TestCA, write_like_a_secret_volume
from tests.runtime.support import SCORING, clean_process_env, free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
BODY = {"question": "I forgot my console password"}


@dataclass
class HttpsServer:
    url: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve_https(model_dir: Path, tls_dir: Path, ca: TestCA, log: Path, *extra: str,
                env: dict[str, str] | None = None) -> Iterator[HttpsServer]:
    port = free_port()
    env = (env or clean_process_env()) | {"SCORING_TLS_CERT_FILE": str(tls_dir / "tls.crt"),
                                          "SCORING_TLS_KEY_FILE": str(tls_dir / "tls.key")}
    with log.open("w") as out:
        proc = subprocess.Popen([*SCORING, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port",
                                 str(port), *extra], stdout=out, stderr=subprocess.STDOUT, env=env)
    server = HttpsServer(f"https://localhost:{port}", port, log, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"scoring serve exited with {proc.returncode}:\n{server.output}"
            try:
                if httpx.get(f"{server.url}/v2/health/ready", verify=client_context(ca), timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{server.output}"
            time.sleep(0.2)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, server.output


def client_context(ca: TestCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.ca_file))


def peer_sha256(port: int, ca: TestCA) -> str:
    """The certificate a NEW connection is served (verified against the CA, name localhost)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, \
            client_context(ca).wrap_socket(s, server_hostname="localhost") as t:
        der = t.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


def install(tls_dir: Path, issued: Issued, ca: TestCA) -> None:
    write_like_a_secret_volume(tls_dir, {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem,
                                         "ca.crt": ca.ca_pem})


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


# ------------------------------------------------------------------------------------------ settings


def test_cert_and_key_come_together(faq_dir: Path, tmp_path: Path) -> None:
    cert = tmp_path / "tls.crt"
    cert.write_text("x")
    with pytest.raises(ValidationError, match="tls_cert_file is set but tls_key_file is not"):
        RuntimeSettings(model_dir=faq_dir, tls_cert_file=cert)
    with pytest.raises(ValidationError, match="tls_key_file is set but tls_cert_file is not"):
        RuntimeSettings(model_dir=faq_dir, tls_key_file=cert)
    assert RuntimeSettings(model_dir=faq_dir, tls_cert_file=cert, tls_key_file=cert).tls
    assert not RuntimeSettings(model_dir=faq_dir).tls


@pytest.mark.parametrize("case", ["missing-cert", "not-pem", "key-of-another-cert", "garbled-cert"])
def test_unusable_certificates_stop_start_up_with_one_line(case: str, faq_dir: Path, ca: TestCA,
                                                           tmp_path: Path) -> None:
    good, other = ca.issue(["localhost"]), ca.issue(["localhost"])
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(good.cert_pem)
    key.write_bytes(good.key_pem)
    expected = {"missing-cert": "does not exist", "not-pem": "holds no PEM certificate",
                "key-of-another-cert": "the key does not belong to the certificate",
                "garbled-cert": "not a valid PEM certificate or key"}[case]
    if case == "missing-cert":
        cert.unlink()
    elif case == "not-pem":
        cert.write_text("hello")
    elif case == "key-of-another-cert":
        key.write_bytes(other.key_pem)
    else:
        lines = good.cert_pem.splitlines()
        cert.write_bytes(b"\n".join([lines[0], lines[1][:-9] + b"AAAAAAAAA", *lines[2:]]))
    env = clean_process_env() | {"SCORING_TLS_CERT_FILE": str(cert), "SCORING_TLS_KEY_FILE": str(key)}
    t0 = time.monotonic()
    out = subprocess.run([*SCORING, "serve", "--model-dir", str(faq_dir), "--port", str(free_port())], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert out.stderr.startswith("error: ") and expected in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert time.monotonic() - t0 < 30, "fails before loading the model"


# ------------------------------------------------------------------------------------------ serving


def test_https_rotation_without_restart(faq_dir: Path, ca: TestCA, tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    first = ca.issue(["localhost"], ips=("127.0.0.1",))
    install(tls_dir, first, ca)
    with serve_https(faq_dir, tls_dir, ca, tmp_path / "serve.log") as server:
        with httpx.Client(verify=client_context(ca), timeout=10) as client:
            r = client.post(f"{server.url}/score", json=BODY)
            assert r.status_code == 200, r.text
            assert r.json()["matches"][0]["id"] == 101
            assert peer_sha256(server.port, ca) == first.sha256
            # Plain HTTP on the HTTPS port gets no answer.
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=5)

            # A mismatched update (key of another certificate) is refused: the old certificate stays.
            stray = ca.issue(["localhost"])
            write_like_a_secret_volume(tls_dir, {"tls.crt": first.cert_pem, "tls.key": stray.key_pem,
                                                 "ca.crt": ca.ca_pem})
            time.sleep(2.5)
            assert peer_sha256(server.port, ca) == first.sha256
            assert "tls_reload_failed" in server.output
            assert client.get(f"{server.url}/v2/health/ready").status_code == 200

            # A proper rotation: new connections get the new certificate within seconds, no restart.
            second = ca.issue(["localhost"])
            install(tls_dir, second, ca)
            deadline = time.monotonic() + 10
            while peer_sha256(server.port, ca) != second.sha256:
                assert time.monotonic() < deadline, server.output
                time.sleep(0.2)
            assert server.proc.poll() is None
            # the kept-alive connection opened before the rotation still works; new ones too
            assert client.post(f"{server.url}/score", json=BODY).status_code == 200
        assert httpx.post(f"{server.url}/score", json=BODY, verify=client_context(ca)).status_code == 200
        assert server.output.count('"tls_reloaded"') == 1, server.output


def test_connection_guards_hold_over_tls(faq_dir: Path, ca: TestCA, tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    install(tls_dir, ca.issue(["localhost"]), ca)
    env = clean_process_env() | {"SCORING_MAX_HEADER_BYTES": "4096", "SCORING_HEADER_TIMEOUT_S": "1"}
    with serve_https(faq_dir, tls_dir, ca, tmp_path / "serve.log", env=env) as server:
        r = httpx.get(f"{server.url}/v2/health/live", headers={"x-big": "a" * 8000}, verify=client_context(ca))
        assert r.status_code == 431, r.text
        # a TLS client that sends half a request line is cut off by the header timeout
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s, \
                client_context(ca).wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(b"GET /v2/health/li")
            t0 = time.monotonic()
            got = t.recv(4096)
            assert b"408" in got, got
            assert time.monotonic() - t0 < 4


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two worker processes need two cores")
def test_https_with_two_workers(faq_dir: Path, ca: TestCA, tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    install(tls_dir, ca.issue(["localhost"]), ca)
    with serve_https(faq_dir, tls_dir, ca, tmp_path / "serve.log", "--workers", "2") as server, \
            httpx.Client(verify=client_context(ca), timeout=10) as client:
        for _ in range(4):
            assert client.post(f"{server.url}/score", json=BODY, headers={"connection": "close"}).status_code == 200
