"""Helpers for the operator's cluster tests: run the operator as a subprocess, wait for conditions."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from scoring_runtime.registry import LocalFileRegistry
from tests.kube.controlplane import KubeCluster, free_ports, namespace_name_for

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "scoring-operator"
#: Poll interval of the test ScoringModels: short, so label moves and drift repair show up fast.
POLL = 2


def _die_with_parent() -> None:
    """preexec_fn: the operator gets SIGKILL when pytest dies, so it never outlives a killed run."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the fixture's teardown still stops it
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of a GET on loopback; (0, "") when nothing listens yet."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


@dataclass
class Operator:
    """A `scoring-operator` subprocess running with the Helm chart's ServiceAccount token."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    registry_root: Path
    metrics_port: int
    liveness_port: int
    kubeconfig: Path
    release: str
    release_namespace: str
    service_account: str

    @classmethod
    def start(
        cls, *, kubeconfig: Path, registry_root: Path, ports: list[int], log_path: Path, release: str,
        release_namespace: str, service_account: str, namespaces: tuple[str, ...] = (), log_level: str = "DEBUG",
        settings: Mapping[str, str] | None = None,
    ) -> Operator:
        """Start the operator; `settings`: extra `SCORING_OPERATOR_*` env vars (others are not inherited)."""
        exe = shutil.which("scoring-operator")
        cmd = [exe] if exe else [sys.executable, "-m", "scoring_operator"]
        cmd += [f"--namespace={n}" for n in namespaces] or ["--all-namespaces"]
        cmd += [
            "--local-registry-root", str(registry_root),
            "--metrics-port", str(ports[0]),
            "--liveness-port", str(ports[1]),
            "--bind-address", "127.0.0.1",
            "--log-level", log_level,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCORING_OPERATOR_")}
        env.update(settings or {})
        env["KUBECONFIG"] = str(kubeconfig)
        log = log_path.open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)
        log.close()
        op = cls(proc, log_path, registry_root, ports[0], ports[1], kubeconfig, release, release_namespace,
                 service_account)
        deadline = time.monotonic() + 90
        while http_get(op.url("liveness", "/healthz"))[0] != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"scoring-operator exited with {proc.returncode}:\n{op.log_tail()}")
            if time.monotonic() > deadline:
                op.stop()
                raise RuntimeError(f"scoring-operator not live after 90s:\n{op.log_tail()}")
            time.sleep(0.3)
        return op

    def url(self, which: str, path: str) -> str:
        port = self.metrics_port if which == "metrics" else self.liveness_port
        return f"http://127.0.0.1:{port}{path}"

    def metrics(self) -> str:
        status, body = http_get(self.url("metrics", "/metrics"))
        assert status == 200, f"/metrics answered {status}"
        return body

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    # -- the registry the operator reads ------------------------------------------------------
    def register(self, name: str, *, sub: str = "", set_latest: bool = True) -> int:
        """Register a tiny dummy model version (kwok pods never load it) and return its version."""
        src = self.registry_root.parent / "sources" / name
        src.mkdir(parents=True, exist_ok=True)
        (src / "model.json").write_text(json.dumps({"framework": "sklearn", "task": "test"}))
        (src / "weights.bin").write_bytes(os.urandom(16))
        root = self.registry_root / sub if sub else self.registry_root
        return LocalFileRegistry(root).register(name, src, set_latest=set_latest).version


#: A kubeconfig exec credential plugin (client.authentication.k8s.io/v1): prints the token kept in
#: the file named by $TOKEN_FILE, with an expiry, and counts its runs in $TOKEN_FILE.calls.
EXEC_PLUGIN = """#!{python}
import datetime, json, os, sys
token_file = os.environ["TOKEN_FILE"]
with open(token_file + ".calls", "a") as calls:
    calls.write("1\\n")
