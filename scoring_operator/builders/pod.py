"""The scoring pod: an init container that fetches a pinned model version, then `scoring serve`.

Everything a pod needs from the registry (volumes, the registry URI the init container uses,
whether it needs a ServiceAccount token) comes from `registry_access`, the one place a new
registry type (Azure ML with workload identity) has to be taught to the pod builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.config import OperatorConfig

RUNTIME_CONTAINER = "runtime"
INIT_CONTAINER = "fetch-model"
HTTP_PORT = 8080
MODEL_DIR = "/model"
REGISTRY_MOUNT = "/registry"
API_KEY_DIR = "/var/run/secrets/scoring"
API_KEY_FILE = f"{API_KEY_DIR}/api-key"
#: spec.tls: the kubernetes.io/tls Secret's keys appear here (ca.crt too, when the Secret has one)
TLS_DIR = "/etc/scoring/tls"
TLS_CERT_FILE = f"{TLS_DIR}/tls.crt"
TLS_KEY_FILE = f"{TLS_DIR}/tls.key"
TLS_CA_FILE = f"{TLS_DIR}/ca.crt"
RUN_AS = 10001
DEFAULT_GPU_TOLERATION = {"key": api.DEFAULT_GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
STARTUP_PERIOD = 5
#: preStop runs before SIGTERM: the pod keeps serving while its endpoint removal reaches every
#: kube-proxy (and load balancer), so a rollout or scale-down drops no request.
PRESTOP_SLEEP_SECONDS = 5
#: The resources the fetch init container gets from spec.resources (it needs no GPU or other device).
INIT_RESOURCES = ("cpu", "memory")
#: A private emptyDir per pod: the root filesystem is read-only.
TMP_DIR = "/tmp"  # noqa: S108
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
WORKLOAD_IDENTITY_SKIP = "azure.workload.identity/skip-containers"


@dataclass(frozen=True)
class RegistryAccess:
    """What the pod needs to reach a registry."""

    uri: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    service_account: str | None = None
    #: Pod labels/annotations (Azure workload identity) and env for the fetch container.
    pod_labels: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    env: list[dict[str, Any]] = field(default_factory=list)


def registry_access(registry: api.RegistrySpec) -> RegistryAccess:
    """The registry URI and volumes for the init container's `scoring fetch`."""
    if isinstance(registry, api.LocalRegistry):
        uri = f"file://{REGISTRY_MOUNT}" + (f"/{registry.path}" if registry.path else "")
        return RegistryAccess(
            uri=uri,
            volumes=[{
                "name": "registry",
                "persistentVolumeClaim": {"claimName": registry.claim_name, "readOnly": True},
            }],
            mounts=[{"name": "registry", "mountPath": REGISTRY_MOUNT, "readOnly": True}],
        )
    if isinstance(registry, api.AzureMLRegistry):
        if registry.service_account_name is None:  # the node's managed identity (IMDS), if it has one
            return RegistryAccess(uri=registry.uri, env=_client_id_env(registry))
        return RegistryAccess(
            uri=registry.uri,
            service_account=registry.service_account_name,
            # The AKS webhook injects the federated token and AZURE_* env; the serving container needs no
            # Azure credentials, so it is skipped.
            pod_labels={WORKLOAD_IDENTITY_LABEL: "true"},
            pod_annotations={WORKLOAD_IDENTITY_SKIP: RUNTIME_CONTAINER},
            env=_client_id_env(registry),
        )
    raise TypeError(f"unsupported registry type {type(registry).__name__}")  # pragma: no cover


def _client_id_env(registry: api.AzureMLRegistry) -> list[dict[str, Any]]:
    # The webhook never overwrites an env var the container already has, so this wins over the SA annotation.
    return [{"name": "AZURE_CLIENT_ID", "value": registry.client_id}] if registry.client_id else []


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def runtime_image(spec: api.ScoringModelSpec, config: OperatorConfig) -> str:
    """The user's image, else the CUDA image for GPU/torch models, else the CPU image."""
    if spec.runtime.image:
        return spec.runtime.image
    if spec.gpu_count > 0 or spec.runtime.framework == "torch":
        return config.runtime_gpu_image
    return config.runtime_image


