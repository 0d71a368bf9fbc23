"""Pure progressive delivery: where a canary or shadow rollout goes next, and what to run for it.

`decide` takes the spec, the version the spec now asks for, the last status and what was just
observed (is the candidate Deployment available, is the stable one done, a fresh analysis
verdict) and returns the versions and replicas to run plus the new `status.rollout`. Everything
about time comes in as `now`, so every path (steps, pauses, failure limit, manual promote/abort,
rollback memory) is unit-tested without a cluster.

Replica split without a gateway: the new version gets `weight`% of the serving pods (at least 1,
and the stable version keeps at least 1), so the traffic share is approximate (kube-proxy spreads
connections evenly over pods). With autoscaling the HPA sizes the stable Deployment and the canary
is sized from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders.analysis import Judgement
from scoring_operator.builders.status import timestamp

CANARY = "canary"
SHADOW = "shadow"
IN_FLIGHT = ("Progressing", "Promoting")


@dataclass(frozen=True)
class Track:
    """A second Deployment: `canary` or `shadow`, its model version and replicas."""

    kind: str
    version: int
    replicas: int


@dataclass(frozen=True)
class Decision:
    """What to run now, and the new status.rollout (None: no progressive rollout to report)."""

    stable_version: int
    #: The stable Deployment's replicas during a canary (None: as the spec says, or the HPA).
    stable_replicas: int | None = None
    candidate: Track | None = None
    #: Percent of requests the stable pods copy to the shadow (0: none).
    shadow_percent: float = 0.0
    status: dict[str, Any] | None = None
    #: Seconds until this rollout wants to look again (the analysis interval or a step's end).
    recheck: float | None = None
    #: Whether an analysis should be taken in this reconcile (the candidate runs and one is due).
    analyse: bool = False

    @property
    def canary_weight(self) -> float:
        return float((self.status or {}).get("weight") or 0) if self.candidate and self.candidate.kind == CANARY \
            else 0.0


def split(total: int, weight: float) -> tuple[int, int]:
    """(stable, canary) pods out of `total` for a canary `weight` percent: at least one each."""
    if total <= 0:
        return 0, 0
    canary = max(1, round(total * weight / 100))
    canary = min(canary, max(1, total - 1))
    return max(1, total - canary), canary


def canary_for(stable: int, weight: float, ceiling: int) -> int:
    """Canary pods beside an autoscaled stable Deployment of `stable` pods, for `weight` percent."""
    if weight >= 100:
        return max(1, min(ceiling, stable))
    return max(1, min(ceiling, round(max(1, stable) * weight / (100 - weight))))


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class Inputs:
    """What `decide` looks at."""

    spec: api.ScoringModelSpec
    generation: int
    #: The version the spec asks for now (the resolved label or the pinned version).
    target: int
    #: The stable version in service (status.model.version), None on first deployment.
    stable: int | None
    old: Mapping[str, Any] | None
    now: datetime
    #: The candidate Deployment has all its pods available.
    candidate_available: bool = False
    #: The stable Deployment serves `target` and its rollout is complete (a promotion finished).
    stable_done: bool = False
    #: Pods of the stable Deployment now (for a canary beside an HPA).
    stable_live_replicas: int | None = None
    #: A fresh analysis (taken only when `Decision.analyse` said so).
    judgement: Judgement | None = None
    #: Why the candidate's pods do not start: (fatal, message); fatal (its Deployment exceeded its
    #: progress deadline) rolls it back, otherwise the message is shown while waiting.
    candidate_problem: tuple[bool, str] | None = None


def _first_step(spec: api.RolloutSpec) -> tuple[int, float, int]:
    """(step number, weight, pause) of the first step."""
    if spec.strategy == "Shadow":
        sh = spec.effective_shadow
        return 1, sh.percent, sh.duration_seconds
    step = spec.effective_steps[0]
    return 1, float(step.weight), step.pause_seconds


def _step(spec: api.RolloutSpec, number: int) -> tuple[float, int] | None:
    """(weight, pause) of step `number` (1-based), or None past the last."""
    if spec.strategy == "Shadow":
        sh = spec.effective_shadow
        return (sh.percent, sh.duration_seconds) if number == 1 else None
    steps = spec.effective_steps
    if number > len(steps):
        return None
    return float(steps[number - 1].weight), steps[number - 1].pause_seconds


def _candidate_replicas(inp: Inputs, weight: float) -> tuple[int | None, int]:
    """(stable replicas or None for the spec's/HPA's, candidate replicas) at `weight`."""
    spec = inp.spec
    rollout = spec.rollout or api.RolloutSpec()
    if rollout.strategy == "Shadow":
        return None, rollout.effective_shadow.replicas
    if spec.autoscaling is not None:
        live = inp.stable_live_replicas or spec.autoscaling.min_replicas
        return None, canary_for(live, weight, spec.autoscaling.max_replicas)
    total = 1 if spec.replicas is None else spec.replicas
    stable, canary = split(total, weight)
    return stable, canary


def decide(inp: Inputs) -> Decision:
    """The next state of a progressive rollout (see the module docstring)."""
    spec = inp.spec
    rollout = spec.rollout or api.RolloutSpec()
    old = dict(inp.old or {})
    ts = timestamp(inp.now)
    kind = SHADOW if rollout.strategy == "Shadow" else CANARY
    analysis = rollout.effective_analysis

    # Nothing to compare with (first deployment), plain rolling updates, or the stable version is the target.
    if inp.stable is None or inp.stable == inp.target or rollout.strategy == "RollingUpdate":
        status = dict(old) if old else None
        keep: Track | None = None
        if status is not None and status.get("phase") in IN_FLIGHT:
            finishing = status.get("phase") == "Promoting" and status.get("candidateVersion") == inp.target
            if finishing and not inp.stable_done:
                # The stable Deployment takes the new version: the candidate keeps serving until it is done.
                prev = int(status.get("candidateReplicas") or 1)
                keep = Track(CANARY, inp.target, prev) if status.get("strategy") != "Shadow" else None
                return Decision(inp.target, None, keep, 0.0, status, recheck=analysis.interval_seconds)
            done = status.get("phase") == "Promoting" and status.get("candidateVersion") == inp.target
            status.update({
                "phase": "Promoted" if done else "RolledBack",
                "stableVersion": inp.target,
                "reason": "Promoted" if done else "Superseded",
                "message": (f"version {inp.target} promoted: it serves all traffic" if done else
                            f"the spec asks for version {inp.target} again, the stable version: candidate "
                            f"{status.get('candidateVersion')} removed"),
                "generation": inp.generation,
            })
            for k in ("effectiveWeight", "candidateReplicas"):
                status.pop(k, None)
        elif status is not None and status.get("stableVersion") != inp.target:
            status["stableVersion"] = inp.target
        return Decision(inp.target, None, None, 0.0, status)

    stable = inp.stable
    target = inp.target
    same = old.get("candidateVersion") == target and old.get("strategy") == rollout.strategy
    if same and old.get("phase") == "RolledBack" and old.get("generation") == inp.generation:
        return Decision(stable, None, None, 0.0, old)  # rolled back: stays so until the spec changes

    if same and old.get("phase") in IN_FLIGHT:
        status = dict(old)
    else:  # a new candidate: first step
        step, weight, _ = _first_step(rollout)
        status = {
            "strategy": rollout.strategy, "phase": "Progressing", "stableVersion": stable,
            "candidateVersion": target, "step": step, "weight": weight, "stepStartedAt": ts,
            "passedAnalyses": 0, "failedAnalyses": 0, "reason": "Started",
            "message": f"{kind} of version {target} started beside stable version {stable}",
        }
    status["stableVersion"] = stable

    def rolled_back(reason: str, message: str) -> Decision:
        status.update({"phase": "RolledBack", "reason": reason, "message": message, "generation": inp.generation})
        for k in ("effectiveWeight", "candidateReplicas"):
            status.pop(k, None)
        return Decision(stable, None, None, 0.0, status)

    def promoting(reason: str, message: str) -> Decision:
        _, replicas = _candidate_replicas(inp, float(status.get("weight") or 0))
        status.update({"phase": "Promoting", "reason": reason, "message": message, "generation": inp.generation,
                       "candidateReplicas": replicas})
        status.pop("effectiveWeight", None)
        keep = Track(kind, target, replicas) if kind == CANARY else None
        return Decision(target, None, keep, 0.0, status, recheck=analysis.interval_seconds)

    if status.get("phase") == "Promoting":
        return promoting(str(status.get("reason") or "Promoted"), str(status.get("message") or ""))
    if rollout.abort_version == target:
        return rolled_back("Aborted", f"rollout.abortVersion is {target}: {kind} removed, version {stable} keeps "
                           "serving")
    if rollout.promote_version == target:
        return promoting("ManualPromotion", f"rollout.promoteVersion is {target}: promoting it now")

    if inp.candidate_problem is not None and inp.candidate_problem[0]:
        return rolled_back("CandidateUnavailable", f"version {target} rolled back: its pods never became available: "
                           f"{inp.candidate_problem[1]}")
    j = inp.judgement
    if j is not None:
        status["lastAnalysis"] = {"time": ts, "verdict": j.verdict, "message": j.message,
                                  "candidate": j.candidate.wire(), "stable": j.stable.wire()}
        if j.verdict == "Failed":
            status["failedAnalyses"] = int(status.get("failedAnalyses") or 0) + 1
            if status["failedAnalyses"] >= analysis.failure_limit:
                return rolled_back("AnalysisFailed", f"version {target} rolled back at step {status.get('step')} "
                                   f"({status.get('weight')}%): {j.message}")
        elif j.verdict == "Passed":
            status["passedAnalyses"] = int(status.get("passedAnalyses") or 0) + 1

    started = _parse_time(status.get("stepStartedAt")) or inp.now
    current = _step(rollout, int(status.get("step") or 1))
    weight, pause = current if current is not None else (100.0, 0)
    if weight >= 100 and kind == CANARY:
        return promoting("StepsComplete", f"step {status.get('step')} sends all traffic to version {target}: "
                         "promoting it")
    elapsed = (inp.now - started).total_seconds()
    if inp.candidate_available and int(status.get("passedAnalyses") or 0) > 0 and elapsed >= pause:
        nxt = _step(rollout, int(status.get("step") or 1) + 1)
        if nxt is None or (nxt[0] >= 100 and kind == CANARY):
            return promoting("AnalysisPassed", f"version {target} passed {status['passedAnalyses']} analyses at the "
                             f"last step ({weight:g}%): promoting it")
        status.update({"step": int(status.get("step") or 1) + 1, "weight": nxt[0], "stepStartedAt": ts,
                       "passedAnalyses": 0, "reason": "StepAdvanced",
                       "message": f"analysis passed: {kind} of version {target} now at {nxt[0]:g}%"})
        weight, pause = nxt
        elapsed = 0.0

    stable_replicas, replicas = _candidate_replicas(inp, weight)
    if stable_replicas is not None and not inp.candidate_available:
        stable_replicas = 1 if spec.replicas is None else spec.replicas  # full capacity until the canary serves
    status["weight"] = weight
    status["candidateReplicas"] = replicas
    if kind == CANARY:
        serving_stable = stable_replicas if stable_replicas is not None else (inp.stable_live_replicas or 0)
        if serving_stable + replicas:
            status["effectiveWeight"] = round(100 * replicas / (serving_stable + replicas), 1)
    if not inp.candidate_available:
        why = f": {inp.candidate_problem[1]}" if inp.candidate_problem else ""
        status["message"] = f"waiting for the {kind} pods of version {target} to be available{why}"
    elif j is not None and j.verdict != "Passed":
        status["message"] = f"analysis {j.verdict.lower()}: {j.message}"
    last = _parse_time((status.get("lastAnalysis") or {}).get("time"))
    due = inp.candidate_available and (last is None or (inp.now - last).total_seconds() >= analysis.interval_seconds)
    recheck = float(analysis.interval_seconds)
    if pause > elapsed:
        recheck = min(recheck, pause - elapsed + 0.5)
    return Decision(stable, stable_replicas, Track(kind, target, replicas),
                    weight if kind == SHADOW else 0.0, status, recheck=max(1.0, recheck), analyse=due)


def analysis_due(old: Mapping[str, Any] | None, now: datetime, interval: float) -> bool:
    """Whether the last analysis is at least `interval` seconds old (or there is none)."""
    last = _parse_time(((old or {}).get("lastAnalysis") or {}).get("time"))
    return last is None or (now - last).total_seconds() >= interval


def events(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """Events for a change of status.rollout: (type, reason, message)."""
    if not new:
        return []
    old = old or {}
    kind = "Shadow" if new.get("strategy") == "Shadow" else "Canary"
    changed = (old.get("candidateVersion"), old.get("phase"), old.get("step")) != (
        new.get("candidateVersion"), new.get("phase"), new.get("step"))
    if not changed:
        return []
    phase, message = new.get("phase"), str(new.get("message") or "")
    fresh = old.get("candidateVersion") != new.get("candidateVersion") or old.get("phase") not in IN_FLIGHT
    if phase == "Progressing" and fresh:
        return [("Normal", f"{kind}Started", message)]
    if phase == "Progressing":
        return [("Normal", f"{kind}StepAdvanced", message)]
    if phase == "Promoting":
        return [("Normal", f"{kind}Promoting", message)]
    if phase == "Promoted":
        return [("Normal", f"{kind}Promoted", message)]
    if phase == "RolledBack":
        return [("Warning", f"{kind}RolledBack", message)]
    return []


__all__ = ["Decision", "Inputs", "Track", "analysis_due", "canary_for", "decide", "events", "split"]
