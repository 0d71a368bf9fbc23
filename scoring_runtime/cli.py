"""`scoring`: one CLI for the registry, the init container's fetch, and the model server."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from scoring_runtime.manifest import MANIFEST_FILE, ModelManifest
from scoring_runtime.registry import ModelRegistry, RegistryError, open_registry
from scoring_runtime.registry.local import LocalFileRegistry, prepare_dest, verify_file

REGISTRY_HELP = "registry: a directory, file:///abs/root, or azureml://... (env SCORING_REGISTRY)"


def fail(message: str, code: int = 1) -> NoReturn:
    """Errors are one clear line on stderr plus a non-zero exit code."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Progress:
    """A throttled one-line progress report on stderr (only on a terminal, or every 5 s otherwise)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int, current: str) -> None:
        now = time.monotonic()
        if done < total and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        line = f"{self.label}: {done / 1e6:8.1f}/{total / 1e6:.1f} MB ({pct:5.1f}%) {current}"
        if self.tty:
            click.echo("\r" + line[:120].ljust(120), err=True, nl=False)
            self.shown = True
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.shown:
            click.echo("", err=True)


def _registry_cmd(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--registry", "registry", envvar="SCORING_REGISTRY", required=True, help=REGISTRY_HELP)(fn)


def _open(uri: str) -> ModelRegistry:
    """open_registry, with a bad URI reported as a one-line error instead of a traceback."""
    try:
        return open_registry(uri)
    except RegistryError as e:
        fail(str(e))


def _local(uri: str) -> LocalFileRegistry:
    reg = _open(uri)
    if not isinstance(reg, LocalFileRegistry):
        fail(f"{uri}: this command only works on a local file registry")
    return reg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scoring-operator")
def main() -> None:
    """Register, fetch and serve scoring models."""


@main.command()
@_registry_cmd
@click.option("--name", required=True, help="model name (lowercase letters, digits, . _ -)")
@click.option("--path", "path", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="directory with the artifacts and a model.json (framework, task, flavour)")
@click.option("--no-latest", is_flag=True, help="do not move the `latest` label to the new version")
def register(registry: str, name: str, path: Path, no_latest: bool) -> None:
    """Register DIR as the next version of NAME; prints the new version number."""
    reg = _local(registry)
    progress = _Progress(f"register {name}")
    try:
        manifest = reg.register(name, path, progress=progress, set_latest=not no_latest)
    except (RegistryError, ValueError, OSError) as e:
        progress.close()
        fail(str(e))
    progress.close()
    click.echo(str(manifest.version))


@main.command()
@_registry_cmd
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def models(registry: str, name: str | None, as_json: bool) -> None:
    """List models, or the versions and labels of NAME."""
    reg = _open(registry)
    try:
        names = [name] if name else reg.list_models()
    except RegistryError as e:
        fail(str(e))
    rows = []
    for n in names:
        try:
            rows.extend(reg.list_versions(n))
        except RegistryError as e:
            if name:  # the one model asked for
                fail(str(e))
            click.echo(f"warning: model {n!r} cannot be listed: {e}", err=True)
    for r in rows:
        if r.error:  # listed below all the same, so one broken version never hides the good ones
            click.echo(f"warning: {r.name} version {r.version} is unusable: {r.error}", err=True)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=2, default=list))
        return
    if not rows:
        click.echo("(no models)")
        return
    click.echo(f"{'NAME':<24} {'VERSION':>7}  {'FRAMEWORK':<9} {'TASK':<22} {'CREATED':<26} LABELS")
    for r in rows:
        created = "INVALID (see warning)" if r.error else r.created[:26]
        click.echo(
            f"{r.name:<24} {r.version:>7}  {r.framework:<9} {r.task:<22} {created:<26} {','.join(r.labels)}"
        )


@main.command()
@_registry_cmd
@click.option("--name", required=True)
@click.option("--label", required=True, help="label to set, e.g. latest or prod")
@click.option("--version", type=int, required=True, help="version the label points at")
def label(registry: str, name: str, label: str, version: int) -> None:
    """Point LABEL at VERSION (moving `latest` back is a rollback)."""
    reg = _local(registry)
    try:
        reg.set_label(name, label, version)
    except RegistryError as e:
        fail(str(e))
    click.echo(f"{name}: {label} -> {version}")


def _already_fetched(dest: Path, name: str, version: int) -> ModelManifest | None:
    """The manifest in `dest` when it is `name` version `version` and every file's sha256 verifies, else None.

    model.json is written last by a fetch, so without it (or with a file that fails) `dest` holds a
    partial or different model.
    """
    try:
        manifest = ModelManifest.model_validate_json((dest / MANIFEST_FILE).read_bytes())
        if (manifest.name, manifest.version) != (name, version):
            return None
        for entry in manifest.files:
            verify_file(entry, dest / entry.path)
    except (OSError, ValueError, RegistryError):
        return None
    return manifest


def _refuse_dest_in_registry(dest: Path, root: Path, clean: bool) -> None:
    """A fetch writes (and --clean empties) DEST: never the registry, a directory inside it, or one holding it."""
    d, r = dest.expanduser().resolve(), root.expanduser().resolve()
    if d == r or d.is_relative_to(r) or (clean and r.is_relative_to(d)):
        where = "is the registry root" if d == r else ("is inside" if d.is_relative_to(r) else "contains")
        fail(f"refusing to fetch into {dest}: it {where} {'' if d == r else 'the registry '}{root}"
             f"{' and --clean would delete registered models' if clean else ''}; give a directory outside it")


@main.command()
@_registry_cmd
@click.option("--name", required=True)
@click.option("--version", type=int, default=None, help="pinned version")
@click.option("--label", default=None, help="label to resolve (default: latest)")
@click.option("--dest", required=True, type=click.Path(path_type=Path), help="empty directory to fetch into")
@click.option("--clean", is_flag=True, help="DEST is dedicated to this model: remove what is in it (e.g. a partial "
              "earlier fetch) instead of refusing")
def fetch(registry: str, name: str, version: int | None, label: str | None, dest: Path, clean: bool) -> None:
    """Fetch a model version into DEST and verify every sha256 (the scoring pod's init container).

    Idempotent: when DEST already holds this version and every file verifies, nothing is copied.
    """
    if version is not None and label is not None:
        fail("give --version or --label, not both")
    if version is None and label is None:
        label = "latest"
    # A pinned version already in DEST (an init container restarted after a complete fetch) needs no registry.
    done = _already_fetched(dest, name, version) if version is not None else None
    if done is not None:
        click.echo(f"{dest} already holds {name} version {version}: {len(done.files)} files verified", err=True)
        return
    reg = _open(registry)
    if isinstance(reg, LocalFileRegistry):
        _refuse_dest_in_registry(dest, reg.root, clean)
    progress = _Progress(f"fetch {name}")
    try:
        resolved = reg.resolve(name, version=version, label=label)
        done = _already_fetched(dest, resolved.name, resolved.version) if version is None else None
        if done is not None:
            progress.close()
            click.echo(f"{dest} already holds {resolved.name} version {resolved.version}: "
                       f"{len(done.files)} files verified", err=True)
            return
        if clean:
            prepare_dest(dest, clean=True)
        manifest = reg.fetch(resolved.name, resolved.version, dest, progress=progress)
    except FileExistsError as e:
        progress.close()
        fail(f"{e}, or pass --clean to remove its contents first (only for a directory dedicated to this model)")
    except (RegistryError, OSError, ValueError) as e:
        progress.close()
        fail(str(e))
    progress.close()
    click.echo(
        f"fetched {manifest.name} version {manifest.version} ({resolved.resolved_from}) "
        f"into {dest}: {len(manifest.files)} files verified",
        err=True,
    )


@main.command()
@click.option("--model-dir", type=click.Path(path_type=Path), help="model directory (what `scoring fetch` wrote) "
              "[env SCORING_MODEL_DIR]")
@click.option("--host", help="interface to bind [127.0.0.1; env SCORING_HOST]")
@click.option("--port", type=int, help="TCP port [8080; env SCORING_PORT]")
@click.option("--workers", type=int, help="server processes [1; env SCORING_WORKERS]")
@click.option("--threads", type=int, help="model/parse threads per process [env SCORING_THREADS]")
@click.option("--api-key-file", type=click.Path(path_type=Path),
              help="file of accepted API keys, one per line [env SCORING_API_KEY_FILE]")
@click.option("--tls-cert-file", type=click.Path(path_type=Path),
              help="serve HTTPS with this PEM certificate (chain) [env SCORING_TLS_CERT_FILE]")
@click.option("--tls-key-file", type=click.Path(path_type=Path),
              help="the certificate's PEM key, unencrypted [env SCORING_TLS_KEY_FILE]")
@click.option("--max-body-bytes", type=int, help="largest request body [10 MiB; env SCORING_MAX_BODY_BYTES]")
@click.option("--allow-pickle/--no-allow-pickle", default=None,
              help="allow pickle/joblib models: they can run code! [off; env SCORING_ALLOW_PICKLE]")
@click.option("--max-batch-size", type=int,
              help="rows per model call; >1 enables batching [env SCORING_MAX_BATCH_SIZE]")
@click.option("--max-batch-delay-ms", type=float, help="longest wait to fill a batch [env SCORING_MAX_BATCH_DELAY_MS]")
@click.option("--device", help="PyTorch models: auto, cpu, cuda, cuda:N [auto; env SCORING_DEVICE]")
@click.option("--half-precision/--no-half-precision", default=None,
              help="PyTorch models: fp16 on a GPU [off; env SCORING_HALF_PRECISION]")
@click.option("--torch-threads", type=int, help="PyTorch models: intra-op threads [CPUs / workers; env "
              "SCORING_TORCH_THREADS]")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"],
              case_sensitive=False), help="[info; env SCORING_LOG_LEVEL]")
@click.option("--log-format", type=click.Choice(["json", "text"]), help="[json; env SCORING_LOG_FORMAT]")
@click.option("--access-log/--no-access-log", default=None, help="log every request [off; env SCORING_ACCESS_LOG]")
def serve(**options: Any) -> None:
    """Serve a model directory over HTTP (Open Inference Protocol V2, /score, /metrics)."""
    from pydantic import ValidationError

    from scoring_runtime.server.run import ServeError
    from scoring_runtime.server.run import serve as run_server
    from scoring_runtime.settings import RuntimeSettings

    given = {k: v for k, v in options.items() if v is not None}
    try:
        settings = RuntimeSettings(**given)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        )
        fail(f"invalid serve settings: {problems} (flags or SCORING_* environment variables)")
    try:
        run_server(settings)
    except ServeError as e:
        fail(str(e))


if __name__ == "__main__":  # pragma: no cover
    main()
