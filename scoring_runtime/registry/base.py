"""The registry interface every backend implements (local files now, Azure ML next)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from scoring_runtime.manifest import ModelManifest

#: progress(done_bytes, total_bytes, current_file) for long downloads and copies.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: int
    labels: tuple[str, ...]
    created: str
    framework: str
    task: str
    #: why this version cannot be used (e.g. an invalid model.json); listed anyway so one bad
    #: version never hides the good ones
    error: str | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """A reference pinned to one version, and how it got there (for status and logs)."""

    name: str
    version: int
    resolved_from: str  # "version" or "label:<name>"
    registry_uri: str


class ModelRegistry(abc.ABC):
    """A place model versions live. Methods raise `scoring_runtime.registry.errors` exceptions."""

    uri: str

    @abc.abstractmethod
    def list_models(self) -> list[str]: ...

    @abc.abstractmethod
    def list_versions(self, name: str) -> list[ModelVersionInfo]: ...

    @abc.abstractmethod
    def labels(self, name: str) -> dict[str, int]: ...

    @abc.abstractmethod
    def get_manifest(self, name: str, version: int) -> ModelManifest: ...

    @abc.abstractmethod
    def fetch(self, name: str, version: int, dest: Path, progress: Progress | None = None) -> ModelManifest:
        """Copy a version into `dest` (created, must be empty) and verify every checksum."""

    def labels_stamp(self, name: str) -> Hashable | None:
        """A cheap token that changes whenever `name`'s labels may have changed; None: this registry
        cannot tell without reading them (callers then poll at their own interval).

        Lets the operator see a label move within a second without re-reading every label.
        """
        return None

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ResolvedModel:
        """Pin a reference: an explicit version, or the version a label points at now."""
        if (version is None) == (label is None):
            raise ValueError("give exactly one of version or label")
        if version is not None:
            self.get_manifest(name, version)  # raises ModelNotFound if absent
            return ResolvedModel(name, version, "version", self.uri)
        assert label is not None
        from scoring_runtime.registry.errors import LabelNotFound

        labels = self.labels(name)
        if label not in labels:
            known = ", ".join(sorted(labels)) or "none"
            raise LabelNotFound(f"model {name!r} has no label {label!r} (labels: {known})")
        return ResolvedModel(name, labels[label], f"label:{label}", self.uri)
