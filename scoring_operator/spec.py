"""The `ScoringModel` API (scoring.dev/v1alpha1): the one source of truth for the CRD schema.

`python -m scoring_operator.crdgen` turns these models into the CRD's OpenAPI schema, and the
operator parses every object it reconciles with them, so what the apiserver admits and what the
operator understands cannot drift apart. Cross-field rules live twice on purpose: as pydantic
validators (clear errors in unit tests and for `scoring-operator` itself) and as CEL
`x-kubernetes-validations` (the apiserver refuses bad specs at admission).
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "scoring.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ScoringModel"
PLURAL = "scoringmodels"
SINGULAR = "scoringmodel"
SHORT_NAMES = ("sm",)

#: The runtime's in-flight requests gauge (Prometheus), used by `autoscaling.targetInFlightRequests`.
IN_FLIGHT_METRIC = "scoring_requests_in_flight"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"

#: Env vars the operator sets on the runtime container from typed fields; users may not override them.
MANAGED_ENV = (
    "SCORING_MODEL_DIR",
    "SCORING_HOST",
    "SCORING_PORT",
    "SCORING_WORKERS",
    "SCORING_THREADS",
    "SCORING_MAX_BATCH_SIZE",
    "SCORING_MAX_BATCH_DELAY_MS",
    "SCORING_MAX_QUEUE_ROWS",
    "SCORING_API_KEY_FILE",
    "SCORING_DEVICE",
    "SCORING_HALF_PRECISION",
    "SCORING_TORCH_THREADS",
    "SCORING_ALLOW_PICKLE",
    "SCORING_LOG_LEVEL",
    "SCORING_SHADOW_CONFIG_FILE",
    "SCORING_TLS_CERT_FILE",
    "SCORING_TLS_KEY_FILE",
)

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_MODEL_NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
_LABEL = r"^[A-Za-z0-9._-]{1,63}$"
_QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_REGISTRY_PATH = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
_QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_IMAGE = r"^[^\s]+$"

_QUANTITY_MAX_LENGTH = 64
_RESOURCES_MAX = 16

#: A Kubernetes resource quantity ("500m", "2Gi", 4); validated by the same regex the apiserver uses.
#: A custom resource's schema can only be int-or-string, so a fraction must be a string ("0.5" or "500m").
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={
        "x-kubernetes-int-or-string": True, "pattern": _QUANTITY, "maxLength": _QUANTITY_MAX_LENGTH}),
]
_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("", 0), ("k", 3), ("M", 6), ("G", 9),
                                        ("T", 12), ("P", 15), ("E", 18))},
}


def quantity_value(q: int | str) -> Decimal:
    """The numeric value of a quantity already matching _QUANTITY (2Gi -> 2147483648, 500m -> 0.5)."""
    if isinstance(q, int):
        return Decimal(q)
    m = re.match(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$", q)
    if m is None:
        raise ValueError(f"{q!r} is not a Kubernetes quantity")
    number, suffix = Decimal(m.group(1)), m.group(2)
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** Decimal(suffix[1:])
    return number * _SUFFIXES[suffix]


def _cel(rule: str, message: str) -> dict[str, Any]:
    """A CEL rule for `x-kubernetes-validations`, refused at admission with `message`."""
    return {"rule": rule, "message": message}


def _validations(*rules: dict[str, Any]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": list(rules)}


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields refused (the apiserver prunes them anyway)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The camelCase dict as stored in Kubernetes, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ------------------------------------------------------------------------------------- spec.model


class LocalRegistry(_Model):
    """A local file registry on a PersistentVolumeClaim (the layout `scoring register` writes).

    The scoring pod mounts the claim read-only for its init container; the operator resolves labels
    by reading the same files through its own mount (chart value `localRegistry.claimName`).
    """

    type: Literal["local"] = Field(description="Registry kind: `local` (a file registry on a volume).")
    claim_name: str = Field(
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="PersistentVolumeClaim (in this namespace) holding the registry; mounted read-only.",
    )
    path: str | None = Field(
        default=None,
        max_length=1024,
        pattern=_REGISTRY_PATH,
        description="Sub-directory of the claim that is the registry root (relative, no `..`).",
    )

    @field_validator("path")
    @classmethod
    def _no_parent(cls, v: str | None) -> str | None:
        if v is not None and ".." in v.split("/"):
            raise ValueError(f"registry path {v!r} must stay inside the claim: remove '..'")
        return v


_AZURE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._()-]*$"
_GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_AML_WHERE = (
    "has(self.registryName) ? !(has(self.subscriptionId) || has(self.resourceGroup) || has(self.workspace))"
    " : (has(self.subscriptionId) && has(self.resourceGroup) && has(self.workspace))"
)


class AzureMLRegistry(_Model):
    """An Azure Machine Learning workspace or AML registry, read with Azure workload identity.

    Give `subscriptionId` + `resourceGroup` + `workspace`, or `registryName`. The fetch init
    container runs as `serviceAccountName` (federated with an Azure identity); see docs/azure.md.
    """

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                f"self.type != 'azureml' || ({_AML_WHERE})",
                "an azureml registry needs subscriptionId, resourceGroup and workspace, or registryName alone",
            )
        )
    )

    type: Literal["azureml"] = Field(description="Registry kind: `azureml` (an Azure Machine Learning workspace "
                                     "or registry).")
    subscription_id: str | None = Field(default=None, pattern=_GUID, description="Azure subscription of the workspace.")
    resource_group: str | None = Field(
        default=None, max_length=90, pattern=_AZURE_NAME, description="Resource group of the workspace."
    )
    workspace: str | None = Field(default=None, max_length=64, pattern=_AZURE_NAME, description="AML workspace name.")
    registry_name: str | None = Field(
        default=None, max_length=64, pattern=_AZURE_NAME, description="AML registry name (instead of a workspace)."
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="ServiceAccount (in this namespace) the fetch runs as, annotated with "
        "`azure.workload.identity/client-id` and federated with that identity. Unset: no workload identity "
        "(the node's managed identity, if any).",
    )
    client_id: str | None = Field(
        default=None,
        pattern=_GUID,
        description="Client id of the Azure identity to use, overriding the ServiceAccount's annotation "
        "(set as AZURE_CLIENT_ID on the fetch container).",
    )

    @model_validator(mode="after")
    def _workspace_xor_registry(self) -> AzureMLRegistry:
        workspace = (self.subscription_id, self.resource_group, self.workspace)
        if self.registry_name is not None and any(v is not None for v in workspace):
            raise ValueError("an azureml registry is a workspace or an AML registry: drop registryName or the "
                             "subscriptionId/resourceGroup/workspace fields")
        if self.registry_name is None and not all(v is not None for v in workspace):
            raise ValueError("an azureml registry needs subscriptionId, resourceGroup and workspace, or registryName")
        return self

    @property
    def uri(self) -> str:
        """The `azureml://` registry URI `scoring fetch` and the resolver open."""
        from scoring_runtime.registry.azureml_uri import AzureMLLocation

        return AzureMLLocation(
            subscription_id=self.subscription_id,
            resource_group=self.resource_group,
            workspace=self.workspace,
            registry_name=self.registry_name,
        ).uri


#: The registry a model comes from: a tagged union on `type`.
RegistrySpec = Annotated[LocalRegistry | AzureMLRegistry, Field(discriminator="type")]


class ModelRef(_Model):
    """Which model to serve: a registry, a model name, and a pinned version or a tracked label."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "has(self.version) != has(self.label)",
                "set exactly one of spec.model.version (pin a version) or spec.model.label "
                "(track a label such as latest)",
            )
        )
    )

    registry: RegistrySpec = Field(description="Where the model versions live.")
    name: str = Field(max_length=63, pattern=_MODEL_NAME, description="Registered model name.")
    version: int | None = Field(
        default=None, ge=1, description="Pinned model version. Exactly one of `version` or `label`."
    )
    label: str | None = Field(
        default=None,
        max_length=63,
        pattern=_LABEL,
        description="Tracked label (e.g. `latest`, `prod`): when it moves, the operator rolls out the new version.",
    )
    poll_interval: int = Field(
        default=60,
        ge=1,
        le=86400,
        description="Seconds between re-resolving the label and re-checking the children (drift repair).",
    )

    @model_validator(mode="after")
    def _version_xor_label(self) -> ModelRef:
        if (self.version is None) == (self.label is None):
            raise ValueError(
                "set exactly one of spec.model.version (pin a version) or spec.model.label "
                "(track a label such as latest)"
            )
        return self


