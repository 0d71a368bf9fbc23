"""The handler layer in-process (kopf's `KopfRunner`) against the real apiserver: poll, wake, backoff, quiet.

The operator runs in a thread of the test process, as the chart's ServiceAccount, so the tests can
look inside it: how many registry reads and API calls it made, when it retried. Faster to run and
to debug than the subprocess end-to-end tests, and they pin behaviour those cannot see.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scoring_operator import config as cfg
from scoring_operator import handlers
from scoring_operator.kube import Kube
from scoring_operator.reconcile import Reconciler
from scoring_runtime.registry import LocalFileRegistry
from tests.kube.controlplane import KubeCluster, namespace_name_for
from tests.operator.kubehelpers import (
    CHART,
    apply,
    condition,
    get,
    get_existing,
    registry_claim,
    scoring_model,
    wait_for,
)

pytestmark = [pytest.mark.cluster]


class CountingKube(Kube):
    """The real client, counting calls by (verb, kind)."""

    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.counts["get", kind] += 1
        return await super().get(api_version, kind, namespace, name)

    async def apply(self, obj: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
        self.counts["apply", obj["kind"]] += 1
        return await super().apply(obj, **kw)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.counts["delete", kind] += 1
        await super().delete(api_version, kind, namespace, name)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.counts["status", "ScoringModel"] += 1
        await super().patch_status(namespace, name, status)


@dataclass
class InProcess:
    cluster: KubeCluster
    root: Path
    reconcilers: list[Reconciler] = field(default_factory=list)

    @property
    def rec(self) -> Reconciler:
        return self.reconcilers[-1]

    def calls(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter(CountingKube.counts)

    def register(self, name: str, sub: str = "") -> int:
        src = self.root.parent / "src" / name
        src.mkdir(parents=True, exist_ok=True)
        (src / "model.json").write_text('{"framework": "sklearn", "task": "test"}')
        (src / "w.bin").write_bytes(os.urandom(8))
        return LocalFileRegistry(self.root / sub if sub else self.root).register(name, src).version


@pytest.fixture(scope="module")
def inproc(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    from kopf.testing import KopfRunner
    from kubernetes.config import kube_config

    work = tmp_path_factory.mktemp("inproc")
    release_ns = cluster.create_namespace(namespace_name_for("scoring-inproc"))
    release = f"so-{release_ns.rsplit('-', 1)[-1]}"
    cluster.helm("install", release, CHART, "-n", release_ns, "--set", "replicaCount=0", "--wait")
    kubeconfig = cluster.token_kubeconfig(f"{release}-scoring-operator", release_ns, path=work / "sa.kubeconfig")
    state = InProcess(cluster, work / "registry")
    state.root.mkdir()

    class RecordingReconciler(Reconciler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            state.reconcilers.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", str(kubeconfig))
        mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))  # kopf's login reads it
        mp.setattr(handlers, "Kube", CountingKube)
        mp.setattr(handlers, "Reconciler", RecordingReconciler)
        cfg.set_current(cfg.OperatorConfig(local_registry_root=state.root, metrics_port=0, liveness_port=0))
        try:
            with KopfRunner(["run", "--standalone", "-A", "-m", "scoring_operator.handlers"], timeout=60) as runner:
                wait_for("the in-process operator started", lambda: state.reconcilers, timeout=60)
                yield state
            assert runner.exception is None, runner.output[-3000:]
        finally:
            cfg._current = None
            cluster.helm("uninstall", release, "-n", release_ns, check=False)
            cluster.delete_namespace(release_ns)


@pytest.fixture
def ns(cluster: KubeCluster, namespace: str, inproc: InProcess) -> Iterator[str]:
    pv = registry_claim(cluster, namespace)
    yield namespace
    cluster.kubectl("delete", "scoringmodels", "--all", "-n", namespace, "--ignore-not-found", "--wait=true",
                    "--timeout=60s", check=False)
    cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def _ready(cluster: KubeCluster, ns: str, name: str, version: int) -> bool:
    sm = get(cluster, "scoringmodel", ns, name) or {}
    st = sm.get("status") or {}
    return (st.get("phase") == "Ready" and (st.get("model") or {}).get("version") == version
            and st.get("observedGeneration") == sm["metadata"]["generation"])


def _reconciles(rec: Reconciler, trigger: str) -> float:
    from scoring_operator.metrics import RECONCILES

    return sum(RECONCILES.labels(result, trigger)._value.get() for result in ("success", "retry", "failed"))


def test_idle_is_quiet_and_one_registry_read_serves_every_tracker(
    inproc: InProcess, cluster: KubeCluster, ns: str
) -> None:
    model, names, interval = f"quiet-{ns[-6:]}", [f"q{i}" for i in range(4)], 2
    inproc.register(model)
    for name in names:
        manifest = scoring_model(name, ns, {"name": model, "label": "latest"})
        manifest["spec"]["model"]["pollInterval"] = interval
        apply(cluster, manifest)
    for name in names:
        wait_for(f"{name} Ready", functools.partial(_ready, cluster, ns, name, 1))
    time.sleep(1.5)  # the last Deployment events settle
    calls, reads, polls = inproc.calls(), inproc.rec.resolver.reads, _reconciles(inproc.rec, "poll")
    idle = 4 * interval + 1
    time.sleep(idle)
    polled = _reconciles(inproc.rec, "poll") - polls
    assert polled >= len(names) * 3, "every ScoringModel kept polling"
    assert inproc.calls() - calls == collections.Counter(), "an idle poll read or wrote an API object"
    assert inproc.rec.resolver.reads - reads <= idle / interval + 1, "the registry was asked once per model"


def test_drift_is_repaired_on_the_watch_event_not_the_next_poll(
    inproc: InProcess, cluster: KubeCluster, ns: str
) -> None:
    model = f"drift-{ns[-6:]}"
    inproc.register(model)
    manifest = scoring_model("drifty", ns, {"name": model, "version": 1})
    manifest["spec"]["model"]["pollInterval"] = 600  # only a watch event can bring the repair in time
    apply(cluster, manifest)
    wait_for("Ready", lambda: _ready(cluster, ns, "drifty", 1))
    cluster.kubectl("patch", "service", "drifty", "-n", ns, "--type=merge", "-p",
                    '{"metadata": {"labels": {"scoring.dev/model": "someone-else"}}}')
    wait_for("the Service label restored", lambda: (get(cluster, "service", ns, "drifty") or {})["metadata"]["labels"][
        "scoring.dev/model"] == "drifty", timeout=15)
    old = get_existing(cluster, "deployment", ns, "drifty")["metadata"]["uid"]
    cluster.kubectl("delete", "deployment", "drifty", "-n", ns)
    wait_for("the Deployment recreated", lambda: (get(cluster, "deployment", ns, "drifty") or {}).get(
        "metadata", {}).get("uid") not in (None, old), timeout=15)
    wait_for("Ready again", lambda: _ready(cluster, ns, "drifty", 1), timeout=30)


def test_a_label_move_wakes_every_tracker_at_once(inproc: InProcess, cluster: KubeCluster, ns: str) -> None:
    model, names = f"move-{ns[-6:]}", [f"m{i}" for i in range(3)]
    inproc.register(model)
    manifests = [scoring_model(name, ns, {"name": model, "label": "latest"}) for name in names]
    for i, manifest in enumerate(manifests):
        manifest["spec"]["model"]["pollInterval"] = 5 if i == 0 else 600  # only m0 polls in time
    apply(cluster, *manifests)
    for name in names:
        wait_for(f"{name} Ready", functools.partial(_ready, cluster, ns, name, 1))
    inproc.register(model)
    for name in names:  # the 600 s pollers roll as soon as m0's poll sees the new answer
        wait_for(f"{name} on version 2", functools.partial(_ready, cluster, ns, name, 2), timeout=30)


def test_a_label_move_in_a_local_registry_rolls_well_within_the_poll_interval(
    inproc: InProcess, cluster: KubeCluster, ns: str
) -> None:
    """`scoring register` (or `scoring label`) is picked up from the labels file within about a second,
    not at the next poll: here nobody polls within the test's time."""
    model, names = f"watch-{ns[-6:]}", ["w0", "w1"]
    inproc.register(model)
    manifests = [scoring_model(name, ns, {"name": model, "label": "latest"}) for name in names]
    for manifest in manifests:
        manifest["spec"]["model"]["pollInterval"] = 600
    apply(cluster, *manifests)
    for name in names:
        wait_for(f"{name} Ready", functools.partial(_ready, cluster, ns, name, 1))
    reads = inproc.rec.resolver.reads
    moved = time.monotonic()
    inproc.register(model)
    applied: dict[str, float] = {}

    def both_applied() -> bool:
        for name in names:
            dep = get(cluster, "deployment", ns, name) or {}
            version = (dep.get("metadata") or {}).get("annotations", {}).get("scoring.dev/model-version")
            if version == "2" and name not in applied:
                applied[name] = time.monotonic() - moved
        return len(applied) == len(names)

    wait_for("both Deployments on version 2", both_applied, timeout=20, interval=0.2)
    assert max(applied.values()) < 10, applied  # 600 s pollers: only the watch can explain this
    assert inproc.rec.resolver.reads - reads <= 3, "the move was read once, not once per tracker"
    for name in names:
        wait_for(f"{name} Ready on version 2", functools.partial(_ready, cluster, ns, name, 2), timeout=30)


