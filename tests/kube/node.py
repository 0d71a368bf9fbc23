"""A REAL node for the test control plane: containerd + runc + CNI, kubelet, kube-proxy, metrics-server.

Why: kwok nodes run no containers, so images, the init container's fetch, probes, the security
context, Service routing, rolling updates and the HPA are only proven on a node that runs pods.

``RealNode(cluster).start()`` joins this machine to a ``ControlPlane`` as node ``scoring-node-0``:

- network (all created here, all removed on stop): a bridge ``scoring-br0`` for the pods (no
  masquerading, no default route: pods reach only each other, Service IPs and the node IP), a veth
  pair whose host end carries the node IP and whose other end sits in the network namespace
  ``scoring-client`` (where tests send traffic from), and an nftables table that drops anything from
  those interfaces that would leave the machine;
- containerd (own socket, state and config; its image store is cached between runs) with the images
  built by ``hack/build-images.sh`` imported; kubelet (cgroup v1, cgroupfs) and kube-proxy
  (iptables) from ``hack/build-node-bins.sh``; metrics-server behind the aggregated API;
- the ``kubernetes`` Service points at a small TCP relay on the node IP in front of the loopback
  apiserver, so pods (the operator) reach the API server through kube-proxy.

The node is tainted ``scoring-operator.test/real-node=true:NoSchedule``: pods of kwok tests never land
on it. ``prepare_namespace`` annotates a namespace so all its pods tolerate the taint and select the
node (PodTolerationRestriction / PodNodeSelector admission plugins).

Only one real node per machine (fixed names, a global lock). A run killed midway leaves state
behind; the next ``start`` recognises it by those names and removes it first. Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from tests.kube.controlplane import (
    REPO_ROOT,
    SERVICE_CIDR,
    ControlPlane,
    ControlPlaneError,
    _die_with_parent,
    _write_yaml,
    free_ports,
)

BUILD_NODE_BINS = REPO_ROOT / "hack" / "build-node-bins.sh"
BUILD_IMAGES = REPO_ROOT / "hack" / "build-images.sh"

NODE_NAME = "scoring-node-0"
TAINT_KEY = "scoring-operator.test/real-node"
NODE_LABEL = f"{TAINT_KEY}=true"
BRIDGE = "scoring-br0"
HOST_VETH = "scoring-n0"
CLIENT_VETH = "scoring-c0"
CLIENT_NETNS = "scoring-client"
NFT_TABLE = "scoring_node_guard"
POD_CIDR = "10.245.0.0/24"
POD_GATEWAY = "10.245.0.1"
NODE_NET = "10.250.0.0/30"
NODE_IP = "10.250.0.1"
CLIENT_IP = "10.250.0.2"
#: Fixed places, so that a later run recognises (and removes) what a killed run left.
STATE_DIR = Path("/tmp/scoring-node")
CGROUP_ROOT = "/scoring-node"
LOCK_FILE = Path("/tmp/scoring-node.lock")
#: The host's ip_forward before the first node started; restored by cleanup (also after a killed run).
IP_FORWARD_SAVED = Path("/tmp/scoring-node.ip_forward")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
ENV_AUTOBUILD = "SCORING_CLUSTER_AUTOBUILD"


class NodeError(ControlPlaneError):
    """The real node could not be prepared or started; the message carries the log tail."""


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scoring-operator"


def _script(path: Path, *args: str, build: bool) -> str:
    """Run a build script (``--check`` unless ``build``) and return its last stdout line."""
    cmd = ["bash", str(path), *args] + ([] if build else ["--check"])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if build else subprocess.PIPE, text=True,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise NodeError(
            f"`{' '.join(cmd)}` failed ({(proc.stderr or '').strip()[-1500:]}). Build once with "
            f"`bash {path.relative_to(REPO_ROOT)}` (or `make images`), or set {ENV_AUTOBUILD}=1."
        )
    return lines[-1]


def find_node_assets(*, build: bool | None = None) -> tuple[Path, dict[str, dict[str, str]]]:
    """(node bin dir, images manifest) from the build scripts' caches; builds when asked to."""
    if build is None:
        build = os.environ.get(ENV_AUTOBUILD) == "1"
    bin_dir = Path(_script(BUILD_NODE_BINS, build=build))
    images = json.loads(_script(BUILD_IMAGES, build=build))
    return bin_dir, images