# ----------------------------------------------------------------------------------- spec.runtime


#: The runtime's default SCORING_MAX_QUEUE_ROWS; a batch must fit in the queue.
RUNTIME_DEFAULT_QUEUE_ROWS = 1024
_QUEUE_MESSAGE = (
    f"batching.maxQueueRows must be at least batching.maxBatchSize (the runtime's default queue holds "
    f"{RUNTIME_DEFAULT_QUEUE_ROWS} rows)"
)


class Batching(_Model):
    """Dynamic batching in the runtime: rows from concurrent requests are scored together."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!has(self.maxBatchSize) || (has(self.maxQueueRows) ? self.maxQueueRows >= self.maxBatchSize"
                f" : self.maxBatchSize <= {RUNTIME_DEFAULT_QUEUE_ROWS})",
                _QUEUE_MESSAGE,
            )
        )
    )

    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Most rows scored in one batch (SCORING_MAX_BATCH_SIZE); 1 turns batching off. Unset: the "
        "model flavour's measured default (FAQ matcher: 32; image classifiers: 32 on a GPU, off on a CPU; "
        "others: off), see docs/benchmarks.md.",
    )
    max_batch_delay_ms: int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Longest wait for a batch to fill, in milliseconds (SCORING_MAX_BATCH_DELAY_MS). Unset: the "
        "flavour's default (FAQ matcher 2, image classifiers on a GPU 5, else 2).",
    )
    max_queue_rows: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description=f"Rows queued before requests are refused with 503 (SCORING_MAX_QUEUE_ROWS; default "
        f"{RUNTIME_DEFAULT_QUEUE_ROWS}).",
    )

    @model_validator(mode="after")
    def _fits_queue(self) -> Batching:
        queue = RUNTIME_DEFAULT_QUEUE_ROWS if self.max_queue_rows is None else self.max_queue_rows
        if self.max_batch_size is not None and self.max_batch_size > queue:
            raise ValueError(_QUEUE_MESSAGE)
        return self


class SecretKeySelector(_Model):
    """A key of a Secret in this namespace."""

    name: str = Field(max_length=253, pattern=_DNS_SUBDOMAIN, description="Secret name.")
    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret.")
    optional: bool | None = Field(default=None, description="Start even when the Secret or key is missing.")


class ConfigMapKeySelector(_Model):
    """A key of a ConfigMap in this namespace."""

    name: str = Field(max_length=253, pattern=_DNS_SUBDOMAIN, description="ConfigMap name.")
    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the ConfigMap.")
    optional: bool | None = Field(default=None, description="Start even when the ConfigMap or key is missing.")


class FieldRef(_Model):
    """A field of the pod, e.g. `metadata.name` or `status.podIP`."""

    field_path: str = Field(max_length=256, description="Path of the pod field.")


class EnvVarSource(_Model):
    """Where an env var's value comes from (exactly one source)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0)"
                " + (has(self.fieldRef) ? 1 : 0) == 1",
                "valueFrom needs exactly one of secretKeyRef, configMapKeyRef or fieldRef",
            )
        )
    )

    secret_key_ref: SecretKeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: ConfigMapKeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(default=None, description="A field of the pod.")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        n = sum(x is not None for x in (self.secret_key_ref, self.config_map_key_ref, self.field_ref))
        if n != 1:
            raise ValueError("valueFrom needs exactly one of secretKeyRef, configMapKeyRef or fieldRef")
        return self


