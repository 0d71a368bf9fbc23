"""The Kubernetes calls the reconciler makes, on a lightkube AsyncClient.

Children are server-side applied as plain dicts with field manager `scoring-operator` and
force=True (the operator owns what it sets; other managers keep fields it leaves alone, such as an
HPA's replicas). API failures become `KubeError` with a condition reason and a retryable flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.resource import NamespacedResource
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.resources.core_v1 import Pod, Service
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType

from scoring_operator import spec as api
from scoring_operator.config import FIELD_MANAGER

try:  # lightkube >= 1.0 is built on httpx2, older releases on httpx: catch the transport errors of either
    from httpx2 import HTTPError
except ImportError:  # pragma: no cover - depends on the installed lightkube
    from httpx import HTTPError  # type: ignore[assignment,unused-ignore]

ScoringModel = create_namespaced_resource(api.GROUP, api.VERSION, api.KIND, api.PLURAL)

KINDS: dict[tuple[str, str], type[NamespacedResource]] = {
    ("apps/v1", "Deployment"): Deployment,
    ("v1", "Service"): Service,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): HorizontalPodAutoscaler,
    ("policy/v1", "PodDisruptionBudget"): PodDisruptionBudget,
}

#: HTTP codes where retrying later may succeed without anyone changing anything.
_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}


class KubeError(Exception):
    """A failed API call, classified for status conditions and retries."""

    def __init__(self, message: str, *, reason: str, retryable: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.code = code


def _classify(exc: Exception, what: str) -> KubeError:
    if isinstance(exc, ApiError):
        code = int(exc.status.code or 0)
        api_reason = exc.status.reason or "ApiError"
        msg = f"{what}: {exc.status.message or exc} (HTTP {code} {api_reason})"
        if code == 403:
            msg += "; check the operator's RBAC (the Helm chart's ClusterRole/Role)"
        return KubeError(msg, reason=f"Api{api_reason}", retryable=code in _RETRYABLE, code=code)
    return KubeError(f"{what}: {type(exc).__name__}: {exc}", reason="ApiUnavailable", retryable=True)


def _resource(api_version: str, kind: str) -> type[NamespacedResource]:
    try:
        return KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not manage {api_version} {kind}") from None


class Kube:
    """Namespaced get/apply/delete of children, plus ScoringModel status patches."""

    def __init__(self, client: AsyncClient | None = None) -> None:
        self.client = client or AsyncClient(config=KubeConfig.from_env(), field_manager=FIELD_MANAGER)

    async def close(self) -> None:
        await self.client.close()

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as a dict, or None when it does not exist."""
        res = _resource(api_version, kind)
        try:
            obj = await self.client.get(res, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise _classify(e, f"get {kind} {namespace}/{name}") from e
        except HTTPError as e:
            raise _classify(e, f"get {kind} {namespace}/{name}") from e
        return dict(cast(Any, obj).to_dict())

    async def apply(self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER) -> None:
        """Server-side apply one child (dict with apiVersion, kind, metadata.name/namespace)."""
        res = _resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        what = f"apply {obj['kind']} {meta['namespace']}/{meta['name']}"
        try:
            await self.client.patch(
                res, meta["name"], dict(obj), namespace=meta["namespace"],
                patch_type=PatchType.APPLY, field_manager=field_manager, force=True,
            )
        except (ApiError, HTTPError) as e:
            raise _classify(e, what) from e

    async def replace_fields(self, obj: Mapping[str, Any], paths: tuple[str, ...]) -> None:
        """JSON-patch `replace` of some top-level spec fields with their values in `obj`.

        Why: server-side apply merges keyed lists (a Service's ports by port number), so an entry
        someone else edited cannot be taken back by applying; replacing the list can.
        """
        res = _resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        ops = [{"op": "replace", "path": f"/spec/{p}", "value": obj["spec"][p]} for p in paths if p in obj["spec"]]
        try:
            await self.client.patch(
                res, meta["name"], ops, namespace=meta["namespace"], patch_type=PatchType.JSON,
                field_manager=FIELD_MANAGER,
            )
        except (ApiError, HTTPError) as e:
            raise _classify(e, f"repair {obj['kind']} {meta['namespace']}/{meta['name']}") from e

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete if present (a 404 is success)."""
        res = _resource(api_version, kind)
        try:
            await self.client.delete(res, name, namespace=namespace)
        except ApiError as e:
            if e.status.code != 404:
                raise _classify(e, f"delete {kind} {namespace}/{name}") from e
        except HTTPError as e:
            raise _classify(e, f"delete {kind} {namespace}/{name}") from e

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Pods matching `labels` (to read why a rollout's new pods cannot start)."""
        try:
            return [dict(cast(Any, p).to_dict()) async for p in self.client.list(Pod, namespace=namespace,
                                                                                  labels=dict(labels))]
        except (ApiError, HTTPError) as e:
            raise _classify(e, f"list pods in {namespace}") from e

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """JSON-merge-patch the status subresource (keys set to None are removed)."""
        try:
            await self.client.patch(
                ScoringModel.Status, name, {"status": dict(status)}, namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        except (ApiError, HTTPError) as e:
            raise _classify(e, f"patch status of ScoringModel {namespace}/{name}") from e
