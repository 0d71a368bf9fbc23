"""`make cluster` / `make cluster-down`: the test cluster (control plane + a real node) for people.

    python -m tests.kube.local_cluster up     # start in the background, print the kubeconfig
    python -m tests.kube.local_cluster down   # stop it and remove what it created
    python -m tests.kube.local_cluster status

``up`` starts a detached process that holds the control plane (tests/kube/controlplane.py) and
the real node (tests/kube/node.py) until ``down``. Unlike in the tests, the node is not tainted and
the kwok node is removed, so every pod runs for real. It also trains the FAQ model into a local
registry and binds it as the PVC ``model-registry`` in the ``default`` and ``scoring-system``
namespaces, and writes Helm values that point the chart at the images built here.
Everything it writes lives in ``~/.cache/scoring-operator/cluster/``. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from tests.kube.controlplane import ControlPlane
from tests.kube.node import NODE_NAME, TAINT_KEY, RealNode, _cache_root

HOME = _cache_root() / "cluster"
PID_FILE = HOME / "cluster.pid"
READY_FILE = HOME / "ready.json"
LOG_FILE = HOME / "cluster.log"
KUBECONFIG = HOME / "kubeconfig"
VALUES = HOME / "values.yaml"
REGISTRY = HOME / "registry"
SYSTEM_NS = "scoring-system"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _registry_claims(cp: ControlPlane) -> None:
    """Train the FAQ model into REGISTRY (once) and bind it as `model-registry` in two namespaces."""
    if not (REGISTRY / "faq-matcher").is_dir():
        train = Path(__file__).resolve().parents[2] / "examples" / "faq-matching" / "train.py"
        subprocess.run([sys.executable, str(train), "--registry", str(REGISTRY)], check=True,
                       stdout=subprocess.DEVNULL)
    for p in [REGISTRY, *REGISTRY.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    for d in (HOME, HOME.parent):
        d.chmod(0o755)
    cp.kubectl("create", "namespace", SYSTEM_NS)
    for ns in ("default", SYSTEM_NS):
        docs = [{
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"model-registry-{ns}"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                     "hostPath": {"path": str(REGISTRY), "type": "Directory"},
                     "claimRef": {"namespace": ns, "name": "model-registry"}},
        }, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "model-registry", "namespace": ns},
            "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": f"model-registry-{ns}",
                     "resources": {"requests": {"storage": "1Gi"}}},
        }]
        cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))


def serve() -> int:
    """The detached holder: start, publish the kubeconfig, wait for SIGTERM, stop."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ControlPlane(startup_timeout=300) as cp, RealNode(cp) as node:
        cp.kubectl("delete", "node", cp.node_name, "--wait=false")  # people's pods all run for real
        cp.kubectl("taint", "node", NODE_NAME, f"{TAINT_KEY}-")
        _registry_claims(cp)
        KUBECONFIG.write_bytes(cp.kubeconfig.read_bytes())
        KUBECONFIG.chmod(0o600)
        op_repo, op_tag = node.images["operator"]["ref"].rsplit(":", 1)
        VALUES.write_text(yaml.safe_dump({
            "image": {"repository": op_repo, "tag": op_tag},
            "runtime": {"image": node.images["runtime"]["ref"]},
            "localRegistry": {"claimName": "model-registry"},
        }, sort_keys=False))
        READY_FILE.write_text(json.dumps({"kubeconfig": str(KUBECONFIG), "bin_dir": str(cp.bin_dir),
                                          "values": str(VALUES), "registry": str(REGISTRY)}))
        stop.wait()
    READY_FILE.unlink(missing_ok=True)
    return 0


def up(timeout: float = 600) -> int:
    if (pid := _running_pid()) is not None and READY_FILE.exists():
        print(f"already running (pid {pid})", file=sys.stderr)
        _print_usage()
        return 0
    HOME.mkdir(parents=True, exist_ok=True)
    READY_FILE.unlink(missing_ok=True)
    with LOG_FILE.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.kube.local_cluster", "serve"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parents[2])
    PID_FILE.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while not READY_FILE.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            print(LOG_FILE.read_text(errors="replace")[-4000:], file=sys.stderr)
            print(f"the cluster did not start (log: {LOG_FILE})", file=sys.stderr)
            down()
            return 1
        time.sleep(1)
    _print_usage()
    return 0


def _print_usage() -> None:
    info = json.loads(READY_FILE.read_text())
    print(f"""cluster up: control plane + real node {NODE_NAME} (log: {LOG_FILE})
  export KUBECONFIG={info['kubeconfig']}
  export PATH={info['bin_dir']}:$PATH      # kubectl and helm of the same version
  helm values for the images built here: {info['values']}
  model registry (PVC model-registry in default and {SYSTEM_NS}): {info['registry']}
  Service IPs answer from the client namespace: ip netns exec scoring-client curl ...
  stop with: make cluster-down""")
    print(info["kubeconfig"])


def down(timeout: float = 120) -> int:
    pid = _running_pid()
    if pid is None:
        print("no cluster running", file=sys.stderr)
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)
    READY_FILE.unlink(missing_ok=True)
    KUBECONFIG.unlink(missing_ok=True)
    from tests.kube.node import cleanup  # also what a killed holder left

    for line in cleanup():
        print(f"cleanup: {line}", file=sys.stderr)
    print("cluster down")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "serve"])
    a = ap.parse_args(argv)
    if a.command == "serve":
        return serve()
    if a.command == "up":
        return up()
    if a.command == "down":
        return down()
    pid = _running_pid()
    print(f"running (pid {pid})" if pid and READY_FILE.exists() else "not running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
