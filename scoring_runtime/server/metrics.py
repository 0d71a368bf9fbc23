"""Prometheus metrics of the scoring server, correct with one worker process or many.

With `--workers 1` each app has its own registry (plus process/GC collectors). With more
workers, `scoring serve` points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory before the
workers start; every worker then writes its samples there and `/metrics`, whichever worker
answers, aggregates all of them: counters and histograms are summed over workers, the in-flight
gauge is summed over live workers, load/warm-up times report the slowest worker, and
`scoring_model_ready` is the minimum (1 only when every live worker is ready). Process metrics
(CPU, memory) are per process and are not exported in that mode.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as mp
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BYTES_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The server's metric families (names start with `scoring_`)."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        reg = self.registry
        if not self.multiprocess:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
        self.requests = Counter(
            "scoring_requests", "HTTP requests by endpoint (route template), method and status code",
            ["endpoint", "method", "code"], registry=reg,
        )
        self.latency = Histogram(
            "scoring_request_duration_seconds", "Time from request start to response end, by endpoint",
            ["endpoint"], buckets=_LATENCY_BUCKETS, registry=reg,
        )
        self.in_flight = Gauge(
            "scoring_requests_in_flight", "Requests being handled now", registry=reg, multiprocess_mode="livesum",
        )
        self.body_bytes = Histogram(
            "scoring_request_body_bytes", "Size of accepted scoring request bodies", ["endpoint"],
            buckets=_BYTES_BUCKETS, registry=reg,
        )
        self.model_seconds = Histogram(
            "scoring_model_seconds", "Time waiting for the model (queue + predict) per request, by protocol",
            ["protocol"], buckets=_LATENCY_BUCKETS, registry=reg,
        )
        self.rows = Histogram(
            "scoring_request_rows", "Rows (items) per scoring request", ["protocol"], buckets=_ROWS_BUCKETS,
            registry=reg,
        )
        self.errors = Counter(
            "scoring_errors", "Scoring requests that failed, by reason", ["reason"], registry=reg,
        )
        self.load_seconds = Gauge(
            "scoring_model_load_seconds", "Time to load the model", registry=reg, multiprocess_mode="max",
        )
        self.warmup_seconds = Gauge(
            "scoring_model_warmup_seconds", "Time to warm the model up", registry=reg, multiprocess_mode="max",
        )
        self.ready = Gauge(
            "scoring_model_ready", "1 when the model is loaded and warmed up", registry=reg,
            multiprocess_mode="livemin",
        )
        self.info = Gauge(
            "scoring_model_info", "The served model (value is always 1)", ["name", "version", "flavour"],
            registry=reg, multiprocess_mode="max",
        )

        self.shadow = Counter(
            "scoring_shadow_requests", "Copies of scoring requests sent to the shadow runtime, by outcome "
            "(sent: it answered below 500; failed: error, timeout or 5xx; dropped: too many on their way)",
            ["outcome"], registry=reg,
        )
        self.shadow_percent = Gauge(
            "scoring_shadow_percent", "Share of scoring requests copied to the shadow now (0: no shadowing)",
            registry=reg, multiprocess_mode="max",
        )

    def labelled(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, cached: the hot path labels the same few children on every request,
        and prometheus_client validates, stringifies and locks on each `labels()` call. The label values
        come from small fixed sets (route templates, methods, status codes, protocols, error reasons)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this registry, or all workers' files in multiprocess mode."""
        if self.multiprocess:
            reg = CollectorRegistry()
            mp.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def process_exit(self) -> None:
        """Drop this worker's live gauges from the shared directory (multiprocess mode)."""
        if self.multiprocess:
            mp.mark_process_dead(os.getpid())
