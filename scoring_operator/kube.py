"""The Kubernetes calls the reconciler makes, on the official client's asyncio API (`kubernetes.aio`).

Children are server-side applied as plain dicts with field manager `scoring-operator` and
force=True (the operator owns what it sets; other managers keep fields it leaves alone, such as an
HPA's replicas). Requests go through the official client's `ApiClient` (its auth, TLS, connection
pool and serialization), addressed by REST path the way the client's own dynamic client does, and
responses are read as JSON dicts: the reconciler and the builders speak dicts, and not loading the
typed API classes and their model classes keeps ~35 MB out of the operator's memory. API failures
become `KubeError` with a condition reason and a retryable flag.

Credentials: in a pod, the ServiceAccount token (re-read as kubelet rotates it); elsewhere, the
kubeconfig ($KUBECONFIG or ~/.kube/config), exec plugins included (AKS `kubelogin`, `aws eks
get-token`...): their token is fetched again when it expires.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config

from scoring_operator import spec as api
from scoring_operator.config import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
#: Environment variables that route the API calls through a proxy (honoured when set).
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
#: Seconds one API call may take before it counts as the API being unavailable.
REQUEST_TIMEOUT = 30.0

#: (apiVersion, kind) -> the collection's path prefix and resource name (plural).
KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "Ingress"): ("/apis/networking.k8s.io/v1", "ingresses"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
}
#: The runtime's container port (scoring_operator.builders.pod.HTTP_PORT) and metrics path.
METRICS_PORT = 8080
METRICS_PATH = "/metrics"
#: Largest /metrics answer read (the runtime's is a few kB).
MAX_METRICS_BYTES = 4 * 1024 * 1024
#: A pod that does not answer /metrics within this is left out of that analysis.
METRICS_TIMEOUT = 5.0

#: HTTP codes where retrying later may succeed without anyone changing anything.
_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError, k8s.ApiException)


class KubeError(Exception):
    """A failed API call, classified for status conditions and retries."""

    def __init__(self, message: str, *, reason: str, retryable: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.code = code


def _api_error(code: int, body: bytes, what: str) -> KubeError:
    """A KubeError from a non-2xx answer (a `Status` object when the apiserver wrote it)."""
    try:
        status = json.loads(body) if body else {}
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    api_reason = str(status.get("reason") or _phrase(code))
    message = str(status.get("message") or body[:200].decode(errors="replace") or "no message")
    msg = f"{what}: {message} (HTTP {code} {api_reason})"
    if code == 403:
        msg += "; check the operator's RBAC (the Helm chart's ClusterRole/Role)"
    return KubeError(msg, reason=f"Api{api_reason}", retryable=code in _RETRYABLE, code=code)


def _phrase(code: int) -> str:
    """`TooManyRequests` for 429: the apiserver's reason names, for answers without a Status body."""
    try:
        return HTTPStatus(code).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "Error"


def _transport_error(exc: BaseException, what: str) -> KubeError:
    return KubeError(f"{what}: {type(exc).__name__}: {exc}", reason="ApiUnavailable", retryable=True)


def _path(api_version: str, kind: str, namespace: str, name: str) -> str:
    try:
        prefix, plural = KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {api_version} {kind}") from None
    return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}/{quote(name, safe='')}"


async def load_configuration() -> k8s.Configuration:
    """In a pod: the ServiceAccount; elsewhere: the kubeconfig, exec plugins included.

    An exec plugin's token is fetched again once it expires (checked before each request), so an
    operator run from a laptop against AKS (kubelogin) keeps working past the first token.
    """
    configuration = k8s.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config(client_configuration=configuration)  # refreshes the token itself
        return configuration
    loader = await k8s_config.load_kube_config(
        config_file=os.environ.get("KUBECONFIG") or None,  # read now, not when the client was imported
        client_configuration=configuration, persist_config=False,
    )
    if "exec" in loader._user:  # the loader keeps the expiry; re-run the plugin only when it passed

        async def refresh(conf: k8s.Configuration) -> None:
            if await loader.load_from_exec_plugin() and getattr(loader, "token", None):
                conf.api_key["BearerToken"] = loader.token

        configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
    return configuration


