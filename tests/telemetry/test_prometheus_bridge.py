"""The Prometheus -> OpenTelemetry bridge: names, attributes, deltas, histograms."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="telemetry export needs the [azure] extra")

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, Counter, Summary
from prometheus_client import Gauge as PGauge
from prometheus_client import Histogram as PHistogram

from scoring_runtime.telemetry.prometheus_bridge import PrometheusBridge
from scoring_runtime.telemetry.scrub import REDACTED


class Captured(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def metrics_of(data: MetricsData) -> dict[str, Any]:
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def points(data: MetricsData, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    metric = metrics_of(data).get(name)
    if metric is None:
        return {}
    return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


def bridge(reg: CollectorRegistry, **kw: Any) -> tuple[PrometheusBridge, Captured]:
    exporter = Captured()
    return PrometheusBridge(reg, exporter, Resource.create({"service.name": "t"}), interval_s=0, **kw), exporter


def test_counters_export_deltas_per_label_set(reg: CollectorRegistry) -> None:
    c = Counter("scoring_requests", "requests", ["code"], registry=reg)
    b, out = bridge(reg)
    c.labels("200").inc(5)
    c.labels("500").inc()
    b.export_once()
    first = points(out.batches[-1], "scoring_requests_total")
    assert {k: p.value for k, p in first.items()} == {(("code", "200"),): 5.0, (("code", "500"),): 1.0}
    metric = metrics_of(out.batches[-1])["scoring_requests_total"]
    assert isinstance(metric.data, Sum) and metric.data.is_monotonic
    assert metric.data.aggregation_temporality == AggregationTemporality.DELTA

    c.labels("200").inc(2)
    b.export_once()
    second = points(out.batches[-1], "scoring_requests_total")
    assert {k: p.value for k, p in second.items()} == {(("code", "200"),): 2.0}  # unchanged 500 not re-sent
    p = second[(("code", "200"),)]
    assert p.start_time_unix_nano == first[(("code", "200"),)].time_unix_nano  # consecutive intervals


def test_cumulative_mode_sends_totals(reg: CollectorRegistry) -> None:
    c = Counter("x", "x", registry=reg)
    b, out = bridge(reg, delta=False)
    c.inc(3)
    b.export_once()
    c.inc(1)
    b.export_once()
    assert [points(d, "x_total")[()].value for d in out.batches] == [3.0, 4.0]


def test_histograms_keep_buckets_and_report_interval_deltas(reg: CollectorRegistry) -> None:
    h = PHistogram("lat_seconds", "latency", ["endpoint"], buckets=(0.1, 0.5, 1.0), registry=reg)
    b, out = bridge(reg)
    for v in (0.05, 0.2, 0.3, 2.0):
        h.labels("/score").observe(v)
    b.export_once()
    (p,) = points(out.batches[-1], "lat_seconds").values()
    assert isinstance(metrics_of(out.batches[-1])["lat_seconds"].data, Histogram)
    assert dict(p.attributes) == {"endpoint": "/score"}
    assert (p.count, round(p.sum, 6), list(p.explicit_bounds), list(p.bucket_counts)) == (
        4, 2.55, [0.1, 0.5, 1.0], [1, 2, 0, 1])
    assert p.min == 0.0 and p.max == 1.0  # bucket-resolution estimates

    h.labels("/score").observe(0.7)
    b.export_once()
    (p2,) = points(out.batches[-1], "lat_seconds").values()
    assert (p2.count, round(p2.sum, 6), list(p2.bucket_counts)) == (1, 0.7, [0, 0, 1, 0])
    assert (p2.min, p2.max) == (0.5, 1.0)
    sent = len(out.batches)
    b.export_once()
    assert len(out.batches) == sent  # no new observations: nothing re-sent


def test_gauges_summaries_and_exclusions(reg: CollectorRegistry) -> None:
    g = PGauge("scoring_requests_in_flight", "in flight", registry=reg)
    s = Summary("scoring_payload_bytes", "payload", registry=reg)
    PGauge("python_ignored", "excluded by prefix", registry=reg).set(1)
    g.set(7)
    s.observe(100)
    s.observe(300)
    b, out = bridge(reg)
    b.export_once()
    data = out.batches[-1]
    assert "python_ignored" not in metrics_of(data)
    gauge = metrics_of(data)["scoring_requests_in_flight"]
    assert isinstance(gauge.data, Gauge) and gauge.data.data_points[0].value == 7.0
    (sp,) = points(data, "scoring_payload_bytes").values()
    assert (sp.count, sp.sum, sp.min, sp.max) == (2, 400.0, 200.0, 200.0)


def test_label_values_are_scrubbed(reg: CollectorRegistry) -> None:
    c = Counter("weird", "w", ["url"], registry=reg)
    c.labels("https://a/b?sig=secretsig123").inc()
    b, out = bridge(reg)
    b.export_once()
    ((key, _),) = points(out.batches[-1], "weird_total").items()
    assert key == (("url", f"https://a/b?sig={REDACTED}"),)


def test_counter_reset_is_not_a_negative_delta(reg: CollectorRegistry) -> None:
    c = Counter("resets", "r", registry=reg)
    b, out = bridge(reg)
    c.inc(10)
    b.export_once()
    c._value.set(2)  # what a restarted worker's counter looks like in a shared registry
    b.export_once()
    assert points(out.batches[-1], "resets_total")[()].value == 2.0


def test_nothing_to_send_sends_nothing(reg: CollectorRegistry) -> None:
    b, out = bridge(reg)
    assert b.export_once()
    assert out.batches == []
