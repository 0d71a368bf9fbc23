"""`configure_telemetry()`: one call at start-up wires logs, traces and metrics to Azure Monitor.

Nothing is exported, and neither OpenTelemetry nor the Azure exporter is imported, unless
`APPLICATIONINSIGHTS_CONNECTION_STRING` (or `connection_string=`) is set. Log scrubbing is
installed either way. Prometheus stays the source of truth for metrics: the bridge reads the
prometheus_client registry the service already serves on /metrics.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scoring_runtime.telemetry.scrub import install_log_scrubbing, register_secret, scrub, scrub_mapping

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from prometheus_client import CollectorRegistry

    from scoring_runtime.telemetry.prometheus_bridge import PrometheusBridge

CONNECTION_STRING_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
#: Microsoft's own SDK self-telemetry and remote feature flags: off unless the user opts in.
PRIVACY_DEFAULTS = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}
#: Loggers never forwarded to Azure Monitor: the export pipeline's own chatter would feed itself.
EXPORT_LOOP_LOGGERS = ("azure.core.pipeline", "azure.monitor", "opentelemetry", "urllib3")

#: Longest a shutdown waits for the last export (the pod's termination grace period is 30 s by default).
SHUTDOWN_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)
_lock = threading.Lock()
_active: Telemetry | None = None
_exit_hook = False


def _register_exit_hook() -> None:
    """Flush what is still queued (last metric interval, batched spans/logs) when the process exits."""
    global _exit_hook
    _exit_hook = True
    atexit.register(shutdown_telemetry)


class _ExportOnce(logging.Filter):
    """Forward each record once (the handler sits on non-propagating loggers and on root) and never the
    export pipeline's own records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(EXPORT_LOOP_LOGGERS) or getattr(record, "_scoring_exported", False):
            return False
        record._scoring_exported = True
        return True


