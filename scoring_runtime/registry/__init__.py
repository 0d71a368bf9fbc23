"""Model registries: where model versions live, and how a scoring pod gets one.

`open_registry(uri)` picks the backend from the URI scheme:
- `file:///abs/root` (or a plain path): the local file registry, the embedded default;
- `azureml://...`: Azure Machine Learning (needs the `[azure]` extra).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from scoring_runtime.registry.base import ModelRegistry, ModelVersionInfo, Progress, ResolvedModel
from scoring_runtime.registry.errors import (
    AccessDenied,
    IntegrityError,
    InvalidReference,
    LabelNotFound,
    ModelNotFound,
    RegistryCorrupt,
    RegistryError,
    RegistryUnavailable,
)
from scoring_runtime.registry.local import LocalFileRegistry

__all__ = [
    "AccessDenied",
    "IntegrityError",
    "InvalidReference",
    "LabelNotFound",
    "LocalFileRegistry",
    "ModelNotFound",
    "ModelRegistry",
    "ModelVersionInfo",
    "Progress",
    "RegistryCorrupt",
    "RegistryError",
    "RegistryUnavailable",
    "ResolvedModel",
    "open_registry",
]


def open_registry(uri: str) -> ModelRegistry:
    """Open the registry a URI (or a plain local path) names."""
    if "://" not in uri:
        return LocalFileRegistry(Path(uri))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidReference(f"{uri}: file URIs must be absolute, like file:///srv/models")
        return LocalFileRegistry(Path(unquote(parsed.path)))
    if parsed.scheme == "azureml":
        try:
            from scoring_runtime.registry.azureml import AzureMLRegistry  # type: ignore[import-not-found,unused-ignore]
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise InvalidReference(
                f"{uri}: the Azure ML registry needs the [azure] extra (pip install 'scoring-operator[azure]'): {e}"
            ) from e
        return AzureMLRegistry.from_uri(uri)  # type: ignore[no-any-return,unused-ignore]
    raise InvalidReference(f"unsupported registry URI scheme {parsed.scheme!r} in {uri}: use file:// or azureml://")