class EnvVar(_Model):
    """An extra environment variable for the runtime container."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both"),
            {
                "rule": "!(self.name in " + repr(list(MANAGED_ENV)).replace("'", '"') + ")",
                "messageExpression": "'env var ' + self.name + ' is set by the operator: use the typed fields of "
                "spec.runtime (workers, threads, batching, device...) or spec.auth instead'",
            },
        )
    )

    name: str = Field(max_length=256, pattern=_ENV_NAME, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(default=None, description="Value from a Secret, ConfigMap or pod field.")

    @model_validator(mode="after")
    def _check(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env var {self.name}: set value or valueFrom, not both")
        if self.name in MANAGED_ENV:
            raise ValueError(
                f"env var {self.name} is set by the operator: use the typed fields of spec.runtime "
                "(workers, threads, batching, device...) or spec.auth instead"
            )
        return self


class RuntimeSpec(_Model):
    """The scoring container (`scoring serve`) and its init container (`scoring fetch`)."""

    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=_IMAGE,
        description="Runtime image. Default: the operator's CPU image, or its CUDA image when spec.gpu.count > 0 "
        "or framework is torch.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy (Kubernetes default when unset)."
    )
    image_pull_secrets: list[Annotated[str, Field(max_length=253, pattern=_DNS_SUBDOMAIN)]] | None = Field(
        default=None, max_length=16, description="Names of docker-registry Secrets for pulling the image."
    )
    framework: Literal["sklearn", "torch"] | None = Field(
        default=None,
        description="Framework hint: `torch` picks the CUDA/torch runtime image by default. The model's own "
        "model.json decides how it is loaded.",
    )
    workers: int | None = Field(
        default=None, ge=1, le=64, description="Server processes, each with its own model copy (SCORING_WORKERS)."
    )
    threads: int | None = Field(
        default=None, ge=1, le=256, description="Threads per worker for parsing and model calls (SCORING_THREADS)."
    )
    batching: Batching | None = Field(default=None, description="Dynamic batching settings.")
    device: str | None = Field(
        default=None,
        max_length=16,
        pattern=r"^(auto|cpu|cuda|cuda:[0-9]+|mps)$",
        description="PyTorch device: auto (CUDA when present), cpu, cuda or cuda:N (SCORING_DEVICE).",
    )
    half_precision: bool | None = Field(
        default=None, description="PyTorch fp16 inference on a GPU (SCORING_HALF_PRECISION)."
    )
    torch_threads: int | None = Field(
        default=None, ge=0, le=1024, description="PyTorch intra-op threads per worker; 0: CPUs / workers "
        "(SCORING_TORCH_THREADS)."
    )
    allow_pickle: bool | None = Field(
        default=None,
        description="Allow pickle/joblib models (SCORING_ALLOW_PICKLE). Loading a pickle runs code from the file: "
        "only for models from a registry you trust.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] | None = Field(
        default=None, description="Runtime log level (SCORING_LOG_LEVEL)."
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Extra environment variables (names must be unique; SCORING_* settings above are managed).",
    )
    startup_timeout_seconds: int = Field(
        default=600,
        ge=10,
        le=7200,
        description="How long the model may take to load and become ready (startupProbe on /v2/health/ready) "
        "before the container is restarted.",
    )

    @field_validator("env")
    @classmethod
    def _unique_env(cls, v: list[EnvVar] | None) -> list[EnvVar] | None:
        names = [e.name for e in v or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate env var names: {', '.join(dupes)}")
        return v


# ------------------------------------------------------------------------ scaling, resources, GPU


class Autoscaling(_Model):
    """A HorizontalPodAutoscaler (autoscaling/v2) between minReplicas and maxReplicas."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            ),
            _cel(
                "has(self.targetCPUUtilizationPercentage) || has(self.targetInFlightRequests)",
                "autoscaling needs a target: set targetCPUUtilizationPercentage and/or targetInFlightRequests",
            ),
        )
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    target_cpu_utilization_percentage: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        alias="targetCPUUtilizationPercentage",
        description="Average CPU use, as a percentage of resources.requests.cpu (which must then be set).",
    )
    target_in_flight_requests: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description=f"Average in-flight requests per pod (Pods metric `{IN_FLIGHT_METRIC}`). Needs a custom "
        "metrics adapter such as prometheus-adapter exposing the runtime's gauge.",
    )

    @model_validator(mode="after")
    def _check(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                # The CEL rule's sentence (test_operator_spec_agreement.py), plus the values.
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas "
                f"({self.min_replicas} > {self.max_replicas})"
            )
        if self.target_cpu_utilization_percentage is None and self.target_in_flight_requests is None:
            raise ValueError(
                "autoscaling needs a target: set targetCPUUtilizationPercentage and/or targetInFlightRequests"
            )
        return self


