"""Builds the OpenTelemetry providers with Azure Monitor exporters (imported only when exporting)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from azure.monitor.opentelemetry.exporter import (
    AzureMonitorLogExporter,
    AzureMonitorMetricExporter,
    AzureMonitorTraceExporter,
)
from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import REGISTRY, CollectorRegistry

from scoring_runtime.telemetry.otel_scrub import ScrubbingLogProcessor, ScrubbingSpanProcessor
from scoring_runtime.telemetry.prometheus_bridge import PrometheusBridge
from scoring_runtime.telemetry.setup import Telemetry

_globals_set = False


def build(
    *,
    service_name: str,
    resource: Resource,
    connection_string: str,
    prometheus_registry: CollectorRegistry | None,
    metric_interval_s: float,
    log_level: int,
    log_loggers: Sequence[str],
    log_filter: logging.Filter,
    exporter_options: Mapping[str, Any],
    set_global: bool,
) -> Telemetry:
    global _globals_set
    options = {"connection_string": connection_string, **exporter_options}

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        ScrubbingSpanProcessor(BatchSpanProcessor(AzureMonitorTraceExporter(**options)))
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        ScrubbingLogProcessor(BatchLogRecordProcessor(AzureMonitorLogExporter(**options)))
    )
    handler = LoggingHandler(level=log_level, logger_provider=logger_provider)
    handler.addFilter(log_filter)
    targets = [logging.getLogger(name or None) for name in log_loggers]
    for target in targets:
        target.addHandler(handler)

    bridge = PrometheusBridge(
        prometheus_registry if prometheus_registry is not None else REGISTRY,
        AzureMonitorMetricExporter(**options),
        resource,
        interval_s=metric_interval_s,
        delta=True,  # Azure Monitor aggregates per interval: it wants deltas for sums and histograms
    )
    bridge.start()

    if set_global and not _globals_set:
        # Once per process (OTel refuses to replace them): lets library instrumentation find us.
        trace.set_tracer_provider(tracer_provider)
        set_logger_provider(logger_provider)
        _globals_set = True
    return Telemetry(service_name, resource, tracer_provider, logger_provider, bridge, handler, targets)