def runtime_env(spec: api.ScoringModelSpec) -> list[dict[str, Any]]:
    """SCORING_* settings from typed fields first, then the user's extra env vars."""
    rt = spec.runtime
    env: list[dict[str, Any]] = [
        {"name": "SCORING_HOST", "value": "0.0.0.0"},
        {"name": "SCORING_PORT", "value": str(HTTP_PORT)},
    ]

    def put(name: str, value: int | str | bool | None) -> None:
        if isinstance(value, bool):
            value = "true" if value else "false"
        if value is not None:
            env.append({"name": name, "value": str(value)})

    put("SCORING_WORKERS", rt.workers)
    put("SCORING_THREADS", rt.threads)
    if rt.batching is not None:
        put("SCORING_MAX_BATCH_SIZE", rt.batching.max_batch_size)
        put("SCORING_MAX_BATCH_DELAY_MS", rt.batching.max_batch_delay_ms)
        put("SCORING_MAX_QUEUE_ROWS", rt.batching.max_queue_rows)
    if spec.auth is not None and spec.auth.api_key_secret is not None:
        put("SCORING_API_KEY_FILE", API_KEY_FILE)
    if spec.tls is not None:
        put("SCORING_TLS_CERT_FILE", TLS_CERT_FILE)
        put("SCORING_TLS_KEY_FILE", TLS_KEY_FILE)
    put("SCORING_DEVICE", rt.device)
    put("SCORING_HALF_PRECISION", rt.half_precision)
    put("SCORING_TORCH_THREADS", rt.torch_threads)
    put("SCORING_ALLOW_PICKLE", rt.allow_pickle)
    put("SCORING_LOG_LEVEL", rt.log_level)
    env.extend(e.wire() for e in rt.env or [])
    return env


def resources(spec: api.ScoringModelSpec, *, with_gpu: bool) -> dict[str, Any]:
    """Requests/limits as given, plus the GPU limit (extended resources need only a limit)."""
    out: dict[str, Any] = {}
    if spec.resources is not None:
        if spec.resources.requests:
            out["requests"] = {k: str(v) for k, v in spec.resources.requests.items()}
        if spec.resources.limits:
            out["limits"] = {k: str(v) for k, v in spec.resources.limits.items()}
    if with_gpu and spec.gpu is not None and spec.gpu.count > 0:
        out.setdefault("limits", {})[spec.gpu.resource_name] = str(spec.gpu.count)
    return out