_NEGATIVE_MESSAGE = "resources.requests and resources.limits must not be negative"
_OVER_LIMIT_MESSAGE = "resources.requests must not exceed resources.limits of the same resource"


def _cel_not_negative(field: str) -> str:
    """CEL: every quantity of the `field` map is >= 0 (quantity() takes a string; ints are converted)."""
    return f"(!has(self.{field}) || self.{field}.all(k, !quantity(string(self.{field}[k])).isLessThan(quantity('0'))))"


class Resources(_Model):
    """Compute resources of the runtime container (GPUs go in spec.gpu)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                f"{_cel_not_negative('requests')} && {_cel_not_negative('limits')}",
                _NEGATIVE_MESSAGE,
            ),
            _cel(
                "!has(self.requests) || !has(self.limits) || self.limits.all(k, !(k in self.requests) || "
                "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
                _OVER_LIMIT_MESSAGE,
            ),
        )
    )

    requests: dict[Annotated[str, Field(pattern=_QUALIFIED_NAME)], Quantity] | None = Field(
        default=None, max_length=_RESOURCES_MAX,
        description="Requested resources, e.g. {cpu: 500m, memory: 1Gi}. Quantities are strings or integers: "
        "write a fraction as a string (\"0.5\" or 500m).",
    )
    limits: dict[Annotated[str, Field(pattern=_QUALIFIED_NAME)], Quantity] | None = Field(
        default=None, max_length=_RESOURCES_MAX,
        description="Resource limits, e.g. {memory: 2Gi}; each at least its request.",
    )

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _no_floats(cls, v: Any) -> Any:
        for key, q in (v or {}).items() if isinstance(v, dict) else ():
            if isinstance(q, float) and not q.is_integer():
                raise ValueError(f"{key}: write the fractional quantity {q} as a string, e.g. \"{q}\" or "
                                 f"\"{round(q * 1000)}m\" (a custom resource cannot hold a float quantity)")
        return v

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, v: dict[str, int | str] | None) -> dict[str, int | str] | None:
        for key, q in (v or {}).items():
            if isinstance(q, str) and (len(q) > _QUANTITY_MAX_LENGTH or not re.match(_QUANTITY, q)):
                raise ValueError(f"{key}: {q!r} is not a Kubernetes quantity (examples: 500m, 2, 1Gi)")
            if quantity_value(q) < 0:
                raise ValueError(f"{_NEGATIVE_MESSAGE} ({key}: {q})")
        return v

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for key, limit in (self.limits or {}).items():
            request = (self.requests or {}).get(key)
            if request is not None and quantity_value(request) > quantity_value(limit):
                raise ValueError(f"{_OVER_LIMIT_MESSAGE} ({key}: request {request} > limit {limit})")
        return self


_EXISTS_VALUE_MESSAGE = "a toleration with operator Exists must not set value"
_SECONDS_MESSAGE = "tolerationSeconds only applies to effect NoExecute"
_EMPTY_KEY_MESSAGE = "a toleration without key matches every taint and needs operator Exists"


class Toleration(_Model):
    """A pod toleration (see the Kubernetes Toleration type)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                 _EXISTS_VALUE_MESSAGE),
            _cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                 _SECONDS_MESSAGE),
            _cel("(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                 _EMPTY_KEY_MESSAGE),
        )
    )

    key: str | None = Field(default=None, max_length=317, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default).")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty matches all effects."
    )
    toleration_seconds: int | None = Field(default=None, description="How long NoExecute is tolerated.")

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        # The apiserver's own Pod rules: a Deployment breaking them would be refused after admission.
        if self.operator == "Exists" and self.value:
            raise ValueError(f"{_EXISTS_VALUE_MESSAGE} (got value {self.value!r})")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(f"{_SECONDS_MESSAGE} (got effect {self.effect or 'unset'})")
        if not self.key and self.operator != "Exists":
            raise ValueError(_EMPTY_KEY_MESSAGE)
        return self


class GpuSpec(_Model):
    """GPUs per replica, and where such pods may be scheduled."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.count > 0 || (!has(self.nodeSelector) && !has(self.tolerations))",
                "gpu.nodeSelector and gpu.tolerations only apply when gpu.count > 0",
            )
        )
    )

    count: int = Field(default=0, ge=0, le=16, description="GPUs per replica (0: CPU only).")
    resource_name: str = Field(
        default=DEFAULT_GPU_RESOURCE,
        max_length=253,
        pattern=_QUALIFIED_NAME,
        description="Extended resource to request, e.g. nvidia.com/gpu or a MIG/time-sliced name such as "
        "nvidia.com/mig-1g.10gb.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels GPU pods must match, e.g. {nvidia.com/gpu.product: NVIDIA-A100}."
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=16,
        description="Tolerations for GPU pods. Default: tolerate the `nvidia.com/gpu` NoSchedule taint.",
    )

    @model_validator(mode="after")
    def _only_with_gpus(self) -> GpuSpec:
        if self.count == 0 and (self.node_selector is not None or self.tolerations is not None):
            raise ValueError("gpu.nodeSelector and gpu.tolerations only apply when gpu.count > 0")
        return self


class AuthSpec(_Model):
    """Request authentication of the scoring endpoint."""

    api_key_secret: SecretKeySelector | None = Field(
        default=None,
        description="Secret key holding the API key; mounted as a file (SCORING_API_KEY_FILE). Unset: no auth.",
    )


class ServiceSpec(_Model):
    """The Service in front of the scoring pods."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(default="ClusterIP", description="Service type.")
    port: int = Field(default=80, ge=1, le=65535, description="Service port (the pods listen on 8080).")
    annotations: dict[str, str] | None = Field(
        default=None, description="Extra Service annotations (e.g. for an internal load balancer)."
    )