@dataclass
class Telemetry:
    """The configured providers; `shutdown()` flushes and detaches everything."""

    service_name: str
    resource: Resource
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    bridge: PrometheusBridge
    log_handler: logging.Handler
    log_targets: list[logging.Logger] = field(default_factory=list)

    @property
    def tracer(self) -> Tracer:
        return self.tracer_provider.get_tracer("scoring")

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        ms = int(timeout_s * 1000)
        results = [
            self.tracer_provider.force_flush(ms),
            self.logger_provider.force_flush(ms),
            self.bridge.force_flush(ms),
        ]
        return all(results)

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Flush and stop, giving up after `timeout_s`: an unreachable ingestion endpoint must not hold
        up a pod's termination (the exporters' own HTTP timeouts and retries add up to minutes).

        The three parts stop in parallel daemon threads so each is marked shut down at once (their
        atexit hooks then return immediately); what is still unsent at the deadline is dropped.
        """
        for target in self.log_targets:
            target.removeHandler(self.log_handler)
        ms = int(timeout_s * 1000)
        parts: list[tuple[str, Callable[[], object]]] = [
            ("metrics", lambda: self.bridge.shutdown(ms)),
            ("traces", self.tracer_provider.shutdown),
            ("logs", self.logger_provider.shutdown),
        ]
        threads = []
        for what, stop in parts:
            thread = threading.Thread(target=_quietly, args=(what, stop), name=f"telemetry-stop-{what}", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no new threads at interpreter shutdown: stop inline
                _quietly(what, stop)
                continue
            threads.append(thread)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [t.name.removeprefix("telemetry-stop-") for t in threads if t.is_alive()]
        if late:
            log.warning(
                "telemetry: Azure Monitor did not take the last %s within %.0f s (ingestion endpoint "
                "unreachable?); stopping without them", ", ".join(late), timeout_s,
            )
        return not late


def _quietly(what: str, stop: Callable[[], object]) -> None:
    try:
        stop()
    except Exception as e:  # telemetry must never take the service down, not even at exit
        log.warning("telemetry: stopping the %s export failed: %s", what, scrub(str(e)))


def register_secret_file(path: str | Path) -> int:
    """Register every key line of a secrets file (the runtime's API key file: `#` comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        log.warning("cannot read secrets file %s for log redaction: %s", path, e.strerror)
        return 0
    return sum(register_secret(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#"))


def _resource(service_name: str, service_version: str | None, extra: Mapping[str, str]) -> Resource:
    from opentelemetry.sdk.resources import Resource

    attrs: dict[str, Any] = {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name}
    if service_version:
        attrs["service.version"] = service_version
    pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME")
    for key, value in (
        ("k8s.pod.name", pod),
        ("service.instance.id", pod),
        ("k8s.namespace.name", os.environ.get("POD_NAMESPACE")),
        ("k8s.node.name", os.environ.get("NODE_NAME")),
    ):
        if value:
            attrs[key] = value
    attrs.update(extra)
    return Resource.create(attrs)  # also merges OTEL_RESOURCE_ATTRIBUTES


def configure_telemetry(
    service_name: str,
    *,
    service_version: str | None = None,
    connection_string: str | None = None,
    prometheus_registry: CollectorRegistry | None = None,
    metric_interval_s: float = 60.0,
    log_level: int = logging.INFO,
    log_loggers: Sequence[str] = ("", "uvicorn", "scoring_runtime", "scoring_operator", "kopf"),
    secret_files: Sequence[str | Path] = (),
    resource_attributes: Mapping[str, str] | None = None,
    offline_storage_dir: str | None = None,
    exporter_options: Mapping[str, Any] | None = None,
    set_global: bool = True,
) -> Telemetry | None:
    """Scrub logs always; export to Azure Monitor when a connection string is configured.

    Returns the active Telemetry, or None when nothing is exported. Calling it again replaces
    the previous configuration. `exporter_options` go to the three Azure Monitor exporters
    (e.g. `credential=` for Entra ID authenticated ingestion).
    """
    global _active
    install_log_scrubbing()
    for path in secret_files:
        register_secret_file(path)
    cs = connection_string if connection_string is not None else os.environ.get(CONNECTION_STRING_ENV, "")
    cs = cs.strip()
    storage = {"storage_directory": offline_storage_dir} if offline_storage_dir else {"disable_offline_storage": True}
    if not cs:
        shutdown_telemetry()
        return None
    register_secret(cs)
    for part in cs.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "instrumentationkey":
            register_secret(value.strip())
    for key, value in PRIVACY_DEFAULTS.items():
        os.environ.setdefault(key, value)

    from scoring_runtime.telemetry._providers import build

    try:
        telemetry = build(
            service_name=service_name,
            resource=_resource(service_name, service_version, resource_attributes or {}),
            connection_string=cs,
            prometheus_registry=prometheus_registry,
            metric_interval_s=metric_interval_s,
            log_level=log_level,
            log_loggers=log_loggers,
            log_filter=_ExportOnce(),
            exporter_options={
                **storage,
                **(exporter_options or {}),
            },
            set_global=set_global,
        )
    except ValueError as e:
        # Telemetry is optional: a typo in the secret must not crash-loop a scoring pod or the operator.
        # The exporters reject a malformed string in their constructor, before anything is attached.
        log.warning(
            "telemetry: not exporting to Azure Monitor: the Application Insights connection string (%s) "
            "is malformed: %s. Copy it whole from the Overview page of the Application Insights resource "
            "(it holds InstrumentationKey and IngestionEndpoint, separated by ';')",
            CONNECTION_STRING_ENV, scrub(str(e)).rstrip("."),
        )
        shutdown_telemetry()
        return None
    with _lock:
        previous, _active = _active, telemetry
        first = previous is None and not _exit_hook
    if previous is not None:
        previous.shutdown()
    if first:
        _register_exit_hook()
    log.info("telemetry: exporting logs, traces and metrics of %s to Azure Monitor", service_name)
    return telemetry


def active() -> Telemetry | None:
    return _active


def shutdown_telemetry(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flush and stop exporting, for at most `timeout_s` (call at process exit; a no-op when nothing is on)."""
    global _active
    with _lock:
        previous, _active = _active, None
    if previous is not None:
        previous.shutdown(timeout_s)


@contextlib.contextmanager
def span(name: str, kind: str = "internal", attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """A span around a block when telemetry is on (None otherwise); errors are recorded on it."""
    telemetry = _active
    if telemetry is None:
        yield None
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with telemetry.tracer.start_as_current_span(
        scrub(name),
        kind=SpanKind[kind.upper()],
        attributes=scrub_mapping(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as e:
            current.set_status(Status(StatusCode.ERROR, scrub(f"{type(e).__name__}: {e}")))
            current.set_attribute("exception.type", type(e).__name__)
            raise


@contextlib.contextmanager
def reconcile_span(namespace: str, name: str, trigger: str = "") -> Iterator[Span | None]:
    """The operator's span per ScoringModel reconcile (a 'request' in Azure Monitor)."""
    attributes = {"k8s.namespace.name": namespace, "scoring.model_resource": name}
    if trigger:
        attributes["scoring.trigger"] = trigger
    with span(f"reconcile ScoringModel {namespace}/{name}", kind="consumer", attributes=attributes) as current:
        yield current


def record_outcome(current: Span | None, outcome: str, reason: str | None = None, message: str = "") -> None:
    """Mark a span with how the work ended; a failure `reason` makes it an error (a failed request)."""
    if current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("scoring.outcome", outcome)
    if reason:
        current.set_attribute("scoring.failure_reason", reason)
        current.set_status(Status(StatusCode.ERROR, scrub(f"{reason}: {message}" if message else reason)))
