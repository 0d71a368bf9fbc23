"""The servers under test: this runtime (`scoring serve`), the floor app, and the peers: MLServer,
KServe's Python model server, LitServe and the Azure ML inference server.

The peers live in their own virtualenvs under bench/.work/ (their pinned dependencies conflict
with ours and with each other); `ensure_venvs` creates them once, with the same scikit-learn,
skops and numpy versions as ours so they load the very same model file through the flavour's
public interface (peer_apps/faq_work.py). Every server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
APPS = HERE / "peer_apps"

PEERS = {
    "mlserver": ["mlserver", "mlserver-sklearn"],
    "kserve": ["kserve"],
    "litserve": ["litserve", "pyzmq"],
    "amlserver": ["azureml-inference-server-http"],
}
# MLServer 1.7.1's inference workers crash with uvloop >= 0.22 (SeldonIO/MLServer#2286)
PEER_PINS: dict[str, dict[str, str]] = {"mlserver": {"uvloop": "0.21.0"}, "kserve": {}, "litserve": {},
                                        "amlserver": {}}
# what the peers need besides themselves: our model's libraries at our versions, and what
# `scoring_runtime.flavours` imports when skops rebuilds the FAQ pipeline's PairFeatures class
SHARED = ["scikit-learn", "skops", "numpy", "scipy"]
EXTRA = ["orjson", "pydantic", "pydantic-settings"]


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def venv_python(name: str) -> Path:
    return WORK / name / "bin" / "python"


def venv_versions(name: str, dists: list[str]) -> dict[str, str]:
    code = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = metadata.version(d)\n"
        "    except metadata.PackageNotFoundError: out[d] = 'absent'\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([str(venv_python(name)), "-c", code, *dists], capture_output=True, text=True, check=True)
    return dict(json.loads(res.stdout))


def ensure_venvs(log: Callable[[str], None], names: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Create/complete bench/.work/<peer> for each peer; returns the peer versions installed."""
    pins = [f"{d}=={version(d)}" for d in SHARED if version(d) != "absent"]  # the model's libraries, as ours
    out = {}
    for name, dists in PEERS.items():
        if names is not None and name not in names:
            continue
        py = venv_python(name)
        if not py.exists():
            log(f"creating virtualenv bench/.work/{name} (once; a few minutes)")
            subprocess.run([sys.executable, "-m", "venv", str(WORK / name)], check=True)
        want_pinned = {p.split("==")[0]: p.split("==")[1] for p in pins} | PEER_PINS[name]
        have = venv_versions(name, dists + EXTRA + list(want_pinned))
        missing = [d for d in dists + EXTRA if have[d] == "absent"]
        wrong = [f"{d}=={v}" for d, v in want_pinned.items() if have.get(d) != v]
        if missing or wrong:
            log(f"installing into bench/.work/{name}: {' '.join(missing + wrong)}")
            pinned = [f"{d}=={v}" for d, v in want_pinned.items()]
            subprocess.run([str(py), "-m", "pip", "install", "-q", *dists, *EXTRA, *pinned], check=True)
            have = venv_versions(name, dists + EXTRA + list(want_pinned))
        out[name] = have
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Server:
    """A server process; `stop()` terminates it and its process group (then kills it after a grace period)."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    ready_url: str
    meta: dict[str, str] = field(default_factory=dict)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}")
            if http_ok(self.ready_url):
                return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 25) -> str:
        self.log_file.flush()
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pause(self) -> None:
        """Stop the server's whole process group (SIGSTOP) while another server is measured.

        Servers share one CPU, and an idle server is not always idle: LitServe's worker processes poll
        their queues (~12 % of a core measured with no request in flight), which would take the core
        from, and interrupt the requests of, whichever server is being measured.
        """
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()  # a paused group would not act on SIGTERM
        # Servers with worker processes (MLServer, LitServe, gunicorn) run in their own session
        # (start_new_session): signal the whole group so no worker outlives the benchmark.
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
        self.log_file.close()


@contextlib.contextmanager
def alone(measured: Server, servers: Iterable[Server]) -> Iterator[None]:
    """While measuring `measured`, pause every other server (see `Server.pause`), so that it has the CPU
    to itself as it would in its own pod."""
    others = list({s.pid: s for s in servers if s.pid != measured.pid}.values())
    for s in others:
        s.pause()
    try:
        yield
    finally:
        for s in others:
            s.resume()


def _start(name: str, cmd: list[str], env: dict[str, str], cpus: set[int] | None, ready_path: str, port: int,
           cwd: Path | None = None) -> Server:
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    log_file = log_path.open("wb")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    full_env = {**os.environ, **env}
    proc = subprocess.Popen(cmd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd,
                            preexec_fn=pin, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    return Server(name, url, proc, log_path, log_file, url + ready_path)


def start_ours(name: str, model_dir: Path, cpus: set[int] | None, settings: dict[str, str]) -> Server:
    """`scoring serve`, configured through SCORING_* variables (as the operator configures pods)."""
    port = free_port()
    scoring = shutil.which("scoring") or "scoring"
    env = {"SCORING_MODEL_DIR": str(model_dir), "SCORING_HOST": "127.0.0.1", "SCORING_PORT": str(port),
           "SCORING_LOG_LEVEL": "warning", **settings}
    cmd = [scoring, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    return _start(name, cmd, env, cpus, "/v2/health/ready", port)


def start_mlserver(model_dir: Path, model_name: str, cpus: set[int] | None, max_batch_size: int,
                   max_batch_time_s: float) -> Server:
    port = free_port()
    root = WORK / "mlserver-repo"
    shutil.rmtree(root, ignore_errors=True)
    (root / model_name).mkdir(parents=True)
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 1, "debug": False, "metrics_dir": str(WORK / "mlserver-metrics"),
    }), encoding="utf-8")
    model_settings: dict[str, object] = {
        "name": model_name,
        "implementation": "mlserver_faq.FAQRuntime",
        "parameters": {"uri": str(model_dir), "version": "1"},
    }
    if max_batch_size > 1:
        model_settings.update(max_batch_size=max_batch_size, max_batch_time=max_batch_time_s)
    (root / model_name / "model-settings.json").write_text(json.dumps(model_settings), encoding="utf-8")
    env = {"PYTHONPATH": f"{APPS}{os.pathsep}{REPO}", "MLSERVER_LOGGING_LEVEL": "WARNING"}
    cmd = [str(WORK / "mlserver" / "bin" / "mlserver"), "start", str(root)]
    return _start("mlserver", cmd, env, cpus, f"/v2/models/{model_name}/ready", port, cwd=root)


def start_amlserver(model_dir: Path, cpus: set[int] | None) -> Server:
    port = free_port()
    env = {"PYTHONPATH": f"{APPS}{os.pathsep}{REPO}", "WORKER_COUNT": "1"}
    cmd = [str(venv_python("amlserver")), str(APPS / "aml_launch.py"), "--entry_script",
           str(APPS / "aml_score.py"), "--model_dir", str(model_dir), "--port", str(port), "--worker_count", "1"]
    return _start("aml-inference-server", cmd, env, cpus, "/", port, cwd=APPS)


def start_floor(cpus: set[int] | None, response_file: Path) -> Server:
    """The floor: a bare ASGI app (bench/floor_app.py) on uvicorn with `scoring serve`'s settings
    (uvloop, httptools, one worker, no access log, no server header, no proxy headers), answering
    canned bytes."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "floor_app:app", "--host", "127.0.0.1", "--port", str(port),
           "--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log", "--no-server-header",
           "--no-proxy-headers", "--log-level", "warning"]
    return _start("floor", cmd, {"FLOOR_RESPONSE": str(response_file)}, cpus, "/", port, cwd=HERE)


def start_kserve(model_dir: Path, model_name: str, cpus: set[int] | None) -> Server:
    port = free_port()
    env = {"PYTHONPATH": f"{APPS}{os.pathsep}{REPO}", "KSERVE_LOGLEVEL": "WARNING"}
    cmd = [str(venv_python("kserve")), str(APPS / "kserve_faq.py"), "--model_dir", str(model_dir),
           "--http_port", str(port), "--model_name", model_name]
    return _start("kserve", cmd, env, cpus, f"/v2/models/{model_name}/ready", port, cwd=APPS)


def start_litserve(model_dir: Path, cpus: set[int] | None, max_batch_size: int, batch_timeout_s: float) -> Server:
    port = free_port()
    env = {"PYTHONPATH": f"{APPS}{os.pathsep}{REPO}", "LITSERVE_LOG_LEVEL": "WARNING"}
    cmd = [str(venv_python("litserve")), str(APPS / "litserve_faq.py"), "--model_dir", str(model_dir),
           "--port", str(port), "--max_batch_size", str(max_batch_size), "--batch_timeout", str(batch_timeout_s)]
    return _start("litserve", cmd, env, cpus, "/health", port, cwd=APPS)
