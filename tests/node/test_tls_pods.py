"""HTTPS all the way to REAL pods (spec.tls): curl --cacert reaches the model on the pod itself and
through its Service, and a rotated Secret is served to new connections without a restart."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.kube.node import in_client_netns
from tests.node.test_real_pods import (  # noqa: F401  (env: the chart installed, a module fixture)
    SCORE_BODY,
    Env,
    apply,
    env,
    ids_of,
    report,
    scoring_model,
    scoring_pods,
    sm_ready,
)
from tests.operator.kubehelpers import get, wait_for
from tests.runtime.certs import Issued, TestCA

pytestmark = [pytest.mark.node, pytest.mark.cluster, pytest.mark.slow]

NAME = "faq-tls"
SECRET = "faq-tls-cert"

#: run inside the client netns: the SHA-256 of the certificate the server presents (verified against the CA)
PEER_CERT = (
    "import hashlib, socket, ssl, sys\n"
    "host, ip, port, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]\n"
    "ctx = ssl.create_default_context(cafile=ca)\n"
    "with socket.create_connection((ip, port), timeout=10) as s, ctx.wrap_socket(s, server_hostname=host) as t:\n"
    "    print(hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest())\n"
)


def tls_secret(ns: str, ca: TestCA, issued: Issued) -> dict[str, Any]:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": SECRET, "namespace": ns},
            "data": {"tls.crt": b64(issued.cert_pem), "tls.key": b64(issued.key_pem), "ca.crt": b64(ca.ca_pem)}}


def curl(host: str, ip: str, port: int, path: str, ca: Path, *extra: str, scheme: str = "https") -> tuple[int, str]:
    """curl from the client netns to `ip`, with `host` as the name it checks the certificate against."""
    cmd = ["curl", "-sS", "--max-time", "20", "--cacert", str(ca), "--resolve", f"{host}:{port}:{ip}",
           "-o", "-", "-w", "\n%{http_code}", *extra, f"{scheme}://{host}:{port}{path}"]
    out = subprocess.run(in_client_netns(*cmd), capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body or out.stderr


def served_cert(host: str, ip: str, port: int, ca: Path) -> str | None:
    import sys

    out = subprocess.run(in_client_netns(sys.executable, "-c", PEER_CERT, host, ip, str(port), str(ca)),
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or None


def test_https_to_the_pods_with_a_rotated_certificate_and_no_restart(env: Env, tmp_path: Path) -> None:  # noqa: F811
    cluster, ns = env.cluster, env.namespaces["ready"]
    host = f"{NAME}.{ns}.svc"
    names = [host, f"{host}.cluster.local", NAME]
    ca = TestCA(tmp_path / "ca")
    tmp_path.chmod(0o755)
    first = ca.issue(names)
    apply(cluster, tls_secret(ns, ca, first))
    t0 = time.monotonic()
    apply(cluster, scoring_model(NAME, ns, replicas=1, tls={"secretName": SECRET}))
    # Ready means the HTTPS startup/readiness probes passed on the real kubelet.
    sm = wait_for(f"ScoringModel {NAME} Ready over HTTPS", lambda: sm_ready(cluster, ns, NAME, 1), timeout=240)
    report("tls_apply_to_ready_seconds", round(time.monotonic() - t0, 1))
    assert sm["status"]["endpoint"] == f"https://{host}:80"
    svc = get(cluster, "service", ns, NAME)
    assert svc is not None and svc["spec"]["ports"][0]["appProtocol"] == "https"
    (pod,) = scoring_pods(cluster, ns, NAME)
    pod_ip, pod_uid = pod["status"]["podIP"], pod["metadata"]["uid"]
    probe = pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["scheme"] == "HTTPS"
    auth = ["-H", f"Authorization: Bearer {env.api_key}", "-H", "Content-Type: application/json",
            "--data", json.dumps(SCORE_BODY)]

    # On the pod itself (port 8080), verified against our CA by curl --cacert; then through the Service.
    code, body = curl(host, pod_ip, 8080, "/score", ca.ca_file, *auth)
    assert code == 200, body
    assert ids_of(json.loads(body))[0] == 101, body
    code, body = curl(host, svc["spec"]["clusterIP"], 80, "/score", ca.ca_file, *auth)
    assert code == 200, body
    assert served_cert(host, pod_ip, 8080, ca.ca_file) == first.sha256
    # Plain HTTP to the pod gets no answer; a client that does not trust the CA is refused.
    code, _ = curl(host, pod_ip, 8080, "/v2/health/live", ca.ca_file, scheme="http")
    assert code != 200
    other = TestCA(tmp_path / "other-ca", name="someone else")
    code, err = curl(host, pod_ip, 8080, "/v2/health/live", other.ca_file)
    assert code == 0 and "certificate" in err.lower(), err

    # Rotate: a new key and certificate in the same Secret (what cert-manager does on renewal).
    second = ca.issue(names)
    apply(cluster, tls_secret(ns, ca, second))
    t1 = time.monotonic()
    wait_for("the pod to serve the rotated certificate",
             lambda: served_cert(host, pod_ip, 8080, ca.ca_file) == second.sha256, timeout=150, interval=1.0)
    report("tls_rotation_seconds", round(time.monotonic() - t1, 1))
    code, body = curl(host, pod_ip, 8080, "/score", ca.ca_file, *auth)
    assert code == 200, body
    (after,) = scoring_pods(cluster, ns, NAME)
    assert after["metadata"]["uid"] == pod_uid, "the pod was replaced"
    statuses = {c["name"]: c for c in after["status"]["containerStatuses"]}
    assert statuses["runtime"]["restartCount"] == 0, statuses["runtime"]
    logs = cluster.kubectl("logs", "-n", ns, after["metadata"]["name"], "-c", "runtime").stdout
    assert "tls_reloaded" in logs and second.sha256 in logs, logs[-2000:]
    cluster.kubectl("delete", "scoringmodel", NAME, "-n", ns, "--wait=true", "--timeout=90s", check=False)


def test_an_unusable_tls_pair_is_named_in_the_status(env: Env, tmp_path: Path) -> None:  # noqa: F811
    """A Secret whose key belongs to another certificate: the runtime exits with one line, and the
    ScoringModel's status quotes it (no silent crash loop)."""
    cluster, ns = env.cluster, env.namespaces["ready"]
    name, secret = "faq-badtls", "faq-badtls-cert"
    ca = TestCA(tmp_path / "ca")
    good, other = ca.issue([f"{name}.{ns}.svc"]), ca.issue([f"{name}.{ns}.svc"])
    mismatched = Issued(cert_pem=good.cert_pem, key_pem=other.key_pem, sha256=good.sha256)
    doc = tls_secret(ns, ca, mismatched)
    doc["metadata"]["name"] = secret
    apply(cluster, doc)
    apply(cluster, scoring_model(name, ns, replicas=1, tls={"secretName": secret}))

    def says_why() -> dict[str, Any] | None:
        sm = get(cluster, "scoringmodel", ns, name) or {}
        ready: dict[str, Any] = next(
            (c for c in (sm.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "RuntimeFailed" else None

    ready = wait_for("status naming the unusable certificate", says_why, timeout=240, interval=1)
    assert "the key does not belong to the certificate" in ready["message"], ready
    cluster.kubectl("delete", "scoringmodel", name, "-n", ns, "--wait=true", "--timeout=90s", check=False)
