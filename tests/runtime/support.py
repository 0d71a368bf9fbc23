"""Shared helpers for the runtime and FAQ tests: a trained FAQ model, apps with their lifespan, free ports."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from scoring_runtime.registry import LocalFileRegistry
from scoring_runtime.settings import RuntimeSettings

REPO = Path(__file__).resolve().parents[2]
SCORING = [sys.executable, "-m", "scoring_runtime.cli"]
FAQ_EXAMPLE = REPO / "examples" / "faq-matching"


def train_module() -> ModuleType:
    """examples/faq-matching/train.py as a module (its folder name is not importable)."""
    name = "faq_matching_train"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FAQ_EXAMPLE / "train.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def build_faq_model(root: Path) -> tuple[Path, Path]:
    """Train + register the sample FAQ model into root/registry and fetch it; (registry, model dir)."""
    registry = root / "registry"
    assert train_module().main(["--registry", str(registry)]) == 0
    dest = root / "model"
    LocalFileRegistry(registry).fetch("faq-matcher", 1, dest)
    return registry, dest


def _is_scoring_setting(key: str) -> bool:
    return key.startswith("SCORING_") or key == "PROMETHEUS_MULTIPROC_DIR"


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCORING_* variables of the developer's shell must not change what a test configures."""
    for key in list(os.environ):
        if _is_scoring_setting(key):
            monkeypatch.delenv(key)


def settings(model_dir: Path, **overrides: Any) -> RuntimeSettings:
    return RuntimeSettings(model_dir=model_dir, **overrides)


@asynccontextmanager
async def serving(app: Starlette, wait_ready: bool = True, timeout_s: float = 30.0) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an in-process client (no sockets); optionally wait for ready."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://scoring.test") as client:
            if wait_ready:
                await wait_until_ready(client, timeout_s)
            yield client


async def wait_until_ready(client: httpx.AsyncClient, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        r = await client.get("/v2/health/ready")
        if r.status_code == 200:
            return
        body = r.json()
        if body.get("status") == "failed":
            raise AssertionError(f"model failed to load: {body}")
        if loop.time() > deadline:
            raise AssertionError(f"not ready after {timeout_s} s: {body}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_process_env() -> dict[str, str]:
    """os.environ without the SCORING_* settings of the developer's shell."""
    return {k: v for k, v in os.environ.items() if not _is_scoring_setting(k)}


@dataclass
class ServeProcess:
    url: str
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def scoring_serve(
    model_dir: Path, *extra: str, log: Path, env: dict[str, str] | None = None, ready_timeout: float = 60
) -> Iterator[ServeProcess]:
    """`scoring serve` as a real process on a free port, ready when entered; stopped with SIGTERM, exit 0 asserted.

    Its output goes to `log` (a pipe nobody reads could fill up and stall the server).
    """
    port = free_port()
    server = ServeProcess(url=f"http://127.0.0.1:{port}", log=log)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SCORING, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port), *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env if env is not None else clean_process_env(),
        )
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"scoring serve exited with {proc.returncode}:\n{server.output}")
                try:
                    if httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"scoring serve not ready within {ready_timeout:g} s:\n{server.output}")
                time.sleep(0.1)
            yield server
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    assert code == 0, server.output


def v2_questions(*questions: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "question", "datatype": "BYTES", "shape": [len(questions)], "data": list(questions)}]
    }
    if params:
        body["parameters"] = params
    return body
