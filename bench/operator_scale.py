#!/usr/bin/env python3
"""The operator at scale on the real control plane (kwok nodes): 500 ScoringModels tracking one label.

    flock /tmp/bench.lock python bench/operator_scale.py            # the full run (~15 minutes)
    python bench/operator_scale.py --models 50 --idle 60 --kills 5   # a quick look

Phases, each timed from the apiserver's side (a `kubectl get --watch` of the ScoringModels' status):
1. create N ScoringModels (server-side apply, in chunks) -> seconds until all are Ready, counted
   from the last create;
2. idle: nothing changes for `--idle` seconds -> the operator's API requests and writes per minute,
   from the apiserver's audit log (only the operator's ServiceAccount is audited; watches excluded),
   and its CPU seconds;
3. label move: a new version registered -> seconds until all N are Ready on it;
4. registry outage: the registry directory disappears for 60 s -> how many report
   RegistryUnavailable, the API traffic meanwhile, and seconds from its return until all are Ready;
5. SIGKILLs: the operator is killed `--kills` times amid creates, updates and deletes, restarted
   each time -> seconds until converged, with no duplicate, orphaned or missing child.

Peak RSS is the operator process's VmHWM over phases 1-4. The control plane's own controllers get
a higher client QPS (--kube-api-qps) so that they, not the operator, are not the bottleneck, and
the controller-manager 20 Deployment and ReplicaSet workers (see KCM_WORKERS); the Service range
is a /16, and kwok plays 32 pod stages at once (its default: 4).
Results: bench/results/operator-scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quiet import QUIET_LOCK, held_exclusively  # noqa: E402  (bench/, beside this script)

from tests.kube.controlplane import ControlPlane, _Process, free_ports  # noqa: E402
from tests.operator.kubehelpers import CHART, Operator, registry_claim  # noqa: E402
from tests.operator.test_operator_kills import converged  # noqa: E402

RESULTS = REPO / "bench" / "results"
RELEASE, RELEASE_NS, MODELS_NS, MODEL = "bench", "scoring-system", "bench-models", "bench-model"
SERVICE_ACCOUNT = f"{RELEASE}-scoring-operator"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    # Only ServiceAccounts (the operator); the harness's controllers and kwok run as admin.
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
}
#: Client QPS for the control plane's controllers (defaults of 20-50 would make them the bottleneck),
#: and the controller-manager's Deployment and ReplicaSet workers (default 5). 20 workers, chosen
#: by a sweep of label moves (bench/results/operator-scale.md): 5, 10, 20 and 40 took 40-49 s with
#: about one conflict per Deployment; 100 (this harness's earlier setting) took 50-61 s, its
#: workers re-syncing Deployments from a stale cache: 600-3,900 conflicting status writes.
#: `--kcm-syncs N` sets it for one run.
KCM_WORKERS = 20
FAST_CLIENTS = {
    "kube-controller-manager": ["--kube-api-qps=400", "--kube-api-burst=800"],
    "kube-scheduler": ["--kube-api-qps=400", "--kube-api-burst=800"],
}


#: Extra operator settings (env) for this run; empty: the defaults the chart ships.
SETTINGS: dict[str, str] = {}


#: kwok plays pod stages (Ready, deletion) 4 at a time by default: a rollout of 500 Deployments
#: (500 new pods Ready, 500 old ones deleted) would wait on kwok, a stand-in for 500 kubelets.
#: (A KwokConfiguration read from a file gets no defaults: the other parallelisms are kwok's defaults.)
KWOK_OPTIONS = {"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration", "options": {
    "podPlayStageParallelism": 32, "nodePlayStageParallelism": 4, "nodeLeaseParallelism": 4,
    "podsOnNodeSyncParallelism": 1, "enablePodsOnNodeSyncListPager": True}}


class ScaleControlPlane(ControlPlane):
    """The test harness's control plane, with faster controller clients, a faster kwok and more kwok nodes."""

    def _spawn(self, name: str, args: Sequence[str], *, stage: int = 2) -> _Process:
        extra = list(FAST_CLIENTS.get(name, []))
        if name == "kube-controller-manager":
            extra += [f"--concurrent-deployment-syncs={KCM_WORKERS}", f"--concurrent-replicaset-syncs={KCM_WORKERS}"]
        if name == "kwok":
            options = self.workdir / "kwok-scale.yaml"
            options.write_text(json.dumps(KWOK_OPTIONS))
            extra.append(f"--config={options}")
        return super()._spawn(name, [*args, *extra], stage=stage)


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Audit:
    """The operator's requests, read from the apiserver's audit log (JSON lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def since(self, offset: int) -> Counter[str]:
        """Requests by verb appended after `offset` (watches excluded)."""
        verbs: Counter[str] = Counter()
        with self.path.open("rb") as f:
            f.seek(offset)
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("stage") != "ResponseComplete" or ev.get("verb") == "watch":
                    continue
                if not str(ev.get("user", {}).get("username", "")).endswith(f":{SERVICE_ACCOUNT}"):
                    continue
                verbs[ev["verb"]] += 1
        return verbs


def manifest(i: int, poll: int) -> dict[str, Any]:
    return {
        "apiVersion": "scoring.dev/v1alpha1", "kind": "ScoringModel",
        "metadata": {"name": f"sm-{i:04d}", "namespace": MODELS_NS},
        "spec": {"model": {"registry": {"type": "local", "claimName": "model-registry"}, "name": MODEL,
                           "label": "latest", "pollInterval": poll},
                 "replicas": 1, "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}},
    }


def apply_all(cp: ControlPlane, docs: list[dict[str, Any]], chunk: int = 100) -> None:
    for start in range(0, len(docs), chunk):
        body = {"apiVersion": "v1", "kind": "List", "items": docs[start:start + chunk]}
        cp.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", input=json.dumps(body), timeout=300)


def statuses(cp: ControlPlane) -> list[dict[str, Any]]:
    return list(cp.kubectl_json("get", "scoringmodels", "-n", MODELS_NS)["items"])


def count_ready(items: list[dict[str, Any]], version: int) -> int:
    n = 0
    for sm in items:
        st = sm.get("status") or {}
        if (st.get("phase") == "Ready" and (st.get("model") or {}).get("version") == version
                and st.get("observedGeneration") == sm["metadata"]["generation"]):
            n += 1
    return n


class StatusWatch:
    """Each ScoringModel's readiness fields, kept current by one `kubectl get --watch` stream.

    Why not poll: `kubectl get -o json` of 500 ScoringModels every 2 s cost ~8 CPU-seconds in a
    label move (kubectl and this script; the apiserver encoding every object comes on top), ~6% of
    what the system under test used on the same 2 cores; the watch costs ~0.5 and sees each
    change when it arrives (polling had 2 s resolution). A stream that ends is restarted (kubectl
    lists again first), so nothing is missed.
    """

    TEMPLATE = ('{.metadata.name} {.metadata.generation} {.status.observedGeneration} {.status.phase} '
                '{.status.model.version}{"\\n"}')

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp, self.namespace = cp, namespace
        self.rows: dict[str, tuple[str, str, str, str]] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.proc: subprocess.Popen[str] | None = None
        self.thread = threading.Thread(target=self._run, name="status-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        cmd = [self.cp.tool("kubectl"), "--kubeconfig", str(self.cp.kubeconfig), "get", "scoringmodels", "-n",
               self.namespace, "--watch", "--request-timeout=0", "-o", f"jsonpath={self.TEMPLATE}"]
        while not self.stopped.is_set():
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                         env=self.cp._tool_env())
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                name, gen, observed, phase, version = (line.rstrip("\n").split(" ") + [""] * 5)[:5]
                if name:
                    with self.lock:
                        self.rows[name] = (gen, observed, phase, version)
            self.proc.wait()
            if not self.stopped.is_set():
                time.sleep(0.5)

    def cpu_seconds(self) -> float:
        """CPU of the running kubectl watch (a finished one is in RUSAGE_CHILDREN)."""
        proc = self.proc
        try:
            return cpu_seconds(proc.pid) if proc is not None and proc.poll() is None else 0.0
        except OSError:
            return 0.0

    def count_ready(self, version: int) -> int:
        with self.lock:
            return sum(1 for gen, observed, phase, v in self.rows.values()
                       if phase == "Ready" and v == str(version) and gen and gen == observed)

    def close(self) -> None:
        self.stopped.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.thread.join(timeout=10)


def wait_all_ready(watch: StatusWatch, n: int, version: int, timeout: float, what: str) -> float | None:
    """Monotonic time when all `n` were Ready on `version` (None on timeout), as the watch saw it."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        ready = watch.count_ready(version)
        now = time.monotonic()
        if ready != last:
            if ready >= n or ready // 50 != last // 50:
                log(f"{what}: {ready}/{n} Ready on version {version}")
            last = ready
        if ready >= n:
            return now
        time.sleep(0.1)
    return None