# ---------------------------------------------------------------------------------- spec.exposure

#: RFC 1123 host names, optionally with one leading wildcard label (the rule of Ingress hosts and of
#: Gateway API `Hostname`), no trailing dot; the last label starts with a letter, so no IP address
#: passes (both APIs refuse those, the Gateway API's own pattern does not catch them).
_HOSTNAME = r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z]([-a-z0-9]*[a-z0-9])?$"
#: An absolute URL path prefix: "/" or "/"-separated segments of unreserved characters, none
#: starting with "." (so no "." or ".." segments, no "//", no percent-escapes).
_URL_PATH = r"^/$|^(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+/?$"
_EXPOSURE_MESSAGE = "set spec.exposure.ingress or spec.exposure.httpRoute, not both"


class IngressSpec(_Model):
    """An Ingress (networking.k8s.io/v1) in front of the model's Service."""

    class_name: str | None = Field(
        default=None, max_length=253, pattern=_DNS_SUBDOMAIN,
        description="IngressClass to use (ingressClassName). Unset: the cluster's default class.",
    )
    host: str = Field(
        max_length=253, pattern=_HOSTNAME,
        description="Host name clients use, e.g. faq.example.com (a leading `*.` wildcard is allowed; the status "
        "then shows no URL).",
    )
    path: str = Field(
        default="/", max_length=1024, pattern=_URL_PATH,
        description="Path prefix routed to the model (pathType Prefix). Anything but `/` needs the controller's "
        "rewrite annotation (e.g. nginx.ingress.kubernetes.io/rewrite-target) to reach the runtime's own paths.",
    )
    tls_secret_name: str | None = Field(
        default=None, max_length=253, pattern=_DNS_SUBDOMAIN,
        description="kubernetes.io/tls Secret (in this namespace) with the certificate for `host`: the Ingress "
        "terminates HTTPS. With cert-manager, name the Secret it should create and add its annotation.",
    )
    annotations: dict[str, str] | None = Field(
        default=None, max_length=64,
        description="Annotations of the Ingress, passed through as they are (e.g. cert-manager.io/cluster-issuer, "
        "nginx.ingress.kubernetes.io/proxy-body-size).",
    )


class ParentRef(_Model):
    """A Gateway the HTTPRoute attaches to."""

    name: str = Field(max_length=253, pattern=_DNS_SUBDOMAIN, description="Gateway name.")
    namespace: str | None = Field(
        default=None, max_length=63, pattern=_DNS_LABEL,
        description="Gateway namespace. Unset: this namespace (the Gateway's allowedRoutes must admit it).",
    )
    section_name: str | None = Field(
        default=None, max_length=253, pattern=_DNS_SUBDOMAIN,
        description="Listener of the Gateway to attach to (e.g. `https`). Unset: every listener that admits it.",
    )


class HttpRouteSpec(_Model):
    """A Gateway API HTTPRoute (gateway.networking.k8s.io/v1) in front of the model's Service."""

    parent_refs: list[ParentRef] = Field(
        min_length=1, max_length=32, description="Gateways to attach to (the Gateway terminates TLS)."
    )
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253, pattern=_HOSTNAME)]] | None = Field(
        default=None, max_length=16,
        description="Host names matched (a leading `*.` wildcard is allowed). Unset: the Gateway listener's.",
    )
    path: str = Field(
        default="/", max_length=1024, pattern=_URL_PATH,
        description="Path prefix routed to the model; rewritten to `/` before it reaches the runtime.",
    )
    scheme: Literal["https", "http"] = Field(
        default="https",
        description="How clients reach the Gateway's listener: only used to write status.url.",
    )


class ExposureSpec(_Model):
    """How the model is reached from outside the cluster: an Ingress, or a Gateway API HTTPRoute."""

    model_config = ConfigDict(
        json_schema_extra=_validations(_cel("!(has(self.ingress) && has(self.httpRoute))", _EXPOSURE_MESSAGE))
    )

    ingress: IngressSpec | None = Field(default=None, description="Expose through an Ingress.")
    http_route: HttpRouteSpec | None = Field(
        default=None, description="Expose through a Gateway API HTTPRoute (needs the Gateway API CRDs)."
    )

    @model_validator(mode="after")
    def _one_way(self) -> ExposureSpec:
        if self.ingress is not None and self.http_route is not None:
            raise ValueError(_EXPOSURE_MESSAGE)
        return self


# ----------------------------------------------------------------------------------- spec.rollout

_STEPS_MESSAGE = "rollout.steps weights must increase strictly from step to step (e.g. 10, 50, 100)"
_DEFAULT_STEPS = ((10, 60), (50, 60), (100, 0))


class RolloutStep(_Model):
    """One canary step: the share of traffic the new version gets, and how long it keeps it."""

    weight: int = Field(ge=1, le=100, description="Percent of traffic (of pods, without a gateway) for the new "
                        "version during this step; 100 promotes it.")
    pause_seconds: int = Field(
        default=60, ge=0, le=86400,
        description="Seconds to stay at this step before the next one, when the analysis passes meanwhile.",
    )


