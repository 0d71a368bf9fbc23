"""Send the prometheus_client metrics to an OpenTelemetry metric exporter, so each metric is defined once.

The runtime and the operator define their metrics with prometheus_client (scraped at /metrics).
This bridge reads the same registry every interval, converts it to OpenTelemetry `MetricsData`
and hands it to an exporter (Azure Monitor): no metric is declared twice, and histograms keep
their buckets, sum and count.

Conversion:
- counter `x` (sample `x_total`) -> monotonic Sum named `x_total`;
- gauge, info, enum, stateset, untyped -> Gauge (info as `x_info`);
- histogram -> Histogram with the Prometheus buckets; summary -> Histogram of count/sum only;
- labels -> attributes (values scrubbed of secrets).
With delta temporality (what Azure Monitor expects) counters and histograms report the change
since the previous export; a series whose value did not change is not re-sent. Prometheus
histograms carry no min/max: they are estimated from the lowest and highest non-empty bucket.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as PromFamily

from scoring_runtime.telemetry.scrub import scrub

log = logging.getLogger(__name__)
SCOPE = InstrumentationScope("scoring.prometheus_bridge", "1")
_GAUGE_TYPES = {"gauge", "info", "stateset", "enum", "unknown", "untyped"}


@dataclass
class _HistState:
    buckets: list[float]
    count: float
    sum: float


def _attrs(labels: dict[str, str], drop: str = "") -> dict[str, str]:
    return {k: scrub(str(v)) for k, v in sorted(labels.items()) if k != drop}


def _key(name: str, attrs: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(attrs.items()))


class PrometheusBridge:
    """Collects a prometheus_client registry as OTel MetricsData and exports it periodically."""

    def __init__(
        self,
        registry: CollectorRegistry,
        exporter: MetricExporter,
        resource: Resource,
        *,
        interval_s: float = 60.0,
        delta: bool = True,
        exclude_prefixes: Sequence[str] = ("python_",),
    ) -> None:
        self.registry = registry
        self.exporter = exporter
        self.resource = resource
        self.interval_s = interval_s
        self.delta = delta
        self.exclude_prefixes = tuple(exclude_prefixes)
        self._temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
        self._start_ns = time.time_ns()
        self._last_ns = self._start_ns
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._hists: dict[tuple[str, tuple[tuple[str, str], ...]], _HistState] = {}
        self._export_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None and self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="prometheus-otel-bridge", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.export_once()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.export_once(timeout_millis)

    def shutdown(self, timeout_millis: float = 10_000) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_millis / 1000)
        self.export_once(timeout_millis)
        self.exporter.shutdown(timeout_millis=timeout_millis)

    def export_once(self, timeout_millis: float = 10_000) -> bool:
        with self._export_lock:
            try:
                data = self.collect()
                if not data.resource_metrics[0].scope_metrics[0].metrics:
                    return True
                result = self.exporter.export(data, timeout_millis=timeout_millis)
                return getattr(result, "name", "") == "SUCCESS"
            except Exception:  # telemetry must never take the service down
                log.exception("exporting Prometheus metrics to OpenTelemetry failed")
                return False

    # ------------------------------------------------------------ conversion
    def collect(self) -> MetricsData:
        now = time.time_ns()
        start = self._last_ns if self.delta else self._start_ns
        metrics: list[Metric] = []
        for family in self.registry.collect():
            if family.name.startswith(self.exclude_prefixes):
                continue
            try:
                metrics.extend(self._convert(family, start, now))
            except Exception:  # one odd custom collector must not stop the others
                log.exception("cannot convert Prometheus metric %s", family.name)
        self._last_ns = now
        scope = ScopeMetrics(scope=SCOPE, metrics=metrics, schema_url="")
        return MetricsData(resource_metrics=[ResourceMetrics(self.resource, [scope], schema_url="")])

    def _convert(self, family: PromFamily, start: int, now: int) -> Iterable[Metric]:
        kind = family.type
        if kind == "counter":
            yield from self._sums(family, start, now)
        elif kind == "histogram":
            points = self._histograms(family, start, now)
            if points:
                yield Metric(family.name, family.documentation, family.unit or None,
                             Histogram(points, self._temporality))
        elif kind == "summary":
            points = self._summaries(family, start, now)
            if points:
                yield Metric(family.name, family.documentation, family.unit or None,
                             Histogram(points, self._temporality))
        elif kind in _GAUGE_TYPES:
            by_name: dict[str, list[NumberDataPoint]] = {}
            for s in family.samples:
                by_name.setdefault(s.name, []).append(
                    NumberDataPoint(_attrs(s.labels), start, now, float(s.value))
                )
            for name, gauge_points in by_name.items():
                yield Metric(name, family.documentation, family.unit or None, Gauge(gauge_points))

    def _sums(self, family: PromFamily, start: int, now: int) -> Iterable[Metric]:
        points: list[NumberDataPoint] = []
        name = f"{family.name}_total"
        for s in family.samples:
            if s.name != name:
                continue  # _created samples
            attrs = _attrs(s.labels)
            value = float(s.value)
            if self.delta:
                key = _key(name, attrs)
                previous = self._counters.get(key)
                self._counters[key] = value
                if previous is not None and value == previous:
                    continue
                value = value - previous if previous is not None and value >= previous else value
            points.append(NumberDataPoint(attrs, start, now, value))
        if points:
            yield Metric(name, family.documentation, family.unit or None,
                         Sum(points, self._temporality, is_monotonic=True))

    def _histograms(self, family: PromFamily, start: int, now: int) -> list[HistogramDataPoint]:
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for s in family.samples:
            if s.name == f"{family.name}_bucket":
                attrs = _attrs(s.labels, drop="le")
                entry = series.setdefault(tuple(attrs.items()), {"attrs": attrs, "le": []})
                entry["le"].append((float(s.labels["le"]), float(s.value)))
            elif s.name in (f"{family.name}_count", f"{family.name}_sum"):
                attrs = _attrs(s.labels)
                entry = series.setdefault(tuple(attrs.items()), {"attrs": attrs, "le": []})
                entry[s.name.rsplit("_", 1)[1]] = float(s.value)
        points = []
        for entry in series.values():
            les = sorted(entry["le"])
            bounds = [le for le, _ in les if not math.isinf(le)]
            cumulative = [c for _, c in les]
            count, total = entry.get("count", cumulative[-1] if cumulative else 0.0), entry.get("sum", 0.0)
            if self.delta:
                key = _key(family.name, entry["attrs"])
                prev = self._hists.get(key)
                self._hists[key] = _HistState(cumulative, count, total)
                if prev is not None and count == prev.count:
                    continue
                if prev is not None and count >= prev.count and len(prev.buckets) == len(cumulative):
                    cumulative = [c - p for c, p in zip(cumulative, prev.buckets, strict=True)]
                    count, total = count - prev.count, total - prev.sum
            per_bucket = [int(c - (cumulative[i - 1] if i else 0)) for i, c in enumerate(cumulative)]
            low, high = _min_max(bounds, per_bucket, count, total)
            points.append(
                HistogramDataPoint(entry["attrs"], start, now, int(count), total, per_bucket, bounds, low, high)
            )
        return points

    def _summaries(self, family: PromFamily, start: int, now: int) -> list[HistogramDataPoint]:
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for s in family.samples:
            if s.name in (f"{family.name}_count", f"{family.name}_sum"):
                attrs = _attrs(s.labels)
                series.setdefault(tuple(attrs.items()), {"attrs": attrs})[s.name.rsplit("_", 1)[1]] = float(s.value)
        points = []
        for entry in series.values():
            count, total = entry.get("count", 0.0), entry.get("sum", 0.0)
            if self.delta:
                key = _key(family.name, entry["attrs"])
                prev = self._hists.get(key)
                self._hists[key] = _HistState([], count, total)
                if prev is not None and count == prev.count:
                    continue
                if prev is not None and count >= prev.count:
                    count, total = count - prev.count, total - prev.sum
            mean = total / count if count else 0.0
            points.append(HistogramDataPoint(entry["attrs"], start, now, int(count), total, [int(count)], [],
                                             mean, mean))
        return points


def _min_max(bounds: list[float], per_bucket: list[int], count: float, total: float) -> tuple[float, float]:
    """Bucket-resolution estimates of min and max (Prometheus does not record them)."""
    nonempty = [i for i, n in enumerate(per_bucket) if n > 0]
    if not nonempty or not count:
        return 0.0, 0.0
    first, last = nonempty[0], nonempty[-1]
    low = bounds[first - 1] if first > 0 else min(0.0, bounds[0] if bounds else 0.0)
    high = bounds[last] if last < len(bounds) else (bounds[-1] if bounds else total / count)
    mean = total / count
    return min(low, mean), max(high, mean)
