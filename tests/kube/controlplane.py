"""A private, real Kubernetes control plane for tests (envtest, but for Python).

Why: the operator's behaviour (RBAC of its ServiceAccount, CRD validation, owner references,
Deployments becoming available, Helm installs) can only be trusted when a real kube-apiserver
checks it. A fake client would accept whatever we send.

``ControlPlane`` starts etcd, a secure kube-apiserver (RBAC, client-cert admin, ServiceAccount
tokens), kube-controller-manager, kube-scheduler and kwok (which plays the kubelet of one fake
Node), all on free ports of 127.0.0.1, from binaries built by ``hack/build-cluster-bins.sh``.
``ExistingCluster`` wraps a kubeconfig of a cluster someone else runs (kind, k3s, AKS...) behind
the same helpers. Nothing here depends on pytest, so scripts and notebooks can use it too::

    with ControlPlane() as cp:
        cp.kubectl("get", "nodes")
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-cluster-bins.sh"
GATEWAY_API_SCRIPT = REPO_ROOT / "hack" / "fetch-gateway-api-crds.sh"
VERSIONS_FILE = REPO_ROOT / "hack" / "versions.env"

#: Executables (and kwok's stage file) that a private control plane needs in its bin dir.
REQUIRED_FILES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
    "kwok-stages.yaml",
)
#: Env: use binaries from this directory instead of asking the build script.
ENV_BIN_DIR = "SCORING_CLUSTER_BIN_DIR"
#: Env: "1" lets ``find_bin_dir`` run the (slow, cold) build when binaries are missing.
ENV_AUTOBUILD = "SCORING_CLUSTER_AUTOBUILD"
#: Env: "1" keeps a control plane's temp dir (logs, certs, etcd data) after it stops.
ENV_KEEP_DIR = "SCORING_KEEP_CLUSTER_DIR"

LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/16"  # room for thousands of Services (operator scale runs)
POD_CIDR = "10.244.0.0/24"
OWNED_LABEL = "scoring-operator.test/owned"

_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or used; the message carries the log tail."""


