"""Turn Azure SDK exceptions into registry errors whose message says what to fix.

The operator reports `RegistryError.reason` as a condition reason and retries only when
`retryable` is set, so the mapping decides whether a ScoringModel waits (throttling, network) or
tells a human (missing role, unknown model). Messages are scrubbed: SAS URLs and tokens that
the SDK puts into exception text never reach a log or a Kubernetes event.
"""

from __future__ import annotations

import os

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from scoring_runtime.registry.azureml_uri import AzureMLLocation
from scoring_runtime.registry.errors import (
    AccessDenied,
    LabelNotFound,
    ModelNotFound,
    RegistryError,
    RegistryUnavailable,
)
from scoring_runtime.telemetry.scrub import scrub

_MODEL_ROLES = {
    False: (
        "the 'AzureML Data Scientist' role (or a custom role allowing "
        "Microsoft.MachineLearningServices/workspaces/models/read and .../datastores/read) on the workspace"
    ),
    True: "the 'AzureML Registry User' role (or a custom role allowing registries/assets read) on the registry",
}


def _who() -> str:
    client_id = os.environ.get("AZURE_CLIENT_ID")
    return f"identity {client_id}" if client_id else "the pod's Azure identity"


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)


def _retry_after(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("retry-after-ms") or headers.get("x-ms-retry-after-ms")
    return f" (the service asked to retry after {value})" if value else ""


def _detail(exc: BaseException) -> str:
    text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip().splitlines()
    return scrub(text[0] if text else type(exc).__name__)


def map_control_plane_error(
    exc: BaseException, location: AzureMLLocation, what: str, *, label: str | None = None
) -> RegistryError:
    """An error from the AML API (models, datastores, registry discovery) as a RegistryError."""
    where = location.describe()
    status = _status(exc)
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        cls = LabelNotFound if label else ModelNotFound
        return cls(f"{what} not found in {where}")
    if isinstance(exc, ClientAuthenticationError) and status is None:
        # No HTTP status: the credential itself failed (no workload identity, token exchange refused).
        return AccessDenied(
            f"cannot get an Azure token for {where}: {_detail(exc)}. On AKS, enable workload identity for the "
            "pod (label azure.workload.identity/use=true, a ServiceAccount annotated with "
            "azure.workload.identity/client-id, and a federated credential for it); see docs/azure.md"
        )
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return AccessDenied(
            f"{_who()} may not read {what} in {where} (HTTP {status}): grant it "
            f"{_MODEL_ROLES[location.is_registry]}"
        )
    if status == 429:
        return RegistryUnavailable(f"{where} is throttling requests for {what}{_retry_after(exc)}; retry later")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return RegistryUnavailable(f"cannot reach {where} for {what}: {_detail(exc)}")
    if isinstance(exc, HttpResponseError) and status is not None and status >= 500:
        return RegistryUnavailable(f"{where} failed with HTTP {status} for {what}: {_detail(exc)}")
    if isinstance(exc, HttpResponseError):
        return RegistryError(f"{where} refused the request for {what} (HTTP {status}): {_detail(exc)}")
    return RegistryError(f"{what} in {where}: {_detail(exc)}")


def map_storage_error(exc: BaseException, account: str, blob: str, *, sas: bool) -> RegistryError:
    """An error from blob storage while listing or downloading model artifacts."""
    from scoring_runtime.registry.errors import IntegrityError

    status = _status(exc)
    where = f"storage account {account!r}"
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return IntegrityError(
            f"model artifact {blob!r} is missing from {where}: the model version is registered but its files "
            "were deleted or moved"
        )
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        if sas:
            return AccessDenied(
                f"{where} refused the registry's download token for {blob!r} (HTTP {status}); the registry "
                "may be misconfigured or the token expired, retry the fetch"
            )
        return AccessDenied(
            f"{_who()} may not read {blob!r} from {where} (HTTP {status}): grant it the "
            "'Storage Blob Data Reader' role on the workspace's storage account"
        )
    if status == 429 or (status is not None and status >= 500):
        return RegistryUnavailable(f"{where} is unavailable (HTTP {status}){_retry_after(exc)}; retry later")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return RegistryUnavailable(f"cannot reach {where}: {_detail(exc)}")
    return RegistryError(f"downloading {blob!r} from {where} failed: {_detail(exc)}")