class AnalysisSpec(_Model):
    """How the new version is judged against the stable one, from the runtime's own Prometheus metrics."""

    interval_seconds: int = Field(
        default=30, ge=1, le=3600,
        description="Seconds between two reads of the pods' /metrics (each read judges the requests since the "
        "last verdict).",
    )
    min_requests: int = Field(
        default=50, ge=0, le=1_000_000,
        description="Scoring requests the new version must have answered before a verdict (fewer: inconclusive, "
        "keep waiting; a step never advances without a passed analysis).",
    )
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1,
        description="Highest share of the new version's scoring requests answered with a 5xx (0.01 = 1%).",
    )
    max_p99_latency_ratio: float | None = Field(
        default=1.5, ge=1, le=1000,
        description="Highest p99 latency of the new version divided by the stable version's over the same "
        "interval (unset: not checked).",
    )
    max_p99_latency_ms: float | None = Field(
        default=None, ge=1, le=3_600_000,
        description="Highest p99 latency of the new version in milliseconds (unset: not checked).",
    )
    failure_limit: int = Field(
        default=1, ge=1, le=100, description="Failed analyses that roll the new version back.",
    )


class ShadowSpec(_Model):
    """Shadow traffic: the stable pods copy a share of scoring requests to the new version and discard its answers."""

    percent: float = Field(default=100, ge=0.01, le=100,
                           description="Percent of scoring requests copied to the shadow.")
    replicas: int = Field(default=1, ge=1, le=100, description="Pods of the shadow Deployment.")
    duration_seconds: int = Field(
        default=300, ge=0, le=604800,
        description="Seconds the shadow is judged before it is promoted (when its analyses pass).",
    )
    resources: Resources | None = Field(
        default=None,
        description="CPU/memory requests and limits of the shadow's runtime container, instead of "
        "spec.resources (unset: the same as the stable pods). A smaller CPU request keeps the shadow "
        "from taking CPU the stable pods need where they share nodes (the kernel shares CPU in "
        "proportion to requests); a shadow with less CPU answers slower, so judge it with "
        "analysis.maxP99LatencyRatio set accordingly or with maxErrorRate only.",
    )