class BinariesMissingError(ControlPlaneError):
    """The cluster binaries are not built: run ``bash hack/build-cluster-bins.sh``."""


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message includes its stderr (CalledProcessError hides it)."""

    def __str__(self) -> str:
        cmd = " ".join(str(a) for a in self.cmd) if isinstance(self.cmd, list | tuple) else str(self.cmd)
        out = (self.stderr or "").strip() or (self.stdout or "").strip()
        return f"`{cmd}` exited with {self.returncode}: {out[-4000:]}"


# --------------------------------------------------------------------------------------------------
# Binaries and versions


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse ``hack/versions.env`` (KEY=VALUE lines), the single place versions are pinned."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        versions[key.strip()] = value.strip().strip("'\"")
    return versions


def _missing_files(bin_dir: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (bin_dir / name).is_file()]


def find_bin_dir(*, build: bool | None = None) -> Path:
    """Return the directory holding the cluster binaries, or raise ``BinariesMissingError``.

    ``$SCORING_CLUSTER_BIN_DIR`` wins; otherwise the build script is asked (``--check`` returns at
    once). A cold build takes tens of minutes, far beyond a test timeout, so it is only run here
    when ``build=True`` or ``$SCORING_CLUSTER_AUTOBUILD=1``; its progress goes to our stderr.
    """
    override = os.environ.get(ENV_BIN_DIR)
    if override:
        bin_dir = Path(override).expanduser().resolve()
        missing = _missing_files(bin_dir)
        if missing:
            raise BinariesMissingError(f"${ENV_BIN_DIR}={bin_dir} lacks {', '.join(missing)}")
        return bin_dir
    if build is None:
        build = os.environ.get(ENV_AUTOBUILD) == "1"
    cmd = ["bash", str(BUILD_SCRIPT)] + ([] if build else ["--check"])
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=None if build else subprocess.PIPE, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr or "").strip() if not build else "see the build output above"
        raise BinariesMissingError(
            f"Kubernetes test binaries are not available ({detail}). Build them once with "
            f"`bash {BUILD_SCRIPT.relative_to(REPO_ROOT)}` (cold: ~10 minutes), set ${ENV_BIN_DIR}, "
            "or deselect these tests with -m 'not cluster' / SCORING_SKIP_CLUSTER=1."
        )
    bin_dir = Path(lines[-1])
    missing = _missing_files(bin_dir)
    if missing:
        raise BinariesMissingError(f"{bin_dir} lacks {', '.join(missing)}; rerun the build script")
    return bin_dir


def gateway_api_crds_file() -> Path:
    """The Gateway API CRDs (standard channel, the version pinned in hack/versions.env) as one YAML file.

    Fetched from the `sigs.k8s.io/gateway-api` Go module by hack/fetch-gateway-api-crds.sh into the
    cache outside the repo (seconds; `make cluster-bin` and .ci/run fetch it ahead).
    """
    proc = subprocess.run(["bash", str(GATEWAY_API_SCRIPT)], capture_output=True, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        raise ControlPlaneError(f"fetching the Gateway API CRDs failed: {proc.stderr.strip()[-2000:]}")
    return Path(lines[-1])


def crd_names(path: Path) -> list[str]:
    """The names of the CustomResourceDefinitions in a YAML file."""
    return [d["metadata"]["name"] for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "CustomResourceDefinition"]


def free_ports(count: int) -> list[int]:
    """Pick ``count`` distinct free TCP ports on 127.0.0.1 (held together so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def namespace_name_for(test_name: str, *, suffix_len: int = 6) -> str:
    """A valid, unique DNS label derived from a test name (``test_foo[bar]`` -> ``foo-bar-1a2b3c``)."""
    base = re.sub(r"^test[_-]?", "", test_name.lower())
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-") or "t"
    suffix = secrets.token_hex(suffix_len // 2 + 1)[:suffix_len]
    base = base[: 63 - suffix_len - 1].rstrip("-")
    name = f"{base}-{suffix}"
    assert _DNS_LABEL_RE.match(name), name
    return name


# --------------------------------------------------------------------------------------------------
# Certificates


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class _Pki:
    """Throw-away certificates: one CA signs the apiserver serving cert and the admin client cert."""

    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path) -> _Pki:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scoring-test-ca")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        pki = cls(cert, key)
        directory.mkdir(parents=True, exist_ok=True)
        pki._write(directory, "ca", cert, key)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        pki.files["sa.key"] = directory / "sa.key"
        pki.files["sa.key"].write_bytes(_pem_key(sa_key))
        pki.files["sa.pub"] = directory / "sa.pub"
        pki.files["sa.pub"].write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return pki

    def issue(
        self,
        directory: Path,
        name: str,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[bytes, bytes]:
        """Issue a leaf cert signed by the CA; write ``<name>.crt``/``<name>.key``; return the PEMs."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = dt.datetime.now(dt.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        self._write(directory, name, cert, key)
        return _pem_cert(cert), _pem_key(key)

    def _write(self, directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        crt_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        crt_path.write_bytes(_pem_cert(cert))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        self.files[f"{name}.crt"], self.files[f"{name}.key"] = crt_path, key_path

    @property
    def ca_pem(self) -> bytes:
        return _pem_cert(self.ca_cert)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write_yaml(path: Path, doc: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    path.chmod(0o600)
    return path


def kubeconfig_doc(
    cluster: Mapping[str, Any], user: Mapping[str, Any], *, name: str = "scoring-test", namespace: str | None = None
) -> dict[str, Any]:
    """A one-context kubeconfig document from a ``cluster`` entry and a ``user`` entry."""
    context: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": dict(cluster)}],
        "users": [{"name": name, "user": dict(user)}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }


def current_cluster_entry(kubeconfig: Path) -> dict[str, Any]:
    """The ``cluster`` entry of a kubeconfig's current context, with file paths made absolute."""
    doc = yaml.safe_load(kubeconfig.read_text()) or {}
    ctx_name = doc.get("current-context")
    contexts = {c["name"]: c.get("context", {}) for c in doc.get("contexts") or []}
    clusters = {c["name"]: c.get("cluster", {}) for c in doc.get("clusters") or []}
    if not ctx_name or ctx_name not in contexts:
        raise ControlPlaneError(f"{kubeconfig}: no usable current-context")
    entry = dict(clusters.get(contexts[ctx_name].get("cluster", ""), {}))
    if not entry.get("server"):
        raise ControlPlaneError(f"{kubeconfig}: current context has no cluster server")
    ca = entry.get("certificate-authority")
    if ca and not Path(ca).is_absolute():
        entry["certificate-authority"] = str((kubeconfig.parent / ca).resolve())
    return entry


# --------------------------------------------------------------------------------------------------
# Clusters


class KubeCluster:
    """kubectl/helm helpers bound to one kubeconfig; base of ``ControlPlane`` and ``ExistingCluster``."""

    #: True when the cluster (and the tools) are the pinned versions started by this harness.
    private: bool = False

    def __init__(self) -> None:
        self._kubeconfig: Path | None = None
        self._bin_dir: Path | None = None
        self._workdir: Path | None = None
        self._token_counter = 0

    # -- properties ------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig of the cluster."""
        if self._kubeconfig is None:
            raise ControlPlaneError("the cluster is not started")
        return self._kubeconfig

    @property
    def server(self) -> str:
        """API server URL, e.g. ``https://127.0.0.1:38129``."""
        return str(current_cluster_entry(self.kubeconfig)["server"])

    @property
    def bin_dir(self) -> Path | None:
        """Where kubectl/helm (and the control plane) come from; None means from $PATH."""
        return self._bin_dir

    @property
    def workdir(self) -> Path:
        """Scratch directory owned by this object (logs, kubeconfigs, helm home); removed on stop."""
        if self._workdir is None:
            raise ControlPlaneError("the cluster is not started")
        return self._workdir

    # -- tools -----------------------------------------------------------------------------------

    def tool(self, name: str) -> str:
        """Path of a tool: from the bin dir when built there, else from $PATH."""
        if self._bin_dir is not None and (self._bin_dir / name).is_file():
            return str(self._bin_dir / name)
        found = shutil.which(name)
        if found is None:
            raise BinariesMissingError(f"{name} is neither in {self._bin_dir} nor on $PATH")
        return found

    def _tool_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        work = self.workdir
        env["KUBECACHEDIR"] = str(work / "kube-cache")
        env["HELM_CACHE_HOME"] = str(work / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(work / "helm" / "config")
        env["HELM_DATA_HOME"] = str(work / "helm" / "data")
        return env

    def _run(
        self, tool: str, args: Sequence[str | os.PathLike[str]], *, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.tool(tool), *(os.fspath(a) for a in args)]
        try:
            proc = subprocess.run(
                cmd, input=input, capture_output=True, text=True, env=self._tool_env(), timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ControlPlaneError(f"`{' '.join(cmd)}` timed out after {timeout}s") from exc
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        check: bool = True,
        kubeconfig: str | os.PathLike[str] | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster (admin unless ``kubeconfig`` is given); text output."""
        kc = kubeconfig or self.kubeconfig
        return self._run("kubectl", ["--kubeconfig", kc, *args], input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args: str, kubeconfig: str | os.PathLike[str] | None = None) -> Any:
        """``kubectl ... -o json`` parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def helm(
        self,
        *args: str | os.PathLike[str],
        input: str | None = None,
        check: bool = True,
        kubeconfig: str | os.PathLike[str] | None = None,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm with a private HELM_*_HOME against this cluster (admin unless ``kubeconfig``)."""
        kc = kubeconfig or self.kubeconfig
        return self._run("helm", [*args, "--kubeconfig", kc], input=input, check=check, timeout=timeout)

    # -- identities ------------------------------------------------------------------------------

    def token_kubeconfig(
        self,
        service_account: str,
        namespace: str,
        *,
        duration: str = "1h",
        audiences: Iterable[str] = (),
        path: Path | None = None,
    ) -> Path:
        """Kubeconfig that authenticates as a ServiceAccount with a TokenRequest token.

        Why a real token rather than impersonation: it is what the operator's pod gets, so
        authentication, the ServiceAccount's existence and its RBAC are all checked for real.
        """
        args = ["create", "token", service_account, "-n", namespace, f"--duration={duration}"]
        args += [f"--audience={a}" for a in audiences]
        token = self.kubectl(*args).stdout.strip()
        if path is None:
            self._token_counter += 1
            path = self.workdir / "kubeconfigs" / f"sa-{namespace}-{service_account}-{self._token_counter}.yaml"
        return self.kubeconfig_for_token(token, path=path, namespace=namespace)

    def kubeconfig_for_token(self, token: str, *, path: Path, namespace: str | None = None) -> Path:
        """Kubeconfig for a bearer token, reusing the admin kubeconfig's server and CA."""
        doc = kubeconfig_doc(current_cluster_entry(self.kubeconfig), {"token": token}, namespace=namespace)
        return _write_yaml(path, doc)

    # -- namespaces ------------------------------------------------------------------------------

    def create_namespace(self, name: str, *, timeout: float = 60.0) -> str:
        """Create a labelled namespace and wait for its ``default`` ServiceAccount.

        Why wait: the ServiceAccount admission plugin rejects pods until the controller-manager
        has created that account, which would make the first Deployment of a test flaky.
        """
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {OWNED_LABEL: "true"}},
        }
        self.kubectl("create", "-f", "-", input=json.dumps(manifest))
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"namespace {name}: no default ServiceAccount after {timeout}s")
            time.sleep(0.2)
        return name

    def delete_namespace(self, name: str, *, wait: bool = False) -> None:
        """Delete a namespace; its contents are removed by the namespace controller."""
        self.kubectl("delete", "namespace", name, "--ignore-not-found", f"--wait={str(wait).lower()}")

    # -- Gateway API ------------------------------------------------------------------------------

    def gateway_api_installed(self) -> bool:
        """Whether the cluster serves the Gateway API's HTTPRoute (gateway.networking.k8s.io/v1)."""
        proc = self.kubectl("get", "crd", "httproutes.gateway.networking.k8s.io", "--ignore-not-found", "-o", "name")
        return bool(proc.stdout.strip())

    def install_gateway_api_crds(self, *, timeout: float = 120.0) -> list[str]:
        """Install the real Gateway API CRDs (server-side apply) and wait until they are Established.

        Returns the CRD names. No gateway data plane comes with them: routes are accepted and
        stored by the apiserver, and nothing routes traffic.
        """
        path = gateway_api_crds_file()
        names = crd_names(path)
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=scoring-tests", "-f", path,
                     timeout=timeout)
        self.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                     *[f"crd/{n}" for n in names], timeout=timeout + 10)
        return names

    def remove_gateway_api_crds(self, *, timeout: float = 300.0) -> None:
        """Delete the Gateway API CRDs (and so every Gateway API object) again, and wait until they are gone.

        A CRD goes only after the apiserver's finalizer has removed its instances; under a full
        suite's load that once took over 120 s for one CRD, so the wait is long and, if it still
        runs out, the error names the CRDs left and their conditions.
        """
        path = gateway_api_crds_file()
        names = crd_names(path)
        self.kubectl("delete", "-f", path, "--ignore-not-found", "--wait=false", timeout=60)
        gone = self.kubectl("wait", "--for=delete", f"--timeout={int(timeout)}s", *[f"crd/{n}" for n in names],
                            check=False, timeout=timeout + 10)
        if gone.returncode != 0:
            left = self.kubectl("get", "crd", *names, "--ignore-not-found", "-o", "json", check=False)
            states = [(i["metadata"]["name"], [(c.get("type"), c.get("status"), c.get("reason"))
                                               for c in i.get("status", {}).get("conditions", [])])
                      for i in json.loads(left.stdout or "{}").get("items", [])]
            raise ControlPlaneError(f"Gateway API CRDs still present {timeout:.0f}s after deletion: {states} "
                                    f"({gone.stderr.strip()})")

    def close(self) -> None:
        """Release what this object holds (overridden to stop processes)."""


