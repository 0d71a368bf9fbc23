"""The Kubernetes calls the reconciler makes, on the official client's asyncio API (`kubernetes.aio`).

Children are server-side applied as plain dicts with field manager `scoring-operator` and
force=True (the operator owns what it sets; other managers keep fields it leaves alone, such as an
HPA's replicas). Responses are read as JSON dicts (`*_without_preload_content`), never turned into
the client's model classes: the reconciler and the builders speak dicts. API failures become
`KubeError` with a condition reason and a retryable flag.

Credentials: in a pod, the ServiceAccount token (re-read as kubelet rotates it); elsewhere, the
kubeconfig ($KUBECONFIG or ~/.kube/config), exec plugins included (AKS `kubelogin`, `aws eks
get-token`...): their token is fetched again when it expires.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from kubernetes.aio import client as k8s
from kubernetes.aio import config as k8s_config

from scoring_operator import spec as api
from scoring_operator.config import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
#: Seconds one API call may take before it counts as the API being unavailable.
REQUEST_TIMEOUT = 30.0

#: (apiVersion, kind) -> (typed API class, the `*_namespaced_<x>` suffix of its methods).
KINDS: dict[tuple[str, str], tuple[type[Any], str]] = {
    ("apps/v1", "Deployment"): (k8s.AppsV1Api, "namespaced_deployment"),
    ("v1", "Service"): (k8s.CoreV1Api, "namespaced_service"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): (k8s.AutoscalingV2Api, "namespaced_horizontal_pod_autoscaler"),
    ("policy/v1", "PodDisruptionBudget"): (k8s.PolicyV1Api, "namespaced_pod_disruption_budget"),
}

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
    api_reason = str(status.get("reason") or "ApiError")
    message = str(status.get("message") or body[:200].decode(errors="replace") or "no message")
    msg = f"{what}: {message} (HTTP {code} {api_reason})"
    if code == 403:
        msg += "; check the operator's RBAC (the Helm chart's ClusterRole/Role)"
    return KubeError(msg, reason=f"Api{api_reason}", retryable=code in _RETRYABLE, code=code)


def _transport_error(exc: BaseException, what: str) -> KubeError:
    return KubeError(f"{what}: {type(exc).__name__}: {exc}", reason="ApiUnavailable", retryable=True)


def _kind(api_version: str, kind: str) -> tuple[type[Any], str]:
    try:
        return KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {api_version} {kind}") from None


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
        self._apis: dict[type[Any], Any] = {}

    @classmethod
    async def connect(cls) -> Kube:
        """A client for the cluster the environment points at (see `load_configuration`)."""
        return cls(k8s.ApiClient(configuration=await load_configuration()))

    async def close(self) -> None:
        await self.api_client.close()

    def _api(self, cls: type[Any]) -> Any:
        api_obj = self._apis.get(cls)
        if api_obj is None:
            api_obj = self._apis[cls] = cls(self.api_client)
        return api_obj

    def _method(self, verb: str, api_version: str, kind: str) -> Callable[..., Awaitable[Any]]:
        cls, suffix = _kind(api_version, kind)
        return getattr(self._api(cls), f"{verb}_{suffix}_without_preload_content")

    async def _call(self, what: str, call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> tuple[
            int, dict[str, Any] | None]:
        """(HTTP status, JSON body) of one call; KubeError for transport failures and non-2xx (except 404)."""
        try:
            response = await call(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
            try:
                body = await response.read()
            finally:
                response.release()
        except _TRANSPORT_ERRORS as e:
            raise _transport_error(e, what) from e
        status = int(response.status)
        if status == 404:
            return status, None
        if not 200 <= status < 300:
            raise _api_error(status, body, what)
        try:
            data = json.loads(body) if body else None
        except ValueError as e:
            raise KubeError(f"{what}: the apiserver answered with invalid JSON", reason="ApiInvalidResponse",
                            retryable=True, code=status) from e
        return status, data if isinstance(data, dict) else None

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        _, obj = await self._call(f"get {kind} {namespace}/{name}", self._method("read", api_version, kind),
                                  name, namespace)
        return obj

    async def apply(self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply one child (dict with apiVersion, kind, metadata.name/namespace); the live object."""
        meta = obj["metadata"]
        what = f"apply {obj['kind']} {meta['namespace']}/{meta['name']}"
        status, live = await self._call(
            what, self._method("patch", obj["apiVersion"], obj["kind"]), meta["name"], meta["namespace"], dict(obj),
            field_manager=field_manager, force=True, _content_type=APPLY,
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
            f"repair {obj['kind']} {meta['namespace']}/{meta['name']}",
            self._method("patch", obj["apiVersion"], obj["kind"]), meta["name"], meta["namespace"], ops,
            field_manager=FIELD_MANAGER, _content_type=JSON_PATCH,
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete if present (a 404 is success)."""
        await self._call(f"delete {kind} {namespace}/{name}", self._method("delete", api_version, kind),
                         name, namespace)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """JSON-merge-patch the status subresource (keys set to None are removed)."""
        what = f"patch status of ScoringModel {namespace}/{name}"
        code, _ = await self._call(
            what, self._api(k8s.CustomObjectsApi).patch_namespaced_custom_object_status_without_preload_content,
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": dict(status)}, _content_type=MERGE,
        )
        if code == 404:
            raise KubeError(f"{what}: not found", reason="ApiNotFound", retryable=False, code=404)
