"""`scoring-operator`: run the ScoringModel operator (kopf, standalone, no peering).

Equivalent to `kopf run -m scoring_operator.handlers --standalone` with `SCORING_OPERATOR_*`
env vars, plus the Prometheus /metrics server and sensible logging.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from scoring_operator import config as cfg
from scoring_operator import metrics
from scoring_runtime import telemetry


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scoring-operator")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-n", "--namespace", "namespaces", multiple=True,
              help="Namespace to watch (repeatable). Default: all namespaces.")
@click.option("-A", "--all-namespaces", "all_namespaces", is_flag=True,
              help="Watch every namespace (the default when no --namespace is given).")
@click.option("--local-registry-root", type=click.Path(path_type=Path, file_okay=False),
              help="Where the operator reads the local file registry (its mount of the registry volume).")
@click.option("--runtime-image", help=f"Default runtime image [default: {cfg.DEFAULT_RUNTIME_IMAGE}].")
@click.option("--runtime-gpu-image",
              help=f"Default GPU/torch runtime image [default: {cfg.DEFAULT_RUNTIME_GPU_IMAGE}].")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Port of /metrics (0: off) [default: 8080].")
@click.option("--liveness-port", type=click.IntRange(0, 65535), help="Port of /healthz (0: off) [default: 8081].")
@click.option("--bind-address", help="Address the metrics and liveness servers listen on [default: 0.0.0.0].")
@click.option("--log-level", type=click.Choice(cfg.LOG_LEVELS, case_sensitive=False), help="[default: INFO]")
@click.version_option(package_name="scoring-operator")
def main(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    local_registry_root: Path | None,
    runtime_image: str | None,
    runtime_gpu_image: str | None,
    metrics_port: int | None,
    liveness_port: int | None,
    bind_address: str | None,
    log_level: str | None,
) -> None:
    """Run the operator that serves ScoringModel resources as scoring Deployments."""
    if all_namespaces and namespaces:
        raise click.UsageError("give --namespace or --all-namespaces, not both")
    try:
        config = cfg.OperatorConfig.load(
            namespaces=() if all_namespaces else (tuple(namespaces) or None),
            local_registry_root=local_registry_root,
            runtime_image=runtime_image,
            runtime_gpu_image=runtime_gpu_image,
            metrics_port=metrics_port,
            liveness_port=liveness_port,
            bind_address=bind_address,
            log_level=log_level.upper() if log_level else None,
        )
    except cfg.ConfigError as e:
        raise click.UsageError(str(e)) from e
    if config.local_registry_root is not None and not config.local_registry_root.is_dir():
        click.echo(
            f"warning: local registry root {config.local_registry_root} does not exist yet; "
            "ScoringModels using it report RegistryUnavailable until it does",
            err=True,
        )
    cfg.set_current(config)
    run(config)


def run(config: cfg.OperatorConfig) -> None:
    """Run kopf with the handlers of `scoring_operator.handlers` (blocks); they start /metrics."""
    import kopf

    import scoring_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    logging.basicConfig(
        level=getattr(logging, config.log_level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("aiohttp", "kubernetes", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if config.log_level != "DEBUG":  # kopf logs every handler call at INFO; our own lines say what matters
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # After basicConfig (it adds no handler once root has one); exports only with APPLICATIONINSIGHTS_CONNECTION_STRING.
    telemetry.configure_telemetry("scoring-operator", service_version=_version(), prometheus_registry=metrics.REGISTRY)
    liveness = f"http://{config.bind_address}:{config.liveness_port}/healthz" if config.liveness_port else None
    kopf.run(
        loop=_event_loop(),
        standalone=True,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        liveness_endpoint=liveness,
    )


def _event_loop() -> asyncio.AbstractEventLoop | None:
    """uvloop when installed (it is, with uvicorn[standard]): kopf's CLI picks it, `kopf.run` does not.

    Why: hundreds of watch events and API calls a second (a label move over 500 ScoringModels) cost
    noticeably less CPU on uvloop's transports than on asyncio's.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of uvicorn[standard]
        return None
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
