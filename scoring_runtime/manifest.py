"""The `model.json` manifest that travels with every registered model version.

One schema for every registry backend (local files, Azure ML): the runtime only ever reads this
file, so what a registry stores and what a scoring pod loads cannot drift apart.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_FILE = "model.json"
SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_HASH_CHUNK = 1 << 20
#: label names: what a ScoringModel's spec.model.label accepts (and a Kubernetes label value)
_LABEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")


def validate_model_name(name: str) -> str:
    """Model names double as directory names and Kubernetes label values: keep them to that alphabet."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def validate_label_name(label: str) -> str:
    """Label names are short ASCII tokens: they appear in labels.json, CLI output and ScoringModel specs."""
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        shown = label if isinstance(label, str) and len(label) <= 80 else f"{str(label)[:80]}..."
        raise ValueError(f"invalid label {shown!r}: use 1-63 ASCII letters, digits, '.', '_' or '-'")
    return label


class FileEntry(BaseModel):
    """One artifact file, relative to the model directory, with its checksum."""

    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = Path(v)
        if p.is_absolute() or ".." in p.parts or v in ("", "."):
            raise ValueError(f"file path {v!r} must be relative and stay inside the model directory")
        return p.as_posix()


class ModelManifest(BaseModel):
    """What a model version is: identity, how to load it (framework/flavour) and what it contains."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    version: int = Field(ge=1)
    framework: str = Field(description="sklearn | torch")
    task: str = Field(description="e.g. faq-matching, image-classification, tabular")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    description: str = ""
    files: list[FileEntry] = Field(default_factory=list)
    flavour: dict[str, Any] = Field(
        default_factory=dict, description="flavour-specific settings (format, labels, batching ...)"
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    source: str = Field(default="", description="where this version came from (registry URI)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_model_name(v)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


class ModelSource(BaseModel):
    """The `model.json` a user puts in a directory before registering it (no name/version/files yet)."""

    model_config = ConfigDict(extra="forbid")

    framework: str
    task: str
    description: str = ""
    flavour: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def artifact_files(model_dir: Path) -> list[Path]:
    """Every regular file under `model_dir` except the manifest, in a stable order."""
    out = []
    for p in sorted(model_dir.rglob("*")):
        if p.is_symlink():
            raise ValueError(f"{p}: symbolic links are not allowed in a model directory")
        if p.is_file() and p.relative_to(model_dir).as_posix() != MANIFEST_FILE:
            out.append(p)
    return out


def load_manifest(model_dir: Path) -> ModelManifest:
    path = model_dir / MANIFEST_FILE
    try:
        return ModelManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {model_dir} a fetched model directory?") from None