class RolloutSpec(_Model):
    """How a new model version (a label move or a spec change) reaches the traffic."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel("!has(self.steps) || (has(self.strategy) && self.strategy == 'Canary')",
                 "rollout.steps only apply to strategy Canary"),
            _cel("!has(self.shadow) || (has(self.strategy) && self.strategy == 'Shadow')",
                 "rollout.shadow only applies to strategy Shadow"),
            _cel("!has(self.steps) || size(self.steps) > 0", "rollout.steps needs at least one step"),
            _cel("!has(self.steps) || (self.steps.map(s, s.weight).isSorted() && "
                 "self.steps.all(s, self.steps.filter(t, t.weight == s.weight).size() == 1))", _STEPS_MESSAGE),
            _cel("!has(self.promoteVersion) || !has(self.abortVersion) || self.promoteVersion != self.abortVersion",
                 "rollout.promoteVersion and rollout.abortVersion name the same version: keep one"),
        )
    )

    strategy: Literal["RollingUpdate", "Canary", "Shadow"] = Field(
        default="RollingUpdate",
        description="RollingUpdate: replace the pods (default). Canary: a second Deployment with the new version "
        "gets a growing share of traffic (steps), judged by the analysis. Shadow: the new version gets copies "
        "of the traffic, its answers discarded, judged the same way.",
    )
    steps: list[RolloutStep] | None = Field(
        default=None, max_length=20,
        description="Canary steps, weights increasing. Default: 10% for 60 s, 50% for 60 s, then 100% (promoted). "
        "After the last step's pause the new version is promoted.",
    )
    analysis: AnalysisSpec | None = Field(default=None, description="Analysis thresholds (defaults apply when unset).")
    shadow: ShadowSpec | None = Field(default=None, description="Shadow traffic settings (strategy Shadow).")
    promote_version: int | None = Field(
        default=None, ge=1,
        description="Promote this model version now, skipping the remaining steps and the analysis. Keyed by "
        "version: harmless when left in Git after that version became stable.",
    )
    abort_version: int | None = Field(
        default=None, ge=1,
        description="Roll this model version back now (the stable version keeps serving). Keyed by version, like "
        "promoteVersion.",
    )

    @model_validator(mode="after")
    def _check(self) -> RolloutSpec:
        if self.steps is not None and not self.steps:
            raise ValueError("rollout.steps needs at least one step")
        if self.steps is not None and self.strategy != "Canary":
            raise ValueError("rollout.steps only apply to strategy Canary")
        if self.shadow is not None and self.strategy != "Shadow":
            raise ValueError("rollout.shadow only applies to strategy Shadow")
        weights = [s.weight for s in self.steps or ()]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"{_STEPS_MESSAGE}; got {weights}")
        if self.promote_version is not None and self.promote_version == self.abort_version:
            raise ValueError("rollout.promoteVersion and rollout.abortVersion name the same version: keep one")
        return self

    @property
    def effective_steps(self) -> list[RolloutStep]:
        return self.steps or [RolloutStep(weight=w, pause_seconds=p) for w, p in _DEFAULT_STEPS]

    @property
    def effective_analysis(self) -> AnalysisSpec:
        return self.analysis or AnalysisSpec()

    @property
    def effective_shadow(self) -> ShadowSpec:
        return self.shadow or ShadowSpec()


class TlsSpec(_Model):
    """HTTPS all the way to the pods: the runtime serves TLS itself with a certificate from a Secret."""

    secret_name: str = Field(
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="A kubernetes.io/tls Secret in this namespace (tls.crt, tls.key, optional ca.crt; e.g. "
        "written by cert-manager). Mounted at /etc/scoring/tls; the runtime serves HTTPS on its port 8080 and "
        "picks a renewed certificate up without a restart. Its names should cover NAME.NAMESPACE.svc.",
    )


# ------------------------------------------------------------------------------------------- spec


class ScoringModelSpec(_Model):
    """Desired state: which model to serve, with which runtime, at what scale."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!(has(self.replicas) && has(self.autoscaling))", "set spec.replicas or spec.autoscaling, not both"
            ),
            _cel(
                "!has(self.autoscaling) || !has(self.autoscaling.targetCPUUtilizationPercentage) || "
                "(has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)",
                "autoscaling.targetCPUUtilizationPercentage needs spec.resources.requests.cpu",
            ),
        )
    )

    model: ModelRef = Field(description="The model to serve and how its version is chosen.")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="The scoring runtime container.")
    replicas: int | None = Field(
        default=None, ge=0, le=1000, description="Fixed replica count (default 1). Not with autoscaling."
    )
    autoscaling: Autoscaling | None = Field(default=None, description="Autoscale instead of fixed replicas.")
    resources: Resources | None = Field(default=None, description="CPU/memory requests and limits.")
    gpu: GpuSpec | None = Field(default=None, description="GPUs per replica and GPU node placement.")
    auth: AuthSpec | None = Field(default=None, description="API-key authentication (default: none).")
    service: ServiceSpec = Field(default_factory=ServiceSpec, description="How the endpoint is exposed.")
    exposure: ExposureSpec | None = Field(
        default=None, description="External HTTP(S) access through an Ingress or a Gateway API HTTPRoute."
    )
    rollout: RolloutSpec | None = Field(
        default=None, description="How new model versions roll out: RollingUpdate (default), Canary or Shadow.",
    )
    tls: TlsSpec | None = Field(
        default=None, description="Serve HTTPS from the pods themselves (default: plain HTTP inside the cluster)."
    )

    @model_validator(mode="after")
    def _check(self) -> ScoringModelSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set spec.replicas or spec.autoscaling, not both")
        a = self.autoscaling
        if a is not None and a.target_cpu_utilization_percentage is not None:
            requests = (self.resources.requests if self.resources else None) or {}
            if "cpu" not in requests:
                raise ValueError("autoscaling.targetCPUUtilizationPercentage needs spec.resources.requests.cpu")
        return self

    @property
    def strategy(self) -> str:
        """RollingUpdate, Canary or Shadow."""
        return self.rollout.strategy if self.rollout is not None else "RollingUpdate"

    @property
    def gpu_count(self) -> int:
        return self.gpu.count if self.gpu else 0

    @property
    def min_replicas(self) -> int:
        """Replicas guaranteed at steady state (drives the PodDisruptionBudget)."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


# ----------------------------------------------------------------------------------------- status

Phase = Literal["Pending", "Resolving", "Deploying", "Ready", "Degraded", "Failed"]
PHASES: tuple[str, ...] = ("Pending", "Resolving", "Deploying", "Ready", "Degraded", "Failed")
CONDITION_TYPES = ("ModelResolved", "Deployed", "Ready", "Rollout")


class Condition(_Model):
    """A standard Kubernetes condition."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=316, description="ModelResolved, Deployed or Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason, e.g. ModelNotFound or RolloutComplete.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(default=None, ge=0, description="Spec generation this reflects.")


