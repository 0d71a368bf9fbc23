"""Fixtures of the real-node tests (pytest marker ``node``): a real node, a registry, the operator pod.

- ``real_node`` (session): this machine joined to the session's control plane as a real node
  (tests/kube/node.py). Fails when its binaries/images are not built (like the cluster tests);
  skips without root, with ``SCORING_SKIP_NODE=1``, or on an existing cluster.
- ``node_registry`` (session): a local file registry on the host holding the FAQ model as version 1
  and 2 (same files; the version tells the rollouts apart); pods mount it through a hostPath PV.
- ``NodeClient``: sends test traffic from inside the client network namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scoring_runtime.registry import LocalFileRegistry
from tests.kube.controlplane import ControlPlane, KubeCluster
from tests.kube.node import RealNode, in_client_netns, node_problem
from tests.operator.kubehelpers import CHART
from tests.runtime import support

ENV_SKIP_NODE = "SCORING_SKIP_NODE"
CLIENT = Path(__file__).with_name("client.py")
MODEL = "faq-matcher"


@pytest.fixture(scope="session")
def real_node(cluster: KubeCluster) -> Iterator[RealNode]:
    if os.environ.get(ENV_SKIP_NODE) == "1":
        pytest.skip(f"{ENV_SKIP_NODE}=1: real-node tests disabled")
    if not isinstance(cluster, ControlPlane):
        pytest.skip("the real node joins the harness's own control plane, not an existing cluster")
    if os.geteuid() != 0:
        pytest.skip("a real node needs root (kubelet, containerd, network namespaces)")
    problem = node_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    with RealNode(cluster) as node:
        yield node


def make_readable(root: Path) -> None:
    """Pods run as uid 10001: the registry must be world-readable (atomic writes create 0600 files)."""
    root.chmod(0o755)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


@dataclass(frozen=True)
class Faq:
    registry: Path
    model_dir: Path  # version 1, fetched: the in-process reference the pods' answers are compared with


@pytest.fixture(scope="session")
def faq(tmp_path_factory: pytest.TempPathFactory) -> Faq:
    """The FAQ model registered as versions 1 and 2 (same files; label `latest` on 1)."""
    root = tmp_path_factory.mktemp("node-registry")
    registry, model_dir = support.build_faq_model(root)
    reg = LocalFileRegistry(registry)
    source = root / "v2-source"
    source.mkdir()
    manifest = reg.get_manifest(MODEL, 1)
    for entry in manifest.files:
        (source / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (source / entry.path).write_bytes((model_dir / entry.path).read_bytes())
    (source / "model.json").write_text(json.dumps({"framework": manifest.framework, "task": manifest.task,
                                                   **({"flavour": manifest.flavour} if manifest.flavour else {})}))
    assert reg.register(MODEL, source, set_latest=False).version == 2
    for p in (root, root.parent):
        p.chmod(0o755)
    make_readable(registry)
    return Faq(registry, model_dir)


def set_label(registry: Path, version: int, label: str = "latest") -> None:
    LocalFileRegistry(registry).set_label(MODEL, label, version)
    make_readable(registry)


def registry_claim(cluster: KubeCluster, namespace: str, registry: Path) -> str:
    """PV (hostPath of the registry) + PVC ``model-registry`` bound to it in ``namespace``."""
    pv = f"{namespace}-registry"
    docs = [{
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv, "labels": {"scoring-operator.test/owned": "true"}},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(registry), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": "model-registry"},
        },
    }, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model-registry", "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": pv,
                 "resources": {"requests": {"storage": "1Gi"}}},
    }]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    return pv


@dataclass
class NodeClient:
    """HTTP from the client network namespace (the only place test traffic to the cluster comes from)."""

    def request(self, url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 30) -> dict[str, Any]:
        cmd = [sys.executable, str(CLIENT), "request", url, "--method", method]
        if body is not None:
            cmd += ["--json", json.dumps(body)]
        for k, v in (headers or {}).items():
            cmd += ["--header", f"{k}: {v}"]
        out = subprocess.run(in_client_netns(*cmd), capture_output=True, text=True, timeout=timeout, check=True)
        return dict(json.loads(out.stdout))

    def start_load(self, url: str, body: Any, headers: dict[str, str], *, concurrency: int = 4,
                   max_seconds: float = 300, pause: float = 0.0, requests: int = 0,
                   alternate_header: str | None = None, alternate_seconds: float = 3.0, raw: bool = False) -> Load:
        cmd = [sys.executable, str(CLIENT), "load", url, "--json", json.dumps(body),
               "--concurrency", str(concurrency), "--max-seconds", str(max_seconds), "--pause", str(pause),
               "--requests", str(requests)]
        if alternate_header:
            cmd += ["--alternate-header", alternate_header, "--alternate-seconds", str(alternate_seconds)]
            cmd += ["--raw"] if raw else []
        for k, v in headers.items():
            cmd += ["--header", f"{k}: {v}"]
        proc = subprocess.Popen(in_client_netns(*cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        if first != "started":
            proc.kill()
            raise AssertionError(f"load generator did not start: {first} {proc.stderr.read() if proc.stderr else ''}")
        return Load(proc)


@dataclass
class Load:
    proc: subprocess.Popen[str]

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for a load started with `requests=N` to finish; its summary."""
        out, err = self.proc.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        assert lines, f"load generator printed nothing: {err}"
        return dict(json.loads(lines[-1]))

    def stop(self) -> dict[str, Any]:
        """Stop the load and return its summary (requests, failures, versions, pods, sequence)."""
        self.proc.terminate()
        out, err = self.proc.communicate(timeout=60)
        lines = out.strip().splitlines()
        assert lines, f"load generator printed nothing: {err}"
        return dict(json.loads(lines[-1]))


@pytest.fixture(scope="session")
def client(real_node: RealNode) -> NodeClient:
    return NodeClient()


def install_operator(cluster: KubeCluster, real_node: RealNode, release: str, release_ns: str,
                     watch: list[str]) -> None:
    """The Helm chart with this run's operator and runtime images, watching `watch` (real-node tests)."""
    op_repo, op_tag = real_node.images["operator"]["ref"].rsplit(":", 1)
    cluster.helm(
        "install", release, CHART, "-n", release_ns, "--wait", "--timeout=5m",
        "--set", f"image.repository={op_repo}", "--set", f"image.tag={op_tag}",
        "--set", f"runtime.image={real_node.images['runtime']['ref']}",
        "--set", "localRegistry.claimName=model-registry",
        "--set", "logLevel=DEBUG",
        "--set", "watchNamespaces={" + ",".join(watch) + "}",
        timeout=400,
    )
