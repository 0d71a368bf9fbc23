"""Model artifacts in Azure Blob Storage: where a model version's files are, listing and hashing them.

We download with azure-storage-blob ourselves instead of `MLClient.models.download`, because:
- workspace models are read with the pod's own identity (Storage Blob Data Reader) rather than
  the datastore's account key, which the SDK would fetch into the pod (`listSecrets`);
- every byte is hashed as it is written, so the checksum covers exactly what lands on disk;
- the same HTTP pipeline options (transport, timeouts) reach storage as reach the AML API.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError
from azure.storage.blob import ContainerClient

from scoring_runtime.registry.azureml_errors import map_storage_error
from scoring_runtime.registry.base import Progress
from scoring_runtime.registry.errors import IntegrityError, InvalidReference

_DATASTORE_PATH_RE = re.compile(r"(?i)^azureml://(?:.*/)?datastores/(?P<ds>[^/]+)/paths/(?P<prefix>.+)$")
_BLOB_HOST_RE = re.compile(r"(?i)^(?P<account>[a-z0-9]{3,24})\.blob\.")
_CHUNK = 4 << 20


@dataclass(frozen=True)
class DatastorePath:
    """A workspace model's `azureml://.../datastores/<ds>/paths/<prefix>` storage path."""

    datastore: str
    prefix: str


@dataclass(frozen=True)
class ArtifactLocation:
    """A blob container and the name prefix under which one model version's files live."""

    account_url: str
    account: str
    container: str
    prefix: str
    sas_token: str | None = None  # access by registry-issued SAS instead of the pod identity

    def describe(self) -> str:
        return f"{self.account}/{self.container}/{self.prefix}"


@dataclass(frozen=True)
class RemoteFile:
    blob: str
    rel: str
    size: int
    md5: bytes | None


def parse_datastore_path(path: str) -> DatastorePath | None:
    """The datastore and prefix of an azureml:// model path, or None if it is not one."""
    m = _DATASTORE_PATH_RE.match(path or "")
    if not m:
        return None
    return DatastorePath(m["ds"], unquote(m["prefix"]).strip("/"))


def parse_blob_url(url: str, sas_token: str | None = None) -> ArtifactLocation:
    """`https://<account>.blob.<suffix>/<container>/<prefix>` as an ArtifactLocation."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    m = _BLOB_HOST_RE.match(host)
    parts = unquote(parsed.path).strip("/").split("/", 1)
    if parsed.scheme not in ("https", "http") or not m or not parts[0]:
        raise InvalidReference(
            "model storage path is neither azureml://.../datastores/<ds>/paths/<path> nor a blob URL "
            f"https://<account>.blob.core.windows.net/<container>/<path>: {parsed.scheme}://{host}{parsed.path}"
        )
    return ArtifactLocation(
        account_url=f"{parsed.scheme}://{host}" + (f":{parsed.port}" if parsed.port else ""),
        account=m["account"],
        container=parts[0],
        prefix=parts[1].strip("/") if len(parts) > 1 else "",
        sas_token=sas_token,
    )


def container_client(
    loc: ArtifactLocation, credential: TokenCredential, pipeline_options: dict[str, Any]
) -> ContainerClient:
    cred: Any = loc.sas_token if loc.sas_token else credential
    return ContainerClient(loc.account_url, loc.container, credential=cred, **pipeline_options)


def _relative(name: str, prefix: str, single: bool) -> str:
    rel = PurePosixPath(name).name if single else name[len(prefix) + 1 :] if prefix else name
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        raise IntegrityError(f"artifact blob {name!r} does not map to a path inside the model directory")
    return p.as_posix()


def list_artifacts(client: ContainerClient, loc: ArtifactLocation) -> list[RemoteFile]:
    """Every file of the model version: the blob `prefix` itself (a one-file model) or all under `prefix/`."""
    prefix = loc.prefix
    try:
        blobs = list(client.list_blobs(name_starts_with=prefix or None, include=["metadata"]))
    except AzureError as e:
        raise map_storage_error(e, loc.account, loc.describe(), sas=bool(loc.sas_token)) from e
    exact = [b for b in blobs if b.name == prefix]
    single = bool(exact) and not any(b.name.startswith(prefix + "/") for b in blobs)
    out = []
    for b in exact if single else blobs:
        if not single and prefix and not b.name.startswith(prefix + "/"):
            continue  # a sibling like <prefix>-old/..., not ours
        if b.name.endswith("/") or (b.metadata or {}).get("hdi_isfolder") == "true":
            continue  # directory markers of hierarchical-namespace accounts
        md5 = b.content_settings.content_md5 if b.content_settings else None
        out.append(RemoteFile(b.name, _relative(b.name, prefix, single), int(b.size or 0), bytes(md5) if md5 else None))
    return sorted(out, key=lambda f: f.rel)


class _Hashes:
    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)


def _stream(
    client: ContainerClient,
    loc: ArtifactLocation,
    f: RemoteFile,
    sink: Any,
    progress: Progress | None,
    done: int,
    total: int,
) -> str:
    """Stream one blob into `sink` (a binary file or None), checking size and stored MD5; sha256 hex."""
    h = _Hashes()
    try:
        downloader = client.download_blob(f.blob, max_concurrency=1)
        for chunk in downloader.chunks():
            h.update(chunk)
            if sink is not None:
                sink.write(chunk)
            if progress:
                progress(done + h.size, total, f.rel)
    except AzureError as e:
        raise map_storage_error(e, loc.account, f.blob, sas=bool(loc.sas_token)) from e
    if h.size != f.size:
        raise IntegrityError(
            f"{f.rel}: downloaded {h.size} bytes but storage lists {f.size}; the download was cut short"
        )
    if f.md5 is not None and h.md5.digest() != f.md5:
        raise IntegrityError(
            f"{f.rel}: the downloaded bytes do not match the Content-MD5 stored with the blob; "
            "the artifact is corrupt or was modified in place"
        )
    return h.sha256.hexdigest()


def download_file(
    client: ContainerClient,
    loc: ArtifactLocation,
    f: RemoteFile,
    dest: Path,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as sink:
        digest = _stream(client, loc, f, sink, progress, done, total)
        sink.flush()
    return digest


def hash_remote(client: ContainerClient, loc: ArtifactLocation, f: RemoteFile) -> str:
    """sha256 of a blob without keeping it (for manifests of models registered without model.json)."""
    return _stream(client, loc, f, None, None, 0, 0)


def read_small(client: ContainerClient, loc: ArtifactLocation, f: RemoteFile, limit: int = 1 << 20) -> bytes:
    """A small blob (model.json) into memory, with the same size and MD5 checks as a download."""
    if f.size > limit:
        raise IntegrityError(f"{f.rel} is {f.size} bytes; a model manifest is at most {limit}")
    buf = io.BytesIO()
    _stream(client, loc, f, buf, None, 0, 0)
    return buf.getvalue()