def test_registry_outage_backs_off_without_reapplying_and_recovers(
    inproc: InProcess, cluster: KubeCluster, ns: str
) -> None:
    model, sub = f"out-{ns[-6:]}", f"share-{ns[-6:]}"
    inproc.register(model, sub=sub)
    manifest = scoring_model("outage", ns, {"name": model, "label": "latest",
                                            "registry": {"type": "local", "claimName": "model-registry", "path": sub}})
    manifest["spec"]["model"]["pollInterval"] = 5
    apply(cluster, manifest)
    wait_for("Ready", lambda: _ready(cluster, ns, "outage", 1))
    rec = inproc.rec
    reads: list[float] = []
    real_read = rec.resolver._read

    async def timed_read(question: tuple[str, str, str]) -> Any:
        if sub in question[0]:
            reads.append(time.monotonic())
        return await real_read(question)

    rec.resolver._read = timed_read  # type: ignore[method-assign]
    share = inproc.root / sub
    hidden = inproc.root / f".{sub}-unmounted"
    calls = inproc.calls()
    try:
        shutil.move(share, hidden)  # the share goes away
        wait_for("Degraded with RegistryUnavailable", lambda: condition(
            get(cluster, "scoringmodel", ns, "outage"), "ModelResolved").get("reason") == "RegistryUnavailable",
            timeout=20)
        time.sleep(8)
    finally:
        shutil.move(hidden, share)
    during = inproc.calls() - calls
    assert not [c for c in during if c[0] == "apply"], f"a retry re-applied children: {during}"
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    failing = gaps[:3]  # after the first failure: 1, 2, 4 s (then capped by the 5 s poll interval)
    assert len(failing) == 3 and failing[0] < 3, gaps
    assert all(b > a * 1.4 for a, b in itertools.pairwise(failing)), gaps
    sm = wait_for("Ready again after the outage", lambda: _ready(cluster, ns, "outage", 1), timeout=20)
    assert sm
    events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector",
                                  "involvedObject.kind=ScoringModel,involvedObject.name=outage")
    warnings = [e["reason"] for e in events["items"] if e["type"] == "Warning"]
    assert warnings == ["RegistryUnavailable"], f"one Warning per cause, got {warnings}"