class ExistingCluster(KubeCluster):
    """A cluster someone else runs (kind, k3s, AKS...), reached through its kubeconfig.

    The kubeconfig's current context must be an admin (cluster-admin) identity. kubectl/helm
    come from the built bin dir when it exists, otherwise from $PATH.
    """

    def __init__(self, kubeconfig: Path, *, bin_dir: Path | None = None) -> None:
        super().__init__()
        kubeconfig = kubeconfig.expanduser().resolve()
        if not kubeconfig.is_file():
            raise ControlPlaneError(f"kubeconfig {kubeconfig} does not exist")
        current_cluster_entry(kubeconfig)  # fail early on a malformed file
        self._kubeconfig = kubeconfig
        self._bin_dir = bin_dir
        self._workdir = Path(tempfile.mkdtemp(prefix="scoring-kube-existing-"))
        atexit.register(self.close)

    def close(self) -> None:
        atexit.unregister(self.close)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    stage: int  # stop order: higher first (clients before the apiserver before etcd)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> Callable[[], None]:
    """preexec_fn making the child get SIGKILL when the (forking thread of the) test run dies.

    Why: atexit does not run when pytest is killed, and orphaned apiservers would pile up.
    SIGKILL, not SIGTERM: an apiserver whose etcd is terminating retries for seconds.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return lambda: None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


_WORKDIR_PREFIX = "scoring-kube-"
_OWNER_FILE = "owner.pid"


def _reap_stale_workdirs() -> None:
    """Remove temp dirs of control planes whose test process was killed (no atexit ran)."""
    for d in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*"):
        try:
            pid = int((d / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or kept on purpose without an owner
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class ControlPlane(KubeCluster):
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok on 127.0.0.1.

    Use as a context manager (or call ``start``/``stop``); ``stop`` is also registered with
    atexit, and the children die with the test process, so nothing outlives a failed run.
    """

    private = True
    NODE_NAME = "kwok-node-0"

    def __init__(
        self,
        bin_dir: Path | None = None,
        *,
        node_name: str = NODE_NAME,
        node_capacity: Mapping[str, str] | None = None,
        startup_timeout: float = 120.0,
        keep_workdir: bool | None = None,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self._bin_dir_arg = bin_dir
        self.node_name = node_name
        self.node_capacity: dict[str, str] = dict(
            node_capacity or {"cpu": "64", "memory": "256Gi", "pods": "250", "nvidia.com/gpu": "8"}
        )
        self.startup_timeout = startup_timeout
        self.keep_workdir = os.environ.get(ENV_KEEP_DIR) == "1" if keep_workdir is None else keep_workdir
        self.extra_apiserver_args = list(extra_apiserver_args)
        self._procs: list[_Process] = []
        self._ssl: ssl.SSLContext | None = None
        self._apiserver_url = ""
        self._lock = threading.Lock()
        self.startup_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start every component and wait until a pod could be scheduled and run."""
        if self._procs:
            raise ControlPlaneError("already started")
        t0 = time.monotonic()
        self._bin_dir = (self._bin_dir_arg or find_bin_dir()).resolve()
        _reap_stale_workdirs()
        for attempt in (1, 2):
            self._workdir = workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
            (workdir / _OWNER_FILE).write_text(str(os.getpid()))
            atexit.register(self.stop)
            try:
                self._start(time.monotonic() + self.startup_timeout)
                break
            except ControlPlaneError as exc:
                self.stop(keep=self.keep_workdir)
                if attempt == 1 and "address already in use" in str(exc):
                    continue  # another process took one of our "free" ports meanwhile: new ports
                kept = f"kept {workdir}" if self.keep_workdir else f"set {ENV_KEEP_DIR}=1 to keep {workdir}"
                raise ControlPlaneError(f"control plane failed to start ({kept}): {exc}") from exc
            except BaseException:
                self.stop(keep=self.keep_workdir)
                raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, *, keep: bool | None = None) -> None:
        """Stop the processes (SIGTERM, then SIGKILL) and remove the temp dir. Idempotent.

        Stops in stages, clients first: an apiserver whose etcd is gone retries for many seconds,
        and etcd waits for its clients, so stopping all at once takes ~15s instead of ~1s.
        """
        with self._lock:
            atexit.unregister(self.stop)
            procs, self._procs = self._procs, []
            for stage in sorted({p.stage for p in procs}, reverse=True):
                group = [p for p in procs if p.stage == stage]
                for p in group:
                    if p.popen.poll() is None:
                        p.popen.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                for p in group:
                    try:
                        p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        p.popen.kill()
                        p.popen.wait()
                    p.log_file.close()
            keep = self.keep_workdir if keep is None else keep
            if self._workdir is not None and not keep:
                shutil.rmtree(self._workdir, ignore_errors=True)
            elif self._workdir is not None:
                (self._workdir / _OWNER_FILE).unlink(missing_ok=True)  # kept on purpose: never reaped
            self._workdir = None if not keep else self._workdir
            self._kubeconfig = None if not keep else self._kubeconfig

    def close(self) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str], *, stage: int = 2) -> _Process:
        assert self._bin_dir is not None
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        popen = subprocess.Popen(
            [str(self._bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            preexec_fn=_die_with_parent(),  # single-threaded at spawn time
        )
        proc = _Process(name, popen, log_path, log_file, stage)
        self._procs.append(proc)
        return proc

    def _request(self, url: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, bytes]:
        """HTTPS (or HTTP) request as admin; (0, b"") when the server is not listening yet."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if url.startswith("https://"):
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(req, timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return 0, b""

    def _wait(
        self, what: str, check: Callable[[], bool], deadline: float, watched: Sequence[_Process], interval: float = 0.1
    ) -> None:
        """Poll ``check`` until true; fail fast with the log tail when a watched process exits."""
        while True:
            for p in watched:
                code = p.popen.poll()
                if code is not None:
                    raise ControlPlaneError(
                        f"{p.name} exited with code {code} while waiting for {what}; "
                        f"last lines of {p.log_path}:\n{p.tail()}"
                    )
            if check():
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ({p.log_path}):\n{p.tail(25)}" for p in watched)
                raise ControlPlaneError(f"timed out waiting for {what}\n{tails}")
            time.sleep(interval)

    def _start(self, deadline: float) -> None:
        work = self.workdir
        pki_dir = work / "pki"
        pki = _Pki.create(pki_dir)
        pki.issue(
            pki_dir,
            "apiserver",
            "kube-apiserver",
            dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ip_addresses=[LOOPBACK, str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))],
            server=True,
        )
        admin_crt, admin_key = pki.issue(
            pki_dir, "admin", "scoring-test-admin", organizations=["system:masters"], client=True
        )
        # The aggregation layer's client cert (metrics-server behind metrics.k8s.io on a real node).
        pki.issue(pki_dir, "front-proxy-client", "front-proxy-client", client=True)
        f = pki.files

        etcd_port, etcd_peer, api_port, kcm_port, sched_port = free_ports(5)
        self._apiserver_url = f"https://{LOOPBACK}:{api_port}"
        ctx = ssl.create_default_context(cafile=str(f["ca.crt"]))
        ctx.load_cert_chain(str(f["admin.crt"]), str(f["admin.key"]))
        self._ssl = ctx

        self._kubeconfig = _write_yaml(
            work / "admin.kubeconfig",
            kubeconfig_doc(
                {"server": self._apiserver_url, "certificate-authority-data": _b64(pki.ca_pem)},
                {"client-certificate-data": _b64(admin_crt), "client-key-data": _b64(admin_key)},
            ),
        )
        kc = str(self._kubeconfig)

        # etcd: in-memory durability is fine for tests, fsync would dominate on slow disks.
        etcd_url, peer_url = f"http://{LOOPBACK}:{etcd_port}", f"http://{LOOPBACK}:{etcd_peer}"
        etcd = self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            stage=0,
        )
        self._wait("etcd /health", lambda: self._request(f"{etcd_url}/health")[0] == 200, deadline, [etcd])

        apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={api_port}",
                f"--cert-dir={work / 'apiserver-certs'}",
                f"--tls-cert-file={f['apiserver.crt']}",
                f"--tls-private-key-file={f['apiserver.key']}",
                f"--client-ca-file={f['ca.crt']}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",  # first IP = cert IP; the node routes the same range
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={self._apiserver_url}",
                f"--service-account-key-file={f['sa.pub']}",
                f"--service-account-signing-key-file={f['sa.key']}",
                # The "kubernetes" Endpoints may not point at a loopback address: publish none.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                # For a real node (tests/kube/node.py): the apiserver authenticates to kubelets (logs,
                # exec) and reaches them on their node IP, serves aggregated APIs (metrics.k8s.io), and
                # lets a namespace pin its pods to a node (PodNodeSelector) with a default toleration
                # (PodTolerationRestriction), so kwok tests never land on the real node.
                f"--kubelet-client-certificate={f['admin.crt']}",
                f"--kubelet-client-key={f['admin.key']}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--requestheader-client-ca-file={f['ca.crt']}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={f['front-proxy-client.crt']}",
                f"--proxy-client-key-file={f['front-proxy-client.key']}",
                "--enable-aggregator-routing=true",
                "--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction",
                *self.extra_apiserver_args,
            ],
            stage=1,
        )
        self._wait(
            "kube-apiserver /readyz",
            lambda: self._request(f"{self._apiserver_url}/readyz")[0] == 200,
            deadline,
            [etcd, apiserver],
            interval=0.2,
        )
        self._wait(
            "the default namespace",
            lambda: self._request(f"{self._apiserver_url}/api/v1/namespaces/default")[0] == 200,
            deadline,
            [etcd, apiserver],
        )

        # The fake Node, created with capacity so the scheduler has room (kwok keeps it).
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "kwok",
                },
            },
            "status": {"capacity": self.node_capacity, "allocatable": self.node_capacity},
        }
        code, body = self._request(f"{self._apiserver_url}/api/v1/nodes", method="POST", body=node)
        if code != 201:
            raise ControlPlaneError(f"creating node {self.node_name}: HTTP {code}: {body[:500]!r}")

        component_common = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            f"--bind-address={LOOPBACK}",
        ]
        kcm = self._spawn(
            "kube-controller-manager",
            [
                *component_common,
                f"--secure-port={kcm_port}",
                f"--cert-dir={work / 'kcm-certs'}",
                f"--service-account-private-key-file={f['sa.key']}",
                f"--root-ca-file={f['ca.crt']}",
                "--profiling=false",
            ],
        )
        sched = self._spawn(
            "kube-scheduler",
            [
                *component_common,
                f"--secure-port={sched_port}",
                f"--cert-dir={work / 'scheduler-certs'}",
                "--profiling=false",
            ],
        )
        assert self._bin_dir is not None
        kwok = self._spawn(
            "kwok",
            [
                f"--kubeconfig={kc}",
                f"--config={self._bin_dir / 'kwok-stages.yaml'}",
                # Only kwok's own nodes: a real node (tests/kube/node.py) has a kubelet of its own.
                "--manage-nodes-with-label-selector=type=kwok",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
            ],
        )
        everything = [etcd, apiserver, kcm, sched, kwok]

        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # self-signed cert of a component we just started

        def healthy(port: int) -> bool:
            req = urllib.request.Request(f"https://{LOOPBACK}:{port}/healthz")
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=insecure)
            )
            try:
                with opener.open(req, timeout=2) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        self._wait("kube-controller-manager /healthz", lambda: healthy(kcm_port), deadline, everything)
        self._wait("kube-scheduler /healthz", lambda: healthy(sched_port), deadline, everything)
        self._wait("node Ready without taints (kwok)", self._node_ready, deadline, everything, interval=0.2)
        self._wait(
            "the default ServiceAccount (controller-manager)",
            lambda: self._request(f"{self._apiserver_url}/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            deadline,
            everything,
            interval=0.2,
        )

    def _node_ready(self) -> bool:
        code, body = self._request(f"{self._apiserver_url}/api/v1/nodes/{self.node_name}")
        if code != 200:
            return False
        node = json.loads(body)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", [])
        )
        return ready and not node.get("spec", {}).get("taints")

    # -- extras ----------------------------------------------------------------------------------

    def logs(self, component: str, lines: int = 60) -> str:
        """Last lines of a component's log (e.g. "kube-apiserver"), for failure messages."""
        for p in self._procs:
            if p.name == component:
                return p.tail(lines)
        raise KeyError(component)

    @property
    def components(self) -> dict[str, int | None]:
        """Component name -> exit code (None while running)."""
        return {p.name: p.popen.poll() for p in self._procs}
