"""SIGKILL the operator again and again amid creates, updates, deletes and label moves: it converges.

After every kill a new operator starts (as a Deployment's restart would). At the end every
ScoringModel is Ready on the latest version for its latest generation, each has exactly one
Deployment and one Service owned by its current uid and as many pods as it asks for, no child is
left without a living owner, and deleted ScoringModels are gone (the finalizer was released).
The scale script (bench/operator_scale.py) runs the same check with 30 kills and 500 objects.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kube.controlplane import KubeCluster, free_ports
from tests.operator import conftest
from tests.operator.kubehelpers import Operator, apply, chart_operator, scoring_model, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

KILLS = int(os.environ.get("SCORING_TEST_KILLS", "10"))


@pytest.fixture(scope="module")
def operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    with chart_operator(cluster, tmp_path_factory.mktemp("kill-operator")) as op:  # stops the last one started
        try:
            yield op
        finally:
            conftest.delete_scoring_models(cluster)


def _restart(op: Operator) -> Operator:
    """SIGKILL the operator's process group and start a fresh one with the same identity and registry."""
    os.killpg(op.proc.pid, signal.SIGKILL)
    op.proc.wait()
    with op.log_path.open("ab") as log:
        log.write(b"\n----- SIGKILL -----\n")
    fresh = Operator.start(
        kubeconfig=op.kubeconfig, registry_root=op.registry_root, ports=free_ports(2),
        log_path=op.log_path.with_name(f"operator-{time.monotonic_ns()}.log"), release=op.release,
        release_namespace=op.release_namespace, service_account=op.service_account,
    )
    op.proc = fresh.proc  # the fixture's object now stands for the new process
    op.log_path, op.metrics_port, op.liveness_port = fresh.log_path, fresh.metrics_port, fresh.liveness_port
    return op


def converged(cluster: KubeCluster, ns: str, expected: dict[str, dict[str, Any]], version: int) -> list[str]:
    """What is still wrong (empty when converged): the invariants after any sequence of kills."""
    problems: list[str] = []
    sms = {s["metadata"]["name"]: s for s in cluster.kubectl_json("get", "scoringmodels", "-n", ns)["items"]}
    if set(sms) != set(expected):
        problems.append(f"ScoringModels {sorted(sms)} != expected {sorted(expected)}")
    uids = {s["metadata"]["uid"]: name for name, s in sms.items()}
    for name, sm in sms.items():
        st = sm.get("status") or {}
        if not (st.get("phase") == "Ready" and (st.get("model") or {}).get("version") == version
                and st.get("observedGeneration") == sm["metadata"]["generation"]):
            problems.append(f"{name}: {st.get('phase')} on {(st.get('model') or {}).get('version')}, "
                            f"generation {sm['metadata']['generation']} observed {st.get('observedGeneration')}")
    selector = "app.kubernetes.io/managed-by=scoring-operator"
    for kind in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        for obj in cluster.kubectl_json("get", kind, "-n", ns, "-l", selector)["items"]:
            owners = [r["uid"] for r in obj["metadata"].get("ownerReferences") or []]
            if not any(u in uids for u in owners):
                problems.append(f"orphaned {kind} {obj['metadata']['name']}")
    per_owner: dict[str, list[str]] = {}
    for kind in ("deployments", "services"):
        for obj in cluster.kubectl_json("get", kind, "-n", ns, "-l", selector)["items"]:
            for r in obj["metadata"].get("ownerReferences") or []:
                per_owner.setdefault(r["uid"], []).append(kind)
    for uid, name in uids.items():
        if sorted(per_owner.get(uid, [])) != ["deployments", "services"]:
            problems.append(f"{name}: children {sorted(per_owner.get(uid, []))}")
    pods = cluster.kubectl_json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=scoring-model")["items"]
    for name, spec in expected.items():
        mine = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/instance") == name
                and not p["metadata"].get("deletionTimestamp")]
        if len(mine) != spec.get("replicas", 1):
            problems.append(f"{name}: {len(mine)} pods, wants {spec.get('replicas', 1)}")
    return problems


def test_sigkills_amid_changes_converge(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    rng = random.Random(12)
    model = f"kill-{ns[-6:]}"
    version = operator.register(model)
    expected: dict[str, dict[str, Any]] = {}
    counter = 0

    def create() -> None:
        nonlocal counter
        counter += 1
        name = f"k{counter}"
        extra = {"replicas": rng.choice([1, 2])}
        apply(cluster, scoring_model(name, ns, {"name": model, "label": "latest"}, **extra))
        expected[name] = extra

    for _ in range(6):
        create()
    for _ in range(KILLS):
        for _ in range(rng.randint(1, 3)):
            action = rng.choice(["create", "update", "delete", "move"])
            if action == "create" or not expected:
                create()
            elif action == "update":
                name = rng.choice(sorted(expected))
                expected[name] = {"replicas": 3 - expected[name]["replicas"]}
                cluster.kubectl("patch", "scoringmodel", name, "-n", ns, "--type=merge", "-p",
                                json.dumps({"spec": expected[name]}))
            elif action == "delete":
                name = rng.choice(sorted(expected))
                del expected[name]
                cluster.kubectl("delete", "scoringmodel", name, "-n", ns, "--wait=false")
            else:
                version = operator.register(model)
        time.sleep(rng.uniform(0.2, 2.0))
        _restart(operator)
    def check() -> bool:
        problems = converged(cluster, ns, expected, version)
        assert not problems, problems
        return True

    wait_for(f"convergence after {KILLS} SIGKILLs", check, timeout=180, interval=2, operator=operator)
