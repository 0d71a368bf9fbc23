"""`azureml://` URIs: where an Azure ML model lives, and which model/version/label is meant.

Two places hold AML models, and the URI says which::

    azureml://subscriptions/<sub>/resourceGroups/<rg>/workspaces/<ws>      a workspace
    azureml://registries/<registry>                                        an AML registry

A model URI appends ``/models/<name>`` and optionally ``/versions/<n>`` or ``/labels/<label>``
(no suffix means the ``latest`` label). Parsing is kept apart from the backend so the operator can
validate a ScoringModel's reference without importing the Azure SDKs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from scoring_runtime.registry.errors import InvalidReference

SCHEME = "azureml"
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._()-]*"
_WORKSPACE_RE = re.compile(
    rf"^subscriptions/(?P<sub>{_SEGMENT})/resourcegroups/(?P<rg>{_SEGMENT})/workspaces/(?P<ws>{_SEGMENT})$",
    re.IGNORECASE,
)
_REGISTRY_RE = re.compile(rf"^registries/(?P<reg>{_SEGMENT})$", re.IGNORECASE)
_MODEL_RE = re.compile(
    rf"^(?P<loc>.+?)/models/(?P<name>{_SEGMENT})(?:/(?P<kind>versions|labels)/(?P<ref>{_SEGMENT}))?$",
    re.IGNORECASE,
)
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
_PREFIX_RE = re.compile(r"(?i)azureml://[^/]")
_UNSAFE_RE = re.compile(r"[\s\x00-\x1f\x7f?#]")

FORMS = (
    "azureml://subscriptions/<subscription>/resourceGroups/<group>/workspaces/<workspace> or "
    "azureml://registries/<registry>"
)


@dataclass(frozen=True)
class AzureMLLocation:
    """An AML workspace (subscription, resource group, workspace) or an AML registry (its name)."""

    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    registry_name: str | None = None

    def __post_init__(self) -> None:
        ws = (self.subscription_id, self.resource_group, self.workspace)
        if self.registry_name:
            if any(ws):
                raise InvalidReference("an Azure ML location is a workspace or a registry, not both")
        elif not all(ws):
            raise InvalidReference(
                "an Azure ML workspace needs subscription id, resource group and workspace name "
                f"(or give a registry name instead); use {FORMS}"
            )

    @property
    def is_registry(self) -> bool:
        return bool(self.registry_name)

    @property
    def uri(self) -> str:
        if self.registry_name:
            return f"{SCHEME}://registries/{self.registry_name}"
        return (
            f"{SCHEME}://subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/workspaces/{self.workspace}"
        )

    def model_uri(self, name: str, version: int | None = None, label: str | None = None) -> str:
        base = f"{self.uri}/models/{name}"
        if version is not None:
            return f"{base}/versions/{version}"
        if label is not None:
            return f"{base}/labels/{label}"
        return base

    def describe(self) -> str:
        """Human wording for messages: 'workspace ws (resource group rg)' or 'registry r'."""
        if self.registry_name:
            return f"Azure ML registry {self.registry_name!r}"
        return f"Azure ML workspace {self.workspace!r} (resource group {self.resource_group!r})"


@dataclass(frozen=True)
class AzureMLModelRef:
    """A parsed model URI: where, which model, and a pinned version or a label (never both)."""

    location: AzureMLLocation
    name: str
    version: int | None = None
    label: str | None = None

    @property
    def uri(self) -> str:
        return self.location.model_uri(self.name, self.version, self.label)


def _path_of(uri: str) -> str:
    # Checked on the raw text: urlparse silently drops tabs/newlines, empty '?'/'#' and a missing '//'.
    if not _PREFIX_RE.match(uri):
        raise InvalidReference(f"{uri!r} is not an azureml:// URI; use {FORMS}")
    if _UNSAFE_RE.search(uri):
        raise InvalidReference(
            f"{uri!r}: azureml:// URIs take no query string or fragment, and no whitespace or control characters"
        )
    parsed = urlparse(uri)
    # urlparse puts the first segment in netloc: azureml://registries/x -> netloc "registries".
    path = unquote(f"{parsed.netloc}{parsed.path}")
    if _UNSAFE_RE.search(path):  # %0A would otherwise slip past the regexes' `$`
        raise InvalidReference(f"{uri!r}: percent-encoded whitespace or control characters are not allowed")
    return path.strip("/")


def _location_from_path(path: str, uri: str) -> AzureMLLocation:
    if m := _WORKSPACE_RE.match(path):
        return AzureMLLocation(subscription_id=m["sub"], resource_group=m["rg"], workspace=m["ws"])
    if m := _REGISTRY_RE.match(path):
        return AzureMLLocation(registry_name=m["reg"])
    raise InvalidReference(f"{uri!r} names no Azure ML workspace or registry; use {FORMS}")


def parse_location(uri: str) -> AzureMLLocation:
    """Parse the registry part of an azureml:// URI (what `--registry` / `open_registry` take)."""
    path = _path_of(uri)
    if _MODEL_RE.match(path):
        raise InvalidReference(
            f"{uri!r} is a model URI; the registry is the part before /models/ "
            "(pass the model name and version or label separately)"
        )
    return _location_from_path(path, uri)


def parse_version(value: str, *, what: str = "version") -> int:
    """AML versions are strings; ours are positive integers. Refuse anything else, saying why."""
    if not _VERSION_RE.match(value):
        raise InvalidReference(
            f"{what} {value!r} is not a positive integer: scoring-operator pins integer model versions. "
            "Register the model in Azure ML with an integer version (the default when you omit it), "
            "or point at it with a label"
        )
    return int(value)


def parse_model_uri(uri: str) -> AzureMLModelRef:
    """Split a full model URI into (location, name, version | label); no suffix means label `latest`."""
    path = _path_of(uri)
    m = _MODEL_RE.match(path)
    if not m:
        raise InvalidReference(
            f"{uri!r} is not an Azure ML model URI; append /models/<name>[/versions/<n>|/labels/<label>] to {FORMS}"
        )
    location = _location_from_path(m["loc"], uri)
    kind = (m["kind"] or "").lower()
    if kind == "versions":
        return AzureMLModelRef(location, m["name"], version=parse_version(m["ref"]))
    return AzureMLModelRef(location, m["name"], label=m["ref"] if kind == "labels" else "latest")