class ModelStatus(_Model):
    """The model version being served."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(description="Model name.")
    version: int = Field(description="Resolved, pinned version deployed.")
    resolved_from: str = Field(description="`version` (pinned) or `label:<name>` (tracked).")
    resolved_at: datetime = Field(description="When this version was first resolved.")


class FailureInfo(_Model):
    """The most recent failure (kept after recovery, for troubleshooting)."""

    model_config = ConfigDict(extra="ignore")

    reason: str = Field(description="Machine-readable reason.")
    message: str = Field(description="What went wrong and how to fix it.")
    time: datetime = Field(description="When it happened.")



class AnalysisNumbers(_Model):
    """What one analysis measured for one version, over the requests since the previous verdict."""

    model_config = ConfigDict(extra="ignore")

    requests: int = Field(description="Scoring requests answered.")
    errors: int = Field(description="Of those, answered with a 5xx.")
    error_rate: float | None = Field(default=None, description="errors / requests.")
    p99_ms: float | None = Field(default=None, description="p99 latency (histogram estimate), milliseconds.")
    pods: int = Field(description="Pods read.")


class AnalysisResult(_Model):
    """The last analysis of the new version against the stable one."""

    model_config = ConfigDict(extra="ignore")

    time: datetime = Field(description="When it was taken.")
    verdict: Literal["Passed", "Failed", "Inconclusive"] = Field(description="Passed, Failed or Inconclusive.")
    message: str = Field(default="", description="Why.")
    candidate: AnalysisNumbers | None = Field(default=None, description="The new version (canary or shadow).")
    stable: AnalysisNumbers | None = Field(default=None, description="The stable version.")


class RolloutStatus(_Model):
    """A canary or shadow rollout: where it is, and why it promoted or rolled back."""

    model_config = ConfigDict(extra="ignore")

    strategy: str = Field(description="Canary or Shadow.")
    phase: Literal["Progressing", "Promoting", "Promoted", "RolledBack"] = Field(
        description="Progressing, Promoting (the stable Deployment takes the new version), Promoted or RolledBack.")
    stable_version: int = Field(description="The version the stable Deployment serves.")
    candidate_version: int = Field(description="The version under test (kept after promotion or rollback).")
    step: int | None = Field(default=None, description="1-based canary step.")
    weight: float | None = Field(default=None, description="Target percent of traffic of this step (shadow: "
                                 "percent copied).")
    effective_weight: float | None = Field(
        default=None, description="Percent of serving pods that run the new version (the split without a gateway).")
    candidate_replicas: int | None = Field(default=None, description="Pods of the canary/shadow Deployment.")
    step_started_at: datetime | None = Field(default=None, description="When this step began.")
    passed_analyses: int = Field(default=0, description="Analyses passed in this step.")
    failed_analyses: int = Field(default=0, description="Analyses failed in this rollout.")
    last_analysis: AnalysisResult | None = Field(default=None, description="The last analysis.")
    reason: str | None = Field(default=None, description="Why it is where it is (e.g. AnalysisFailed, Aborted).")
    message: str | None = Field(default=None, description="Details.")
    generation: int | None = Field(default=None, description="metadata.generation when it was promoted or rolled "
                                   "back (a rolled-back version is tried again after any spec change).")


class ScoringModelStatus(_Model):
    """Observed state, written by the operator."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, description="metadata.generation last reconciled.")
    phase: Phase | None = Field(default=None, description="Pending, Resolving, Deploying, Ready, Degraded or Failed.")
    model: ModelStatus | None = Field(default=None, description="The resolved model version.")
    endpoint: str | None = Field(default=None, description="In-cluster URL of the scoring Service.")
    replicas: int | None = Field(default=None, description="Pods of the Deployment.")
    ready_replicas: int | None = Field(default=None, description="Pods ready to serve.")
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="ModelResolved, Deployed and Ready.",
    )
    last_failure: FailureInfo | None = Field(default=None, description="The most recent failure.")
    url: str | None = Field(
        default=None, description="External URL of the model (spec.exposure), once its Ingress or HTTPRoute exists."
    )
    rollout: RolloutStatus | None = Field(default=None, description="Canary or shadow rollout state.")


class ScoringModelResource(_Model):
    """A model served as a real-time scoring endpoint (Deployment, Service; optional HPA, PDB, Ingress/HTTPRoute)."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra=_validations(
            _cel(
                "size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must be a DNS label (lowercase letters, digits and '-', starting with a "
                "letter, at most 63 characters): it names the model's Service",
            )
        ),
    )

    api_version: str | None = Field(default=None, description="scoring.dev/v1alpha1")
    kind: str | None = Field(default=None, description="ScoringModel")
    metadata: dict[str, Any] | None = Field(default=None, description="Standard object metadata.")
    spec: ScoringModelSpec = Field(description="Desired state.")
    status: ScoringModelStatus | None = Field(default=None, description="Observed state.")


def parse_spec(spec: Any) -> ScoringModelSpec:
    """Validate a `spec` mapping as read from Kubernetes (raises pydantic.ValidationError)."""
    return ScoringModelSpec.model_validate(dict(spec or {}))


def format_validation_error(exc: Exception) -> str:
    """One line per problem, `spec.path: message`, for status messages and CLI output."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        for p in ("spec", *err["loc"]):
            if parts and parts[-1] == "registry" and p in REGISTRY_TYPES:
                continue  # the union's tag, not a field the user wrote
            parts.append(str(p))
        msg = err["msg"].removeprefix("Value error, ")
        pattern = (err.get("ctx") or {}).get("pattern")
        if err["type"] == "string_pattern_mismatch" and pattern in _PATTERN_HELP:
            msg = f"{err['input']!r} {_PATTERN_HELP[pattern]}"
        lines.append(f"{'.'.join(parts)}: {msg}")
    return "; ".join(lines)


#: Registry `type` tags of the `spec.model.registry` union.
REGISTRY_TYPES = ("local", "azureml")
_PATTERN_HELP = {
    _DNS_SUBDOMAIN: "is not a Kubernetes name: use lowercase letters, digits, '-' and '.'",
    _MODEL_NAME: "is not a model name: use 1-63 lowercase letters, digits, '.', '_' or '-'",
    _LABEL: "is not a label: use 1-63 letters, digits, '.', '_' or '-'",
    _REGISTRY_PATH: "is not a relative path inside the claim (like models or team/models)",
    _QUALIFIED_NAME: "is not a resource name like cpu, memory or nvidia.com/gpu",
    _ENV_NAME: "is not an environment variable name",
    _HOSTNAME: "is not a host name: use lowercase letters, digits, '-' and '.', optionally starting with '*.', "
    "with a last label starting with a letter (no IP addresses)",
    _URL_PATH: "is not a URL path: start with '/', use letters, digits, '-', '_', '~' and '.', no '..' or '//'",
    _DNS_LABEL: "is not a DNS label: use lowercase letters, digits and '-'",
}


def _regex_sanity() -> None:  # pragma: no cover - import-time guard against typos in the patterns above
    for pattern in (_HOSTNAME, _URL_PATH, _DNS_LABEL, _DNS_SUBDOMAIN, _MODEL_NAME, _LABEL, _QUALIFIED_NAME,
                    _REGISTRY_PATH, _QUANTITY):
        re.compile(pattern)


_regex_sanity()