def node_problem() -> str | None:
    """Why a real node cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "a real node needs root (kubelet, containerd, network namespaces)"
    for tool in ("containerd", "runc", "ctr", "ip", "nft", "iptables", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install containerd runc nftables iptables iproute2)"
    if not Path("/usr/lib/cni/bridge").is_file():
        return "the CNI plugins are not installed (apt-get install containernetworking-plugins)"
    try:
        find_node_assets()
    except NodeError as exc:
        return str(exc)
    return None


def sh(
    *cmd: str, check: bool = True, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(cmd)}` exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def in_client_netns(*cmd: str) -> list[str]:
    """Prefix a command so it runs in the test client's network namespace."""
    return ["ip", "netns", "exec", CLIENT_NETNS, *cmd]


# --------------------------------------------------------------------------------------------------
# Leftovers: everything is found by our fixed names, paths and the cgroup root


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(root):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def _pids_of_ours(address: str) -> list[int]:
    """Processes we started or that run our containers: shims naming our socket, and anything in our cgroups."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (d / "cgroup").read_text()
        except OSError:
            continue
        if (address and address in cmdline) or f"{CGROUP_ROOT}/" in cgroups:
            found.append(int(d.name))
    return found


def _remove_cgroups() -> None:
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / CGROUP_ROOT.strip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


def _create_cgroups() -> None:
    """The kubelet's cgroupRoot must exist in every v1 hierarchy; cpuset needs its cpus/mems filled in."""
    for controller in Path("/sys/fs/cgroup").iterdir():
        if controller.name == "unified" or not (controller / "cgroup.procs").exists():
            continue
        top = controller / CGROUP_ROOT.strip("/")
        top.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (top / knob).exists() and not (top / knob).read_text().strip():
                (top / knob).write_text((controller / knob).read_text())