class Kube:
    """Namespaced get/apply/delete of children, plus ScoringModel status patches (dicts in, dicts out)."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client
        self.api_client.user_agent = f"{FIELD_MANAGER}/python-kubernetes-aio"

    @classmethod
    async def connect(cls, max_connections: int = 16) -> Kube:
        """A client for the cluster the environment points at (see `load_configuration`)."""
        configuration = await load_configuration()
        configuration.connection_pool_maxsize = max_connections  # TLS connections cost memory each
        if not any(os.environ.get(v) for v in PROXY_VARS):
            # The client's session trusts the environment, so aiohttp looks for a proxy and a
            # ~/.netrc in a worker thread before every request: two thread hops per API call, a
            # tenth of the operator's CPU at 500 ScoringModels. With no proxy configured, skip them.
            configuration.client_session_kwargs = {"trust_env": False}
        return cls(k8s.ApiClient(configuration=configuration))

    async def close(self) -> None:
        await self.api_client.close()

    async def _raw(
        self, what: str, method: str, path: str, *, body: Any = None, content_type: str | None = None,
        query: list[tuple[str, str]] | None = None, accept: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, bytes]:
        """(HTTP status, body bytes) of one request; KubeError for transport failures."""
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            request = await self.api_client.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )
            response = await self.api_client.call_api(*request, _request_timeout=timeout)
            try:
                raw = await response.read()
            finally:
                response.response.release()
        except _TRANSPORT_ERRORS as e:
            raise _transport_error(e, what) from e
        return int(response.status), raw

    async def _call(
        self, what: str, method: str, path: str, *, body: Any = None, content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """(HTTP status, JSON body) of one request; KubeError for transport failures and non-2xx (except 404)."""
        status, raw = await self._raw(what, method, path, body=body, content_type=content_type, query=query)
        if status == 404:
            return status, None
        if not 200 <= status < 300:
            raise _api_error(status, raw, what)
        try:  # orjson: a Deployment's apply answer is ~15 kB, parsed hundreds of times a second in a rollout
            data = orjson.loads(raw) if raw else None
        except ValueError as e:
            raise KubeError(f"{what}: the apiserver answered with invalid JSON", reason="ApiInvalidResponse",
                            retryable=True, code=status) from e
        return status, data if isinstance(data, dict) else None

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        _, obj = await self._call(f"get {kind} {namespace}/{name}", "GET", _path(api_version, kind, namespace, name))
        return obj

    async def apply(self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply one child (dict with apiVersion, kind, metadata.name/namespace); the live object."""
        meta = obj["metadata"]
        what = f"apply {obj['kind']} {meta['namespace']}/{meta['name']}"
        status, live = await self._call(
            what, "PATCH", _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]), body=dict(obj),
            content_type=APPLY, query=[("fieldManager", field_manager), ("force", "true")],
        )
        if status == 404 or live is None:  # the namespace is gone (an apply creates the object otherwise)
            raise KubeError(f"{what}: not found (HTTP {status})", reason="ApiNotFound", retryable=False, code=404)
        return live

    async def replace_fields(self, obj: Mapping[str, Any], paths: tuple[str, ...]) -> None:
        """JSON-patch `replace` of some top-level spec fields with their values in `obj`.

        Why: server-side apply merges keyed lists (a Service's ports by port number), so an entry
        someone else edited cannot be taken back by applying; replacing the list can.
        """
        meta = obj["metadata"]
        ops = [{"op": "replace", "path": f"/spec/{p}", "value": obj["spec"][p]} for p in paths if p in obj["spec"]]
        await self._call(
            f"repair {obj['kind']} {meta['namespace']}/{meta['name']}", "PATCH",
            _path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]), body=ops,
            content_type=JSON_PATCH, query=[("fieldManager", FIELD_MANAGER)],
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete if present (a 404 is success)."""
        await self._call(f"delete {kind} {namespace}/{name}", "DELETE", _path(api_version, kind, namespace, name))

    async def serves(self, api_version: str, kind: str) -> bool:
        """Whether the apiserver serves `kind` of `api_version` (false when its CRD is not installed)."""
        prefix, plural = KINDS[(api_version, kind)]
        code, data = await self._call(f"discover {api_version}", "GET", prefix)
        return code != 404 and any(r.get("name") == plural for r in (data or {}).get("resources") or [])

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods matching `labels` (to read why a rollout's new pods cannot start)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        _, data = await self._call(
            f"list pods in {namespace}", "GET", f"/api/v1/namespaces/{quote(namespace, safe='')}/pods",
            query=[("labelSelector", selector)],
        )
        items = (data or {}).get("items") or []
        return [dict(p) for p in items if isinstance(p, dict)]

    async def list_pods_selector(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector string (set-based terms such as `key!=value` allowed)."""
        _, data = await self._call(
            f"list pods in {namespace}", "GET", f"/api/v1/namespaces/{quote(namespace, safe='')}/pods",
            query=[("labelSelector", selector)],
        )
        items = (data or {}).get("items") or []
        return [dict(p) for p in items if isinstance(p, dict)]

    async def pod_metrics(self, namespace: str, pod: str, scheme: str = "http") -> str:
        """A scoring pod's Prometheus text, through the apiserver's pod proxy (RBAC: pods/proxy get).

        Why the proxy: no Prometheus server, no network path from the operator to the pods needed, and an
        HTTPS pod is read the same way.
        """
        target = f"{scheme}:{pod}:{METRICS_PORT}" if scheme == "https" else f"{pod}:{METRICS_PORT}"
        path = (f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(target, safe=':')}/proxy"
                f"{METRICS_PATH}")
        what = f"read the metrics of pod {namespace}/{pod}"
        status, raw = await self._raw(what, "GET", path, accept="text/plain", timeout=METRICS_TIMEOUT)
        if not 200 <= status < 300:
            raise _api_error(status, raw, what)
        if len(raw) > MAX_METRICS_BYTES:
            raise KubeError(f"{what}: answer over {MAX_METRICS_BYTES} bytes", reason="MetricsTooLarge",
                            retryable=True)
        return raw.decode(errors="replace")

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """JSON-merge-patch the status subresource (keys set to None are removed)."""
        what = f"patch status of ScoringModel {namespace}/{name}"
        path = (f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{quote(namespace, safe='')}/{api.PLURAL}/"
                f"{quote(name, safe='')}/status")
        code, _ = await self._call(what, "PATCH", path, body={"status": dict(status)}, content_type=MERGE)
        if code == 404:
            raise KubeError(f"{what}: not found", reason="ApiNotFound", retryable=False, code=404)
