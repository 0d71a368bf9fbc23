"""Pure analysis of a canary or shadow against the stable version, from the runtime's own /metrics.

No Prometheus server: the operator reads each pod's exposition text, keeps the last snapshot per
pod, and judges the requests answered since the previous verdict:

- `parse_metrics`: one pod's text -> a `PodSample` (scoring requests, 5xx, latency histogram),
  only the scoring endpoints (POST /score and the V2 infer routes), not probes or /metrics;
- `window`: the sum over pods of what changed since a baseline, restart-safe (a counter that went
  down means the pod restarted: its whole count is new), pods absent from the baseline counted from 0;
- `quantile`: p99 from histogram buckets (Prometheus' histogram_quantile interpolation);
- `judge`: Passed, Failed or Inconclusive against the spec's thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from scoring_operator import spec as api

#: Route templates of the scoring endpoints (scoring_runtime.server.app), the only requests judged.
SCORING_ENDPOINTS = frozenset({
    "/score",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
})
REQUESTS = "scoring_requests"
LATENCY = "scoring_request_duration_seconds"

Verdict = Literal["Passed", "Failed", "Inconclusive"]


@dataclass(frozen=True)
class PodSample:
    """Cumulative counts of one pod (as its /metrics says, since it started)."""

    requests: float = 0.0
    errors: float = 0.0
    #: Cumulative histogram: upper bound (seconds, +inf last) -> count of requests at most that long.
    buckets: tuple[tuple[float, float], ...] = ()

    def minus(self, base: PodSample | None) -> PodSample:
        """What this pod answered since `base`; the whole count after a restart (a counter went down)."""
        if base is None or self.requests < base.requests or self.errors < base.errors:
            return self
        old = dict(base.buckets)
        if any(count < old.get(le, 0.0) for le, count in self.buckets):
            return self
        return PodSample(self.requests - base.requests, self.errors - base.errors,
                         tuple((le, count - old.get(le, 0.0)) for le, count in self.buckets))


def parse_metrics(text: str) -> PodSample:
    """The scoring requests, 5xx answers and latency buckets in one pod's exposition text."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == REQUESTS:
            for s in family.samples:
                if not s.name.endswith("_total") or s.labels.get("endpoint") not in SCORING_ENDPOINTS:
                    continue
                requests += s.value
                if s.labels.get("code", "").startswith("5"):
                    errors += s.value
        elif family.name == LATENCY:
            for s in family.samples:
                if s.name.endswith("_bucket") and s.labels.get("endpoint") in SCORING_ENDPOINTS:
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
    return PodSample(requests, errors, tuple(sorted(buckets.items())))


def window(current: Mapping[str, PodSample], baseline: Mapping[str, PodSample]) -> PodSample:
    """The sum over pods of what each answered since the baseline (pods gone since are not counted)."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for pod, sample in current.items():
        delta = sample.minus(baseline.get(pod))
        requests += delta.requests
        errors += delta.errors
        for le, count in delta.buckets:
            buckets[le] = buckets.get(le, 0.0) + count
    return PodSample(requests, errors, tuple(sorted(buckets.items())))


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile (seconds) of a cumulative histogram, interpolated inside its bucket; None when empty.

    As Prometheus' histogram_quantile: a quantile in the +Inf bucket is the highest finite bound.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                finite = [b for b, _ in ordered if not math.isinf(b)]
                return finite[-1] if finite else None
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return None  # pragma: no cover - the last bucket holds the total


@dataclass(frozen=True)
class Numbers:
    """One version's numbers over an analysis window."""

    requests: int
    errors: int
    pods: int
    error_rate: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, sample: PodSample, pods: int) -> Numbers:
        p99 = quantile(0.99, sample.buckets)
        return cls(
            requests=round(sample.requests),
            errors=round(sample.errors),
            pods=pods,
            error_rate=round(sample.errors / sample.requests, 4) if sample.requests else None,
            p99_ms=round(p99 * 1000, 2) if p99 is not None else None,
        )

    def wire(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"requests": self.requests, "errors": self.errors, "pods": self.pods}
        if self.error_rate is not None:
            out["errorRate"] = self.error_rate
        if self.p99_ms is not None:
            out["p99Ms"] = self.p99_ms
        return out


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    message: str
    candidate: Numbers
    stable: Numbers
    reasons: tuple[str, ...] = field(default=())


def judge(candidate: Numbers, stable: Numbers, analysis: api.AnalysisSpec) -> Judgement:
    """Passed, Failed (which thresholds were crossed) or Inconclusive (too few requests yet)."""
    if analysis.min_requests == 0 and candidate.requests == 0:
        return Judgement("Passed", "no requests, and minRequests is 0", candidate, stable)
    if candidate.requests < max(1, analysis.min_requests):
        return Judgement("Inconclusive", f"{candidate.requests} of the {max(1, analysis.min_requests)} requests "
                         "needed for a verdict so far", candidate, stable)
    reasons: list[str] = []
    rate = candidate.error_rate or 0.0
    if rate > analysis.max_error_rate:
        reasons.append(f"error rate {rate:.1%} ({candidate.errors} of {candidate.requests} requests answered 5xx) "
                       f"above maxErrorRate {analysis.max_error_rate:.1%}")
    p99 = candidate.p99_ms
    if p99 is not None and analysis.max_p99_latency_ms is not None and p99 > analysis.max_p99_latency_ms:
        reasons.append(f"p99 latency {p99:g} ms above maxP99LatencyMs {analysis.max_p99_latency_ms:g}")
    if (p99 is not None and analysis.max_p99_latency_ratio is not None and stable.p99_ms
            and stable.requests >= max(1, analysis.min_requests // 2)):
        ratio = p99 / stable.p99_ms
        if ratio > analysis.max_p99_latency_ratio:
            reasons.append(f"p99 latency {p99:g} ms is {ratio:.2f}x the stable version's {stable.p99_ms:g} ms, "
                           f"above maxP99LatencyRatio {analysis.max_p99_latency_ratio:g}")
    if reasons:
        return Judgement("Failed", "; ".join(reasons), candidate, stable, tuple(reasons))
    stable_p99 = f", stable p99 {stable.p99_ms:g} ms" if stable.p99_ms is not None else ""
    return Judgement("Passed", f"{candidate.requests} requests, error rate {rate:.1%}, p99 "
                     f"{p99 if p99 is not None else 'n/a'} ms{stable_p99}", candidate, stable)


__all__ = ["Judgement", "Numbers", "PodSample", "judge", "parse_metrics", "quantile", "window"]