info = json.loads(os.environ.get("KUBERNETES_EXEC_INFO") or "{{}}")
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=10)
json.dump({{
    "apiVersion": info.get("apiVersion") or "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {{"token": open(token_file).read().strip(),
               "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}},
}}, sys.stdout)
"""


def exec_plugin_kubeconfig(cluster: KubeCluster, service_account: str, namespace: str, workdir: Path) -> Path:
    """A kubeconfig whose user is an exec plugin handing out a TokenRequest token of `service_account`.

    What `kubelogin` (AKS/Entra ID) or `aws eks get-token` look like to a client: no token in the
    file, a command that prints an ExecCredential.
    """
    from tests.kube.controlplane import current_cluster_entry, kubeconfig_doc

    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    token_file = workdir / "exec-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    plugin = workdir / "exec-credential-plugin"
    plugin.write_text(EXEC_PLUGIN.format(python=sys.executable))
    plugin.chmod(0o700)
    user = {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(plugin),
        "env": [{"name": "TOKEN_FILE", "value": str(token_file)}],
        "interactiveMode": "Never",
        "provideClusterInfo": False,
    }}
    path = workdir / "exec.kubeconfig"
    path.write_text(json.dumps(kubeconfig_doc(current_cluster_entry(cluster.kubeconfig), user, namespace=namespace)))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def chart_operator(
    cluster: KubeCluster, workdir: Path, *, watch_namespaces: tuple[str, ...] = (), exec_plugin: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Iterator[Operator]:
    """Install the chart (replicaCount=0) in a fresh namespace and run the operator with its ServiceAccount.

    With `watch_namespaces`, the chart creates Roles there only and the operator watches just those.
    With `exec_plugin`, the operator's kubeconfig runs an exec credential plugin for its token.
    `settings`: extra `SCORING_OPERATOR_*` env vars for the operator.
    """
    release_ns = cluster.create_namespace(namespace_name_for("scoring-system"))
    release = f"so-{release_ns.rsplit('-', 1)[-1]}"
    args: list[str | os.PathLike[str]] = [
        "install", release, CHART, "-n", release_ns, "--set", "replicaCount=0", "--wait"]
    if watch_namespaces:
        args += ["--set", "watchNamespaces={" + ",".join(watch_namespaces) + "}"]
    cluster.helm(*args)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/scoringmodels.scoring.dev")
    service_account = f"{release}-scoring-operator"
    if exec_plugin:
        kubeconfig = exec_plugin_kubeconfig(cluster, service_account, release_ns, workdir)
    else:
        kubeconfig = cluster.token_kubeconfig(service_account, release_ns, path=workdir / "sa.kubeconfig")
    op = Operator.start(
        kubeconfig=kubeconfig,
        registry_root=workdir / "registry",
        ports=free_ports(2),
        log_path=workdir / "operator.log",
        release=release,
        release_namespace=release_ns,
        service_account=service_account,
        namespaces=watch_namespaces,
        settings=settings,
    )
    try:
        yield op
    finally:
        op.stop()
        cluster.helm("uninstall", release, "-n", release_ns, check=False)
        cluster.delete_namespace(release_ns)


def wait_for(
    what: str, fn: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.5,
    operator: Operator | None = None,
) -> T:
    """Poll `fn` until it returns something truthy (so never None); fail with the last value and the operator's log."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except (AssertionError, KeyError, IndexError, TypeError, subprocess.CalledProcessError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            tail = f"\n--- operator log:\n{operator.log_tail()}" if operator else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}{tail}")
        time.sleep(interval)


def get(cluster: KubeCluster, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The object as a dict, or None when absent."""
    proc = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def get_existing(cluster: KubeCluster, kind: str, namespace: str, name: str) -> dict[str, Any]:
    """The object as a dict; an AssertionError (which `wait_for` retries) when absent."""
    obj = get(cluster, kind, namespace, name)
    assert obj is not None, f"{kind} {namespace}/{name} is absent"
    return obj


def apply(cluster: KubeCluster, *docs: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Server-side apply manifests (as a List) with a test field manager."""
    body = {"apiVersion": "v1", "kind": "List", "items": list(docs)}
    return cluster.kubectl("apply", "--server-side", "--field-manager=e2e-test", "-f", "-",
                           input=json.dumps(body), check=check)


def scoring_model(name: str, namespace: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A ScoringModel manifest using the namespace's `model-registry` claim and a short poll interval."""
    ref = {"registry": {"type": "local", "claimName": "model-registry"}, "pollInterval": POLL, **model}
    return {
        "apiVersion": "scoring.dev/v1alpha1",
        "kind": "ScoringModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": ref, **spec},
    }


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def registry_claim(cluster: KubeCluster, namespace: str) -> str:
    """A bound ReadOnlyMany PV/PVC pair named `model-registry` (kwok pods need a bound claim to schedule)."""
    pv = f"{namespace}-model-registry"
    apply(cluster, {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv, "labels": {"scoring-operator.test/owned": "true"}},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
            "hostPath": {"path": "/srv/model-registry"},
            "claimRef": {"namespace": namespace, "name": "model-registry"},
        },
    }, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model-registry", "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
    return pv


def pods_running(cluster: KubeCluster, namespace: str, instance: str) -> list[dict[str, Any]]:
    pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={instance}")
    return [p for p in pods["items"] if p["status"].get("phase") == "Running" and not p["metadata"].get(
        "deletionTimestamp")]