def cleanup(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove everything a real node (running or killed) of ours left; return what was done.

    Order matters: processes first (they hold mounts and namespaces), then mounts, then the files.
    """
    done: list[str] = []
    sock = str(state_dir / "containerd" / "containerd.sock")
    for _ in range(3):
        pids = _pids_of_ours(sock)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        done.append(f"killed {len(pids)} leftover processes")
        time.sleep(0.5)
    if (kp := _node_bin_dir_or_none()) is not None:
        # kube-proxy's own cleanup removes its iptables chains (KUBE-*).
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run([str(kp / "kube-proxy"), "--cleanup"], capture_output=True, timeout=60, check=False)
    for point in _mounts_under(state_dir):
        sh("umount", "-l", point, check=False)
        done.append(f"unmounted {point}")
    for link in (BRIDGE, HOST_VETH):
        if sh("ip", "link", "show", link, check=False).returncode == 0:
            sh("ip", "link", "del", link, check=False)
            done.append(f"deleted link {link}")
    # Pod veths left on a deleted bridge vanish with their namespaces; the client namespace is ours.
    if Path(f"/run/netns/{CLIENT_NETNS}").exists():
        sh("ip", "netns", "del", CLIENT_NETNS, check=False)
        done.append(f"deleted netns {CLIENT_NETNS}")
    if sh("nft", "list", "table", "inet", NFT_TABLE, check=False).returncode == 0:
        sh("nft", "delete", "table", "inet", NFT_TABLE, check=False)
        done.append(f"deleted nft table {NFT_TABLE}")
    sh("ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE, check=False)
    _remove_cgroups()
    if IP_FORWARD_SAVED.exists():
        IP_FORWARD.write_text(IP_FORWARD_SAVED.read_text().strip() or "0")
        IP_FORWARD_SAVED.unlink()
        done.append("restored net.ipv4.ip_forward")
    if state_dir.exists():
        left = _mounts_under(state_dir)
        if left:
            raise NodeError(f"still mounted under {state_dir}, not removing it: {left[:5]}")
        shutil.rmtree(state_dir, ignore_errors=True)
        done.append(f"removed {state_dir}")
    return done


def _node_bin_dir_or_none() -> Path | None:
    try:
        return Path(_script(BUILD_NODE_BINS, build=False))
    except NodeError:
        return None


# --------------------------------------------------------------------------------------------------
# A TCP relay: pods reach the loopback-only apiserver through it (kubernetes Service -> node IP)


class TcpRelay:
    """Forward connections accepted on ``listen`` to ``target``, in a background thread."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="scoring-node-relay", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise NodeError(f"relay on {self.listen}: {self._error}")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(asyncio.start_server(self._handle, *self.listen))
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


# --------------------------------------------------------------------------------------------------
# Cluster DNS: Service names only, answered from the API; nothing is forwarded anywhere


class ServiceDns:
    """A minimal DNS responder on the node IP: ``<svc>.<ns>.svc.cluster.local`` A records -> ClusterIP.

    Why: in-cluster clients (kopf's service-account login) reach the API server as
    ``kubernetes.default.svc``; real clusters run CoreDNS for that. Here a tiny responder suffices,
    and since it never forwards a query, no name lookup leaves the machine. Other names: NXDOMAIN.
    """

    def __init__(self, cluster: ControlPlane, address: tuple[str, int], domain: str = "cluster.local") -> None:
        self.cluster, self.address, self.suffix = cluster, address, f".svc.{domain}"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(address)
        self._stop = threading.Event()
        self._cache: tuple[float, dict[str, str]] = (0.0, {})
        self._thread = threading.Thread(target=self._serve, name="scoring-node-dns", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)

    def _services(self) -> dict[str, str]:
        at, table = self._cache
        if time.monotonic() - at < 1.0:
            return table
        code, body = self.cluster._request(f"{self.cluster.server}/api/v1/services")
        if code == 200:
            items = json.loads(body)["items"]
            table = {f"{i['metadata']['name']}.{i['metadata']['namespace']}{self.suffix}":
                     i["spec"].get("clusterIP", "") for i in items}
            self._cache = (time.monotonic(), table)
        return table

    def answer(self, query: bytes) -> bytes | None:
        """The response to one query packet (None for garbage)."""
        if len(query) < 12:
            return None
        labels, i = [], 12
        while i < len(query) and query[i]:
            n = query[i]
            labels.append(query[i + 1:i + 1 + n].decode(errors="replace").lower())
            i += 1 + n
        if i + 5 > len(query):
            return None
        question = query[12:i + 5]
        qtype = int.from_bytes(query[i + 1:i + 3], "big")
        name = ".".join(labels)
        ip = self._services().get(name) if name.endswith(self.suffix) else None
        known = ip is not None and ip not in ("", "None")
        flags = 0x8180 if known or name in self._services() else 0x8183  # NOERROR / NXDOMAIN, RD+RA
        answers = b""
        if known and qtype == 1:
            assert ip is not None
            answers = b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + (5).to_bytes(4, "big") + \
                (4).to_bytes(2, "big") + socket.inet_aton(ip)
        header = query[:2] + flags.to_bytes(2, "big") + (1).to_bytes(2, "big") + \
            (1 if answers else 0).to_bytes(2, "big") + b"\x00\x00\x00\x00"
        return header + question + answers

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(512)
            except OSError:
                return
            with contextlib.suppress(Exception):
                reply = self.answer(data)
                if reply is not None:
                    self._sock.sendto(reply, peer)


# --------------------------------------------------------------------------------------------------
# The node


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


class RealNode:
    """This machine as a real Kubernetes node of ``cluster`` (see the module docstring)."""

    def __init__(self, cluster: ControlPlane, *, startup_timeout: float = 180.0) -> None:
        self.cluster = cluster
        self.name = NODE_NAME
        self.node_ip = NODE_IP
        self.client_ip = CLIENT_IP
        self.startup_timeout = startup_timeout
        self.images: dict[str, dict[str, str]] = {}
        self.bin_dir: Path | None = None
        self.startup_seconds: float | None = None
        self._procs: list[_Proc] = []
        self._relay: TcpRelay | None = None
        self._dns: ServiceDns | None = None
        self._lock_fd: int | None = None
        self.state = STATE_DIR

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def containerd_socket(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    def start(self) -> Self:
        t0 = time.monotonic()
        self.bin_dir, self.images = find_node_assets()
        self._lock_fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # another run's node: wait for it to finish
        cleanup(self.state)
        try:
            self._start(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop everything (kubelet before containerd), then remove what is left. Idempotent."""
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        if self._dns is not None:
            self._dns.stop()
            self._dns = None
        by_name = {p.name: p for p in self._procs}
        for name in ("kubelet", "metrics-server", "kube-proxy"):
            if name in by_name:
                self._terminate(by_name[name])
        if "containerd" in by_name and by_name["containerd"].popen.poll() is None:
            self._remove_containers()
            self._terminate(by_name["containerd"])
        self._procs = []
        if os.environ.get("SCORING_KEEP_CLUSTER_DIR") == "1" and (self.state / "logs").is_dir():
            kept = Path(f"/tmp/scoring-node-logs-{os.getpid()}")
            shutil.copytree(self.state / "logs", kept, dirs_exist_ok=True)
            print(f"real node logs kept in {kept}")
        with contextlib.suppress(NodeError):
            cleanup(self.state)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _terminate(self, p: _Proc) -> None:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
            try:
                p.popen.wait(10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
        p.log_file.close()

    # -- helpers ---------------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return sh("ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args, check=check,
                  timeout=timeout)

    def _remove_containers(self) -> None:
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for t in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", t, check=False, timeout=30)
        for t in tasks:
            self.ctr("tasks", "delete", "-f", t, check=False, timeout=30)
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "delete", c, check=False, timeout=30)

    def _spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> _Proc:
        log_path = self.state / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        exe = args[0] if "/" in args[0] else str(shutil.which(args[0]) or args[0])
        popen = subprocess.Popen(
            [exe, *args[1:]], stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=self.state, env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent(),
        )
        proc = _Proc(name, popen, log_path, log_file)
        self._procs.append(proc)
        return proc

    def _wait(self, what: str, check: Any, deadline: float, interval: float = 0.5) -> None:
        while True:
            for p in self._procs:
                if p.popen.poll() is not None:
                    raise NodeError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n{p.tail()}")
            try:
                if check():
                    return
            except (subprocess.SubprocessError, OSError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.tail(25)}" for p in self._procs)
                raise NodeError(f"timed out waiting for {what}\n{tails}")
            time.sleep(interval)

    def log_tail(self, name: str, lines: int = 60) -> str:
        for p in self._procs:
            if p.name == name:
                return p.tail(lines)
        raise KeyError(name)

    # -- start -----------------------------------------------------------------------------------

    def _start(self, deadline: float) -> None:
        assert self.bin_dir is not None
        st = self.state
        for d in ("containerd", "kubelet", "logs", "cni", "cni-ipam", "kube-proxy", "metrics-server"):
            (st / d).mkdir(parents=True, exist_ok=True)
        self._network()
        _create_cgroups()
        kc = str(self.cluster.kubeconfig)
        pki = self.cluster.workdir / "pki"

        # containerd: our own socket/state; the image store is cached between runs.
        root = _cache_root() / "node" / "containerd-root"
        root.mkdir(parents=True, exist_ok=True)
        cni_conf = st / "cni"
        (cni_conf / "10-scoring.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        config = st / "containerd" / "config.toml"
        config.write_text(_containerd_config(root, st / "containerd", self.containerd_socket,
                                             self.images["pause"]["ref"], cni_conf))
        self._spawn("containerd", ["containerd", "--config", str(config), "--log-level", "warn"])
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, deadline)
        self._remove_containers()  # a killed run's containers (their processes are gone)
        self._import_images()

        # kubelet
        healthz_port, proxy_health, proxy_metrics = free_ports(3)
        resolv = st / "kubelet" / "resolv.conf"
        resolv.write_text("")  # no host resolvers for pods: only the cluster DNS below, which never forwards
        self._dns = ServiceDns(self.cluster, (NODE_IP, 53)).start()
        kubelet_cfg = _write_yaml(st / "kubelet" / "config.yaml", {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "resolvConf": str(resolv),
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            "failSwapOn": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "volumePluginDir": str(st / "kubelet" / "volume-plugins"),
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "maxPods": 60,
        })
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"),
            f"--config={kubelet_cfg}",
            f"--kubeconfig={kc}",
            f"--root-dir={st / 'kubelet' / 'root'}",
            f"--cert-dir={st / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            f"--node-labels={NODE_LABEL}",
            "--v=1",
        ])
        self._wait("the node to be Ready", self._node_ready, deadline, interval=1.0)

        # The kubernetes Service -> relay on the node IP -> the loopback apiserver.
        api_port = int(self.cluster.server.rsplit(":", 1)[1])
        relay_port = free_ports(1)[0]
        self._relay = TcpRelay((NODE_IP, relay_port), ("127.0.0.1", api_port)).start()
        self._endpoints("default", "kubernetes", "https", relay_port)

        # kube-proxy (iptables mode; touches no conntrack sysctls, opens NodePorts on the node IP only)
        proxy_cfg = _write_yaml(st / "kube-proxy" / "config.yaml", {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kc},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{proxy_health}",
            "metricsBindAddress": f"127.0.0.1:{proxy_metrics}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        })
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={proxy_cfg}", "--v=1"])

        # metrics-server on the node IP, registered as the metrics.k8s.io APIService
        ms_port = free_ports(1)[0]
        self._spawn("metrics-server", [
            str(self.bin_dir / "metrics-server"),
            f"--bind-address={NODE_IP}",
            f"--secure-port={ms_port}",
            f"--cert-dir={st / 'metrics-server'}",
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--kubelet-insecure-tls",
            "--kubelet-preferred-address-types=InternalIP",
            f"--node-selector={NODE_LABEL}",
            "--metric-resolution=15s",
            "--kubelet-request-timeout=5s",
        ])
        self._metrics_api(ms_port)
        self._wait("kube-proxy /healthz", lambda: sh("curl", "-sf", f"http://127.0.0.1:{proxy_health}/healthz",
                                                     check=False).returncode == 0, deadline)
        self._wait("the metrics.k8s.io API", lambda: self.cluster.kubectl(
            "get", "--raw", f"/apis/metrics.k8s.io/v1beta1/nodes/{NODE_NAME}", check=False).returncode == 0,
            deadline + 60, interval=2.0)

    def _network(self) -> None:
        def ip(*args: str) -> None:
            sh("ip", *args)

        if not IP_FORWARD_SAVED.exists():
            IP_FORWARD_SAVED.write_text(IP_FORWARD.read_text().strip())
        IP_FORWARD.write_text("1")
        with contextlib.suppress(OSError):  # kube-proxy needs bridged traffic to pass iptables
            Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")
        # The guard first: nothing from the pods' bridge or the client veth is forwarded off those two
        # links, and nothing for the cluster's ranges leaves the host on any other link.
        guard = f"""
table inet {NFT_TABLE} {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname {{ "{BRIDGE}", "{HOST_VETH}" }} oifname != {{ "{BRIDGE}", "{HOST_VETH}" }} counter drop
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    ip daddr {{ {SERVICE_CIDR}, {POD_CIDR}, {NODE_NET}, 10.244.0.0/16 }} \\
      oifname != {{ "{BRIDGE}", "{HOST_VETH}", "lo" }} counter drop
  }}
}}
"""
        sh("nft", "-f", "-", input=guard)
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{POD_GATEWAY}/24", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        ip("route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", POD_GATEWAY)
        ip("netns", "add", CLIENT_NETNS)
        ip("link", "add", HOST_VETH, "type", "veth", "peer", "name", CLIENT_VETH)
        ip("link", "set", CLIENT_VETH, "netns", CLIENT_NETNS)
        ip("addr", "add", f"{NODE_IP}/30", "dev", HOST_VETH)
        ip("link", "set", HOST_VETH, "up")
        nsip = ["netns", "exec", CLIENT_NETNS, "ip"]
        ip(*nsip, "link", "set", "lo", "up")
        ip(*nsip, "addr", "add", f"{CLIENT_IP}/30", "dev", CLIENT_VETH)
        ip(*nsip, "link", "set", CLIENT_VETH, "up")
        for dst in (SERVICE_CIDR, POD_CIDR):  # and no default route: the client reaches only the cluster
            ip(*nsip, "route", "add", dst, "via", NODE_IP)

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "scoring-node",
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "isDefaultGateway": False,  # no default route: pods reach only the ranges below
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": SERVICE_CIDR}, {"dst": NODE_NET}],
                    "dataDir": str(self.state / "cni-ipam"),
                },
            }],
        }

    def _import_images(self) -> None:
        have = set(self.ctr("images", "ls", "-q").stdout.split())
        current = {image["ref"] for image in self.images.values()}
        for ref in have - current:  # earlier builds of our images: the store is ours, keep it small
            if ref.startswith("localhost/scoring-"):
                self.ctr("images", "rm", ref, check=False)
        for name, image in self.images.items():
            if image["ref"] in have:
                continue
            self.ctr("images", "import", image["archive"], timeout=600)
            if image["ref"] not in set(self.ctr("images", "ls", "-q").stdout.split()):
                raise NodeError(f"importing {image['archive']} did not give {image['ref']} ({name})")

    def _node_ready(self) -> bool:
        node = json.loads(self.cluster.kubectl("get", "node", NODE_NAME, "-o", "json", check=False).stdout or "{}")
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in node.get("status", {}).get("conditions", []))

    def _endpoints(self, namespace: str, service: str, port_name: str, port: int) -> None:
        """Point a selector-less Service at the node IP (Endpoints + EndpointSlice, as kube-proxy reads them)."""
        docs = [{
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": service, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": NODE_IP}], "ports": [{"name": port_name, "port": port,
                                                                    "protocol": "TCP"}]}],
        }, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-scoring-node", "namespace": namespace, "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "scoring-operator.test",
            }},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        }]
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": docs}))

    def _metrics_api(self, port: int) -> None:
        docs: list[dict[str, Any]] = [{
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "metrics-server", "namespace": "kube-system"},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]},
        }, {
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "insecureSkipTLSVerify": True,
                     "groupPriorityMinimum": 100, "versionPriority": 100,
                     "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443}},
        }]
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": docs}))
        self._endpoints("kube-system", "metrics-server", "https", port)

    # -- for tests -------------------------------------------------------------------------------

    def prepare_namespace(self, namespace: str) -> None:
        """Make every pod of ``namespace`` tolerate the node's taint and run on it (not on kwok)."""
        toleration = [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
        self.cluster.kubectl(
            "annotate", "--overwrite", "namespace", namespace,
            f"scheduler.alpha.kubernetes.io/defaultTolerations={json.dumps(toleration)}",
            f"scheduler.alpha.kubernetes.io/node-selector={NODE_LABEL}",
        )

    def exec_in_client(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the client network namespace (where test traffic comes from)."""
        return sh(*in_client_netns(*cmd), timeout=timeout, check=check)


def _containerd_config(root: Path, state: Path, socket: Path, sandbox_image: str, cni_conf: Path) -> str:
    return f"""version = 2
root = "{root}"
state = "{state / 'state'}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Processes here lack CAP_SYS_RESOURCE: a negative oom_score_adj cannot be written.
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{state / 'opt'}"
"""