def _probe(path: str, *, period: int, failures: int, timeout: int = 2, tls: bool = False) -> dict[str, Any]:
    # The kubelet does not verify the certificate of an HTTPS probe: no CA to hand it.
    return {
        "httpGet": {"path": path, "port": "http", **({"scheme": "HTTPS"} if tls else {})},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def pod_template(
    owner: meta.Owner, spec: api.ScoringModelSpec, version: int, config: OperatorConfig
) -> dict[str, Any]:
    """The Deployment's pod template for `version` (a pinned, resolved model version)."""
    access = registry_access(spec.model.registry)
    image = runtime_image(spec, config)
    pull_policy = {"imagePullPolicy": spec.runtime.image_pull_policy} if spec.runtime.image_pull_policy else {}
    model_mount = {"name": "model", "mountPath": MODEL_DIR}
    tmp_mount = {"name": "tmp", "mountPath": TMP_DIR}
    fetch = {
        "name": INIT_CONTAINER,
        "image": image,
        **pull_policy,
        "command": [
            "scoring", "fetch",
            "--registry", access.uri,
            "--name", spec.model.name,
            "--version", str(version),
            "--dest", MODEL_DIR,
            # /model is this pod's own emptyDir: it survives init container restarts, so a fetch killed
            # midway must be able to start over (a complete earlier fetch is verified and kept).
            "--clean",
        ],
        "volumeMounts": [model_mount, tmp_mount, *access.mounts],
        "securityContext": container_security_context(),
        # A failed fetch's last log lines become the container's termination message, which the
        # operator copies into the ScoringModel status (e.g. a sha256 mismatch in the registry).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if access.env:
        fetch["env"] = access.env
    # Only cpu/memory: the fetch uses no device, and an extended resource listed in spec.resources (a GPU)
    # would have the device plugin allocate one to the init container for nothing.
    init_resources = {
        kind: picked
        for kind, amounts in resources(spec, with_gpu=False).items()
        if (picked := {k: v for k, v in amounts.items() if k in INIT_RESOURCES})
    }
    if init_resources:
        fetch["resources"] = init_resources

    mounts: list[dict[str, Any]] = [{**model_mount, "readOnly": True}, tmp_mount]
    volumes: list[dict[str, Any]] = [
        {"name": "model", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        *access.volumes,
    ]
    if spec.auth is not None and spec.auth.api_key_secret is not None:
        secret = spec.auth.api_key_secret
        volumes.append({
            "name": "api-key",
            "secret": {
                "secretName": secret.name,
                "items": [{"key": secret.key, "path": "api-key"}],
                "defaultMode": 0o440,
                **({"optional": secret.optional} if secret.optional is not None else {}),
            },
        })
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    tls = spec.tls is not None
    if spec.tls is not None:
        # The whole Secret (tls.crt, tls.key, ca.crt): no items list, so an update swaps all files at once
        # and the runtime picks the renewed pair up; 0440 + the pod's fsGroup: readable by the runtime only.
        volumes.append({"name": "tls", "secret": {"secretName": spec.tls.secret_name, "defaultMode": 0o440}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})

    startup_failures = max(1, -(-spec.runtime.startup_timeout_seconds // STARTUP_PERIOD))
    runtime: dict[str, Any] = {
        "name": RUNTIME_CONTAINER,
        "image": image,
        **pull_policy,
        "command": ["scoring", "serve", "--model-dir", MODEL_DIR, "--port", str(HTTP_PORT)],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": runtime_env(spec),
        "volumeMounts": mounts,
        # Readiness, not liveness: /live answers as soon as the server is up, so a hung model load
        # would never hit startupTimeoutSeconds; /ready stays 503 until the model is loaded.
        "startupProbe": _probe(READY_PATH, period=STARTUP_PERIOD, failures=startup_failures, tls=tls),
        "readinessProbe": _probe(READY_PATH, period=5, failures=3, tls=tls),
        "livenessProbe": _probe(LIVE_PATH, period=10, failures=3, timeout=5, tls=tls),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    runtime_resources = resources(spec, with_gpu=True)
    if runtime_resources:
        runtime["resources"] = runtime_resources

    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": access.service_account is not None,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "initContainers": [fetch],
        "containers": [runtime],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    if access.service_account:
        pod_spec["serviceAccountName"] = access.service_account
    if spec.runtime.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.runtime.image_pull_secrets]
    if spec.gpu is not None and spec.gpu.count > 0:
        if spec.gpu.node_selector:
            pod_spec["nodeSelector"] = dict(spec.gpu.node_selector)
        tolerations = (
            [t.wire() for t in spec.gpu.tolerations] if spec.gpu.tolerations is not None
            else [dict(DEFAULT_GPU_TOLERATION)]
        )
        if tolerations:
            pod_spec["tolerations"] = tolerations

    return {
        "metadata": {
            "labels": {**meta.labels(owner, spec.model.name), **access.pod_labels},
            "annotations": {
                **access.pod_annotations,
                meta.ANNOTATION_MODEL_NAME: spec.model.name,
                meta.ANNOTATION_MODEL_VERSION: str(version),
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(HTTP_PORT),
                "prometheus.io/path": "/metrics",
                **({"prometheus.io/scheme": "https"} if tls else {}),
            },
        },
        "spec": pod_spec,
    }
