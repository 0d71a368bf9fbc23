"""Run the server under uvicorn (uvloop + httptools when installed): `scoring serve` calls `serve`.

Start-up checks what can be checked cheaply before binding a port (manifest, flavour, API key
file), so a bad model directory fails at once with one line. The model itself loads in the
background; if that fails, the whole server exits non-zero (with `--workers N` the failing worker
stops the supervisor too), so Kubernetes restarts the pod and shows the error instead of a pod
that is live but never ready.
"""

from __future__ import annotations

import functools
import logging.config
import os
import shutil
import signal
import tempfile
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from scoring_runtime.flavours import flavour_class
from scoring_runtime.flavours.errors import ModelLoadError
from scoring_runtime.manifest import load_manifest
from scoring_runtime.server.app import READY_DIR_ENV
from scoring_runtime.server.auth import read_api_keys
from scoring_runtime.server.logs import log_config
from scoring_runtime.server.memory import limit_malloc_arenas
from scoring_runtime.server.metrics import MULTIPROC_ENV
from scoring_runtime.server.protocol import GuardedHttpToolsProtocol
from scoring_runtime.server.tls import TlsError, context_factory, server_context
from scoring_runtime.settings import RuntimeSettings

SETTINGS_ENV = "_SCORING_SERVE_SETTINGS"  # the parent's validated settings, for worker processes
FATAL_ENV = "_SCORING_SERVE_FATAL_FILE"  # where a worker leaves the reason it stopped the server
GRACEFUL_S = 20


class ServeError(Exception):
    """`scoring serve` cannot start or the model failed to load; the message is one line."""


def preflight(settings: RuntimeSettings) -> None:
    """Fail fast on what is wrong before any port is bound or worker started."""
    try:
        manifest = load_manifest(settings.model_dir)
    except FileNotFoundError as e:
        raise ServeError(str(e)) from None
    except ValueError as e:
        raise ServeError(f"{settings.model_dir}/model.json is not a valid manifest: "
                         f"{str(e).splitlines()[0]}") from None
    try:
        flavour_class(manifest)
    except ModelLoadError as e:
        raise ServeError(str(e)) from None
    missing = [f.path for f in manifest.files if not (settings.model_dir / f.path).is_file()]
    if missing:
        raise ServeError(f"{settings.model_dir} lacks files its manifest lists: {', '.join(missing)}")
    if settings.api_key_file is not None:
        try:
            read_api_keys(settings.api_key_file)
        except ValueError as e:
            raise ServeError(str(e)) from None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        try:
            server_context(settings.tls_cert_file, settings.tls_key_file)
        except TlsError as e:
            raise ServeError(str(e)) from None


def _stop_supervisor(reason: str) -> None:
    """on_fatal in a worker: stop the supervisor (our parent), which stops all workers."""
    _record_fatal(reason)
    os.kill(os.getppid(), signal.SIGTERM)


def _ignore_signal(signum: int, frame: object) -> None:
    return None


def _record_fatal(reason: str) -> None:
    path = os.environ.get(FATAL_ENV)
    if path:
        Path(path).write_text(reason, encoding="utf-8")


def app_from_env() -> Starlette:
    """uvicorn factory for worker processes: the settings the parent validated, passed by env."""
    from scoring_runtime.server.app import create_app

    settings = RuntimeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    limit_malloc_arenas(settings.malloc_arenas)
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    return create_app(settings, on_fatal=_stop_supervisor)


def serve(settings: RuntimeSettings) -> None:
    """Serve until SIGTERM/SIGINT; raises ServeError when start-up or the model load fails."""
    preflight(settings)
    limit_malloc_arenas(settings.malloc_arenas)  # before any thread is started
    cfg = log_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(cfg)
    workdir = Path(tempfile.mkdtemp(prefix="scoring-serve-"))
    fatal_file = workdir / "fatal"
    os.environ[FATAL_ENV] = str(fatal_file)
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_config": cfg,
        "access_log": False,  # ours (settings.access_log) never logs headers or bodies
        "server_header": False,
        # nothing here reads the client's address or scheme: no X-Forwarded-* parsing on every request
        "proxy_headers": False,
        "timeout_graceful_shutdown": GRACEFUL_S,
        "lifespan": "on",
        # httptools plus header size/count limits and header/body timeouts (see server/protocol.py)
        "http": GuardedHttpToolsProtocol,
    }
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        # HTTPS with a certificate re-read when its files change (server/tls.py); built in each worker
        common["ssl_context_factory"] = functools.partial(
            context_factory, str(settings.tls_cert_file), str(settings.tls_key_file))
    # uvicorn re-raises the SIGTERM/SIGINT that stopped it once it has shut down gracefully; with
    # the default handlers that would kill us (exit -15). A stop by signal is a clean exit here.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore_signal)
    try:
        if settings.workers == 1:
            from scoring_runtime.server.app import create_app

            server: uvicorn.Server | None = None

            def stop(reason: str) -> None:
                # Not SIGTERM: uvicorn re-raises a caught signal after shutdown, killing us before
                # we can report the reason and exit 1.
                _record_fatal(reason)
                if server is not None:
                    server.should_exit = True

            app = create_app(settings, on_fatal=stop)
            server = uvicorn.Server(uvicorn.Config(app, **common))  # type: ignore[arg-type]
            try:
                server.run()
            except TlsError as e:  # the files changed for the worse since preflight
                raise ServeError(str(e)) from None
        else:
            # Workers share metrics through files in a fresh directory (see server/metrics.py).
            metrics_dir = workdir / "metrics"
            metrics_dir.mkdir()
            os.environ[MULTIPROC_ENV] = str(metrics_dir)
            os.environ[SETTINGS_ENV] = settings.model_dump_json()
            ready_dir = workdir / "ready"
            ready_dir.mkdir()
            os.environ[READY_DIR_ENV] = str(ready_dir)
            uvicorn.run("scoring_runtime.server.run:app_from_env", factory=True, workers=settings.workers,
                        **common)  # type: ignore[arg-type]
        if fatal_file.exists():
            raise ServeError(f"the model failed to load: {fatal_file.read_text(encoding='utf-8')}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