def _ts(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def cluster_side(cp: ControlPlane, since_wall: float) -> dict[str, Any]:
    """When the control plane (kcm, scheduler, kwok) had the pods Ready, and when the operator said so.

    Separates the operator's latency from the harness's: the last pod's Ready transition vs the
    last ScoringModel's Ready transition, both in seconds after `since_wall` (1 s resolution).
    """
    pods = cp.kubectl_json("get", "pods", "-n", MODELS_NS)["items"]
    pod_ready = [_ts(c["lastTransitionTime"]) for p in pods for c in (p.get("status") or {}).get("conditions") or []
                 if c.get("type") == "Ready" and c.get("status") == "True"]
    sm_ready = [_ts(c["lastTransitionTime"]) for sm in statuses(cp)
                for c in (sm.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready" and c.get("status") == "True"]
    return {
        "last_pod_ready_s": round(max(pod_ready) - since_wall, 1) if pod_ready else None,
        "last_scoringmodel_ready_s": round(max(sm_ready) - since_wall, 1) if sm_ready else None,
    }


def _transition(obj: dict[str, Any], ctype: str) -> float | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True" and c.get("lastTransitionTime"):
            return _ts(c["lastTransitionTime"])
    return None


def _applied_at(obj: dict[str, Any], manager: str, subresource: str = "") -> float | None:
    times = [_ts(m["time"]) for m in obj["metadata"].get("managedFields") or [] if m.get("manager") == manager
             and m.get("time") and m.get("subresource", "") == subresource]
    return max(times) if times else None


def pipeline(cp: ControlPlane, since_wall: float) -> dict[str, Any]:
    """Who was the bottleneck: when each stage finished its last object, in seconds after `since_wall`.

    From the objects' own timestamps (1 s resolution): the operator applied the Deployment
    (managedFields time), the controller-manager created the newest ReplicaSet and its pod, the
    scheduler bound the pod, kwok made it Ready, the operator wrote the ScoringModel Ready.
    Per stage: the first, median and last completion; a stage whose "last" is far behind the one
    before it is the bottleneck (after a label move, the operator's "first" says when the move was
    seen: about a second, the labels file is watched).
    """
    deps = cp.kubectl_json("get", "deployments", "-n", MODELS_NS, "--show-managed-fields")["items"]
    rss = cp.kubectl_json("get", "replicasets", "-n", MODELS_NS)["items"]
    pods = cp.kubectl_json("get", "pods", "-n", MODELS_NS)["items"]
    newest_rs: dict[str, dict[str, Any]] = {}
    for rs in rss:
        owner = next((r["name"] for r in rs["metadata"].get("ownerReferences") or []), None)
        if owner and (owner not in newest_rs or _ts(rs["metadata"]["creationTimestamp"])
                      > _ts(newest_rs[owner]["metadata"]["creationTimestamp"])):
            newest_rs[owner] = rs
    new_rs_names = {rs["metadata"]["name"] for rs in newest_rs.values()}
    new_pods = [p for p in pods if any(r["name"] in new_rs_names for r in p["metadata"].get("ownerReferences") or [])]
    stages: dict[str, list[float]] = {
        "operator_applied_deployment": [t for d in deps if (t := _applied_at(d, "scoring-operator")) is not None],
        "kcm_created_replicaset": [_ts(rs["metadata"]["creationTimestamp"]) for rs in newest_rs.values()],
        "kcm_created_pod": [_ts(p["metadata"]["creationTimestamp"]) for p in new_pods],
        "scheduler_bound_pod": [t for p in new_pods if (t := _transition(p, "PodScheduled")) is not None],
        "kwok_pod_ready": [t for p in new_pods if (t := _transition(p, "Ready")) is not None],
        "kcm_deployment_complete": [t for d in deps if (t := _transition(d, "Available")) is not None],
        # The controller-manager's last write of the Deployment's status: the rollout completed (old pods gone).
        "kcm_last_deployment_status": [t for d in deps
                                       if (t := _applied_at(d, "kube-controller-manager", "status")) is not None],
        "operator_scoringmodel_ready": [t for sm in statuses(cp) if (t := _transition(sm, "Ready")) is not None],
    }
    out: dict[str, Any] = {}
    for stage, times in stages.items():
        rel = sorted(t - since_wall for t in times if t >= since_wall - 1)
        out[stage] = ({"n": len(rel), "first_s": round(rel[0], 1), "p50_s": round(rel[len(rel) // 2], 1),
                       "last_s": round(rel[-1], 1)} if rel else {"n": 0})
    return out


def apiserver_requests(cp: ControlPlane) -> Counter[str]:
    """All clients' requests so far by "verb resource[/subresource]" (apiserver_request_total; watches excluded).

    The 409 answers (conflicts) are counted again under "409 verb resource[/subresource]".

    The audit log holds only the operator's; this shows what the whole cluster asked of the apiserver.
    """
    counts: Counter[str] = Counter()
    for line in cp.kubectl("get", "--raw", "/metrics", timeout=60).stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.rindex("}")].split(",")
                      if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        what = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        key, n = f"{labels.get('verb', '').lower()} {what}", int(float(line.rsplit(" ", 1)[1]))
        counts[key] += n
        if labels.get("code") == "409":  # conflicts (stale resourceVersion, already exists): retried work
            counts[f"409 {key}"] += n
    return counts


def top_requests(before: Counter[str], after: Counter[str], n: int = 16) -> dict[str, int]:
    diff = after - before
    return dict(diff.most_common(n))


class CpuMeter:
    """CPU seconds of the operator and of each control-plane component (who used the 2 cores)."""

    def __init__(self, cp: ControlPlane, op: Operator, watch: StatusWatch) -> None:
        self.cp, self.op, self.watch = cp, op, watch

    def now(self) -> dict[str, float]:
        pids = {p.name: p.popen.pid for p in self.cp._procs}
        pids["operator"] = self.op.proc.pid
        out = {}
        for name, pid in pids.items():
            try:
                out[name] = cpu_seconds(pid)
            except OSError:
                continue
        # The measuring side too (this script, its kubectl calls and watch): it shares the 2 cores.
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        out["bench"] = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime + self.watch.cpu_seconds()
        return out

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before.get(k, 0.0), 1) for k in after}


def register(root: Path, work: Path) -> int:
    from scoring_runtime.registry import LocalFileRegistry

    src = work / "src"
    src.mkdir(exist_ok=True)
    (src / "model.json").write_text(json.dumps({"framework": "sklearn", "task": "test"}))
    (src / "w.bin").write_bytes(os.urandom(16))
    return LocalFileRegistry(root).register(MODEL, src).version


def start_operator(cp: ControlPlane, work: Path, registry: Path) -> Operator:
    kubeconfig = cp.token_kubeconfig(SERVICE_ACCOUNT, RELEASE_NS, duration="6h", path=work / "sa.kubeconfig")
    return Operator.start(kubeconfig=kubeconfig, registry_root=registry, ports=free_ports(2),
                          log_path=work / f"operator-{time.monotonic_ns()}.log", release=RELEASE,
                          release_namespace=RELEASE_NS, service_account=SERVICE_ACCOUNT, log_level="INFO",
                          settings=SETTINGS)


def profile(pid: int, out_dir: str | None, phase: str) -> subprocess.Popen[bytes] | None:
    """py-spy (`pip install py-spy`) sampling the operator during a phase: collapsed stacks, one per line."""
    if not out_dir:
        return None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(out_dir) / f"operator-{phase}.txt"
    log(f"profiling the operator into {out}")
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_apiserver(cp: ControlPlane, out_dir: str | None, phase: str, seconds: int = 45) -> threading.Thread | None:
    """The apiserver's own CPU profile (Go pprof, `/debug/pprof/profile`) over a phase's first `seconds`.

    Read it with `go tool pprof -top <file>`: it says where the apiserver, the busiest process in a
    label move, spends its CPU (encoding, admission, field management, etcd, GC).
    """
    if not out_dir:
        return None
    out = Path(out_dir) / f"apiserver-{phase}.pprof"
    log(f"profiling the apiserver for {seconds}s into {out}")

    def fetch() -> None:
        with out.open("wb") as f:
            subprocess.run([cp.tool("kubectl"), "--kubeconfig", str(cp.kubeconfig), "get", "--raw",
                            f"/debug/pprof/profile?seconds={seconds}"], stdout=f, stderr=subprocess.DEVNULL,
                           env=cp._tool_env(), timeout=seconds + 60, check=False)

    thread = threading.Thread(target=fetch, name="apiserver-pprof", daemon=True)
    thread.start()
    return thread


def per_minute(counts: Counter[str], seconds: float) -> dict[str, float]:
    return {verb: round(n * 60 / seconds, 2) for verb, n in sorted(counts.items())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    policy = work / "audit-policy.json"
    policy.write_text(json.dumps(AUDIT_POLICY))
    audit_log = work / "audit.log"
    out: dict[str, Any] = {"models": args.models, "poll_interval_s": args.poll, "idle_s": args.idle,
                           "controller_manager_workers": KCM_WORKERS}
    nodes = max(1, -(-args.models * 2 // 250))  # room for a rollout's surge pods too
    with ScaleControlPlane(extra_apiserver_args=[
        f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}", "--audit-log-format=json",
        "--max-requests-inflight=800", "--max-mutating-requests-inflight=400",
        *(["--profiling=true"] if args.profile else []),  # the harness turns it off; the last flag wins
    ]) as cp:
        log(f"control plane up in {cp.startup_seconds:.1f}s; adding {nodes - 1} kwok nodes")
        for i in range(1, nodes):
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"kwok-node-{i}", "labels": {
                "type": "kwok", "kubernetes.io/hostname": f"kwok-node-{i}", "kubernetes.io/os": "linux"}},
                "status": {"capacity": cp.node_capacity, "allocatable": cp.node_capacity}}
            cp.kubectl("create", "-f", "-", input=json.dumps(node))
        cp.kubectl("create", "namespace", RELEASE_NS)
        cp.kubectl("create", "namespace", MODELS_NS)
        cp.helm("install", RELEASE, CHART, "-n", RELEASE_NS, "--set", "replicaCount=0", "--wait")
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/scoringmodels.scoring.dev")
        registry_claim(cp, MODELS_NS)
        registry = work / "registry"
        version = register(registry, work)
        watch = StatusWatch(cp, MODELS_NS)
        op = start_operator(cp, work, registry)
        pid = op.proc.pid
        audit = Audit(audit_log)
        cpu = CpuMeter(cp, op, watch)
        try:
            # -- 1. creates
            docs = [manifest(i, args.poll) for i in range(args.models)]
            requests0 = apiserver_requests(cp)
            cpu0, t_first, wall_first, cpus0 = cpu_seconds(pid), time.monotonic(), time.time(), cpu.now()
            apply_all(cp, docs)
            t_last, wall_last = time.monotonic(), time.time()
            log(f"created {args.models} ScoringModels in {t_last - t_first:.1f}s")
            t_ready = wait_all_ready(watch, args.models, version, 600, "create")
            out["create"] = {
                "creates_s": round(t_last - t_first, 1),
                "all_ready_after_last_create_s": round(t_ready - t_last, 1) if t_ready else None,
                "all_ready_after_first_create_s": round(t_ready - t_first, 1) if t_ready else None,
                "operator_cpu_s": round(cpu_seconds(pid) - cpu0, 1),
                "cpu_s_by_process": CpuMeter.since(cpus0, cpu.now()),
                "api_requests": dict(audit.since(0)),
                "all_clients_top_requests": top_requests(requests0, apiserver_requests(cp)),
                "peak_rss_mb_so_far": round(peak_rss_mb(pid), 1),
                "after_last_create": cluster_side(cp, wall_last),
                "stages_after_first_create": pipeline(cp, wall_first),
            }
            out["create"]["load_average_1min"] = round(os.getloadavg()[0], 1)
            log(f"create: {out['create']}")

            # -- 2. idle
            if "idle" not in args.phases:
                args.idle = 0
            time.sleep(args.settle)
            off, cpu0, t0 = audit.offset(), cpu_seconds(pid), time.monotonic()
            time.sleep(args.idle)
            seconds = time.monotonic() - t0
            idle = audit.since(off)
            out["idle"] = {
                "seconds": round(seconds, 1),
                "requests_per_min": round(sum(idle.values()) * 60 / seconds, 2),
                "writes_per_min": round(sum(n for v, n in idle.items() if v in WRITES) * 60 / seconds, 2),
                "by_verb_per_min": per_minute(idle, seconds),
                "operator_cpu_percent_of_a_core": round(100 * (cpu_seconds(pid) - cpu0) / seconds, 2),
                "rss_mb": round(rss_mb(pid), 1),
            }
            log(f"idle: {out['idle']}")

            # -- 3. label move
            requests0 = apiserver_requests(cp)
            off, t0, wall0, cpus0 = audit.offset(), time.monotonic(), time.time(), cpu.now()
            profiler = profile(pid, args.profile, "label-move")
            apiserver_profiler = profile_apiserver(cp, args.profile, "label-move")
            version = register(registry, work)
            t_ready = wait_all_ready(watch, args.models, version, 600, "label move")
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=60)
            if apiserver_profiler is not None:
                apiserver_profiler.join(timeout=120)
            out["label_move"] = {
                "all_ready_on_new_version_s": round(t_ready - t0, 1) if t_ready else None,
                "cpu_s_by_process": CpuMeter.since(cpus0, cpu.now()),
                "api_requests": dict(audit.since(off)),
                "all_clients_top_requests": top_requests(requests0, apiserver_requests(cp)),
                "after_the_move": cluster_side(cp, wall0),
                "stages_after_the_move": pipeline(cp, wall0),
            }
            seen = (out["label_move"]["stages_after_the_move"]["operator_applied_deployment"] or {}).get("first_s")
            if seen is not None and t_ready is not None:  # the local registry's labels file is watched (~1 s)
                out["label_move"]["seen_after_s"] = seen
                out["label_move"]["all_ready_after_seen_s"] = round(t_ready - t0 - seen, 1)
            out["label_move"]["load_average_1min"] = round(os.getloadavg()[0], 1)
            log(f"label move: {out['label_move']}")
            if "outage" not in args.phases:
                out["peak_rss_mb"] = round(peak_rss_mb(pid), 1)
                return out

            # -- 4. registry outage
            time.sleep(args.settle)
            off = audit.offset()
            hidden = work / "registry-unmounted"
            registry.rename(hidden)
            t0 = time.monotonic()
            time.sleep(max(0.0, args.outage - 5))
            items = statuses(cp)
            reasons = Counter(
                next((c.get("reason") for c in (sm.get("status") or {}).get("conditions") or []
                      if c.get("type") == "ModelResolved"), None) for sm in items)
            time.sleep(max(0.0, args.outage - (time.monotonic() - t0)))
            outage_requests = audit.since(off)
            outage_s = time.monotonic() - t0
            hidden.rename(registry)
            t_back = time.monotonic()
            t_ready = wait_all_ready(watch, args.models, version, 600, "after the outage")
            events = cp.kubectl_json("get", "events", "-n", MODELS_NS, "--field-selector", "type=Warning")["items"]
            warnings = Counter(e["reason"] for e in events)
            out["registry_outage"] = {
                "outage_s": round(outage_s, 1),
                "model_resolved_reasons_near_the_end": dict(reasons),
                "requests_per_min_during": round(sum(outage_requests.values()) * 60 / outage_s, 1),
                "by_verb_during": dict(outage_requests),
                "all_ready_after_return_s": round(t_ready - t_back, 1) if t_ready else None,
                "warning_events_by_reason": dict(warnings),
            }
            log(f"outage: {out['registry_outage']}")
            out["peak_rss_mb"] = round(peak_rss_mb(pid), 1)
            out["operator_cpu_s_total_before_kills"] = round(cpu_seconds(pid), 1)
            out["resolver"] = "registry reads are shared per question (see docs/operator.md)"

            # -- 5. SIGKILLs amid changes
            out["kills"] = kills(cp, op, args, registry, work, version)
            log(f"kills: {out['kills']}")
        finally:
            watch.close()
            op.stop()
            if args.keep:
                log(f"kept {work} (operator logs, audit log)")
            else:
                shutil.rmtree(work, ignore_errors=True)
    return out


def kills(cp: ControlPlane, op: Operator, args: argparse.Namespace, registry: Path, work: Path,
          version: int) -> dict[str, Any]:
    rng = random.Random(30)
    expected = {f"sm-{i:04d}": {"replicas": 1} for i in range(args.models)}
    extra = 0
    actions: Counter[str] = Counter()

    def act() -> None:
        nonlocal extra
        action = rng.choice(["create", "update", "delete"])
        actions[action] += 1
        if action == "create":
            extra += 1
            doc = manifest(100000 + extra, args.poll)
            cp.kubectl("apply", "--server-side", "--field-manager=bench", "-f", "-", input=json.dumps(doc))
            expected[doc["metadata"]["name"]] = {"replicas": 1}
        elif action == "update":
            name = rng.choice(sorted(expected))
            expected[name] = {"replicas": 3 - expected[name]["replicas"]}
            cp.kubectl("patch", "scoringmodel", name, "-n", MODELS_NS, "--type=merge", "-p",
                       json.dumps({"spec": expected[name]}))
        else:
            name = rng.choice(sorted(expected))
            del expected[name]
            cp.kubectl("delete", "scoringmodel", name, "-n", MODELS_NS, "--wait=false")

    for k in range(args.kills):
        for _ in range(rng.randint(1, 3)):
            act()
        time.sleep(rng.uniform(0.5, 3.0))
        os.killpg(op.proc.pid, signal.SIGKILL)
        op.proc.wait()
        fresh = start_operator(cp, work, registry)
        op.proc, op.log_path = fresh.proc, fresh.log_path
        op.metrics_port, op.liveness_port = fresh.metrics_port, fresh.liveness_port
        log(f"kill {k + 1}/{args.kills} done")
    t0 = time.monotonic()
    problems: list[str] = ["not checked"]
    while time.monotonic() - t0 < 600:
        problems = converged(cp, MODELS_NS, expected, version)
        if not problems:
            break
        log(f"converging: {len(problems)} problems, e.g. {problems[:2]}")
        time.sleep(3)
    return {
        "kills": args.kills,
        "actions": dict(actions),
        "converged": not problems,
        "converged_after_last_kill_s": round(time.monotonic() - t0, 1) if not problems else None,
        "problems": problems[:10],
    }


TARGETS: list[tuple[str, Callable[[dict[str, Any]], Any], str, Callable[[Any], bool]]] = [
    ("all Ready after the last create", lambda r: r["create"]["all_ready_after_last_create_s"], "<= 30 s",
     lambda v: v is not None and v <= 30),
    ("peak RSS (MB)", lambda r: r["peak_rss_mb"], "<= 150", lambda v: v <= 150),
    ("idle writes per minute", lambda r: r["idle"]["writes_per_min"], "0", lambda v: v == 0),
    ("idle API requests per minute", lambda r: r["idle"]["requests_per_min"], "<= 10", lambda v: v <= 10),
    ("label move: all on the new version", lambda r: r["label_move"]["all_ready_on_new_version_s"], "<= 60 s",
     lambda v: v is not None and v <= 60),
    ("(of which: until the move was seen: the labels file is watched, ~1 s)", lambda r: r["label_move"]["seen_after_s"],
     "", lambda v: True),
    ("after a 60 s registry outage: all Ready", lambda r: r["registry_outage"]["all_ready_after_return_s"],
     "<= 60 s", lambda v: v is not None and v <= 60),
    ("SIGKILLs amid changes: converged", lambda r: r["kills"]["converged"], "no duplicate/orphan/missing",
     lambda v: v is True),
]


def _conditions(result: dict[str, Any]) -> list[str]:
    """The header's sentence on what else ran on the machine, and the note given on the command line."""
    if result.get("quiet_lock"):
        lines = [f"This run held the team's exclusive quiet lock (`flock -x {QUIET_LOCK}`): no other benchmark, "
                 "build or test that follows the team's lock rule ran at the same time."]
    else:
        lines = ["The machine was **shared with other work** (other engineers' builds and tests on the same 2 cores), "
                 "so times are upper bounds of what the operator needs."]
    if result.get("note"):
        lines += ["", str(result["note"])]
    return lines


def markdown(result: dict[str, Any]) -> str:
    r = result["results"]
    lines = [
        "# Operator at scale", "",
        f"{r['models']} ScoringModels tracking one label (pollInterval {r['poll_interval_s']} s) on the real "
        f"control plane with kwok nodes (the controller-manager with {r.get('controller_manager_workers', 100)} "
        f"Deployment/ReplicaSet workers); {result['machine']}. Command: `{result['command']}`.", "",
        *_conditions(result), "",
        "| target | measured | goal | met |", "|---|---|---|---|",
    ]
    for name, get, goal, ok in TARGETS:
        try:
            value = get(r)
            met = ("yes" if ok(value) else "**no**") if goal else ""
        except (KeyError, TypeError):
            value, met = "n/a", "**no**" if goal else ""
        lines.append(f"| {name} | {value} | {goal} | {met} |")
    lines += stage_table(r)
    lines += ["", "Details:", "", "```json", json.dumps(r, indent=2), "```", ""]
    return "\n".join(lines)


def stage_table(r: dict[str, Any]) -> list[str]:
    """Who was the bottleneck: each stage's first/median/last completion, and the CPU each process used."""
    phases = [("creates (s after the first create)", r.get("create") or {}, "stages_after_first_create"),
              ("label move (s after the move)", r.get("label_move") or {}, "stages_after_the_move")]
    lines: list[str] = []
    for title, phase, key in phases:
        stages = phase.get(key)
        if not stages:
            continue
        lines += ["", f"Stages, {title}: first / median / last object done (1 s resolution)", "",
                  "| stage | first | median | last |", "|---|---|---|---|"]
        for name, st in stages.items():
            if st.get("n"):
                lines.append(f"| {name} | {st.get('first_s', '-')} | {st['p50_s']} | {st['last_s']} |")
        cpu = phase.get("cpu_s_by_process") or {}
        if cpu:
            lines += ["", "CPU seconds in this phase: " + ", ".join(f"{k} {v}" for k, v in cpu.items())]
    return lines


def main() -> None:
    global KCM_WORKERS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--poll", type=int, default=20,
                        help="spec.model.pollInterval of every ScoringModel (a local label move: seen in ~1 s)")
    parser.add_argument("--idle", type=float, default=300, help="seconds of the idle window")
    parser.add_argument("--settle", type=float, default=20, help="seconds to let events settle between phases")
    parser.add_argument("--outage", type=float, default=60, help="seconds the registry is away")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--out", default=str(RESULTS / "operator-scale"), help="results path without extension")
    parser.add_argument("--quick", dest="phases", action="store_const", const={"create", "move"},
                        default={"create", "idle", "move", "outage", "kills"},
                        help="only the creates and the label move (no idle window, outage or kills): to iterate")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (operator log, audit log)")
    parser.add_argument("--note", default="", help="a sentence for the write-up's header (what else ran, why this run)")
    parser.add_argument("--profile", metavar="DIR",
                        help="profile the operator (py-spy) and the apiserver (pprof) in the label move into DIR")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an operator setting for this run, e.g. MAX_CONCURRENT_RECONCILES=32 (default: none)")
    parser.add_argument("--kcm-syncs", type=int, default=KCM_WORKERS, metavar="N",
                        help=f"the controller-manager's Deployment/ReplicaSet workers (default: {KCM_WORKERS})")
    args = parser.parse_args()
    KCM_WORKERS = args.kcm_syncs
    for item in args.set:
        name, _, value = item.partition("=")
        SETTINGS[f"SCORING_OPERATOR_{name.upper()}"] = value
    started = time.monotonic()
    quiet = held_exclusively()
    results = run(args)
    doc = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "command": ("flock -x /tmp/quiet.lock " if quiet else "") + "flock /tmp/bench.lock python "
                   "bench/operator_scale.py " + shlex.join(sys.argv[1:]),
        "quiet_lock": quiet,
        "note": args.note,
        "wall_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
