"""The Azure Machine Learning registry backend: models in an AML workspace or an AML registry.

Talks to AML through `azure.ai.ml.MLClient` with `DefaultAzureCredential` (on AKS: workload
identity). Metadata (versions, the `latest` label) comes from the AML API; artifact bytes come
from blob storage (see azureml_blob). A fetched model gets the same guarantees as one from the
local registry: a `model.json` manifest with every file's sha256, verified on download, written
last, and an empty destination on any failure.

Where the manifest comes from:
1. the model's own `model.json` (as `scoring fetch` writes it, with `files`): every file is
   verified against its sha256, name/version/source are taken from AML;
2. a source `model.json` (framework/task/flavour, no files), or no model.json at all: the
   manifest is computed from the downloaded files; framework/task/flavour come from that file
   or else from the AML model's tags (then properties) `framework`, `task`, `flavour` (JSON).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError
from pydantic import ValidationError

from scoring_runtime.manifest import MANIFEST_FILE, FileEntry, ModelManifest, ModelSource, validate_model_name
from scoring_runtime.registry.azureml_blob import (
    ArtifactLocation,
    RemoteFile,
    container_client,
    download_file,
    hash_remote,
    list_artifacts,
    parse_blob_url,
    parse_datastore_path,
    read_small,
)
from scoring_runtime.registry.azureml_errors import map_control_plane_error
from scoring_runtime.registry.azureml_uri import AzureMLLocation, parse_location, parse_version
from scoring_runtime.registry.base import ModelRegistry, ModelVersionInfo, Progress, ResolvedModel
from scoring_runtime.registry.errors import (
    IntegrityError,
    InvalidReference,
    LabelNotFound,
    ModelNotFound,
    RegistryError,
)
from scoring_runtime.registry.local import check_entry, empty_dir, prepare_dest, write_atomic
from scoring_runtime.telemetry.scrub import install_log_scrubbing

log = logging.getLogger(__name__)
T = TypeVar("T")
#: AML manages exactly one label for models: the most recently created version.
AML_LABELS = ("latest",)
_BLOB_DATASTORES = {"azureblob": "container_name", "azuredatalakegen2": "filesystem"}


class AzureMLRegistry(ModelRegistry):
    """Models of one AML workspace or AML registry (read-only: register models with the AML tools)."""

    def __init__(
        self,
        location: AzureMLLocation,
        *,
        credential: TokenCredential | None = None,
        transport: Any = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        """`transport`/`client_options` go to every Azure HTTP pipeline (AML, storage, identity).

        Installs log scrubbing: with `logging_enable` azure-core logs request headers (the bearer
        token) and urllib3 logs URLs (SAS signatures) at DEBUG; neither may reach a log.
        """
        install_log_scrubbing()
        self.location = location
        self.uri = location.uri
        self._credential = credential
        self._pipeline: dict[str, Any] = {"transport": transport} if transport is not None else {}
        self._client_options = dict(client_options or {})
        self._client: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, **kwargs: Any) -> AzureMLRegistry:
        return cls(parse_location(uri), **kwargs)

    # ---------------------------------------------------------------- plumbing
    @property
    def credential(self) -> TokenCredential:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            # Covers AKS workload identity (AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_FEDERATED_TOKEN_FILE),
            # managed identity and, on a laptop, `az login`; never opens a browser.
            self._credential = DefaultAzureCredential(exclude_interactive_browser_credential=True, **self._pipeline)
        return self._credential

    def _call(self, what: str, fn: Callable[[], T], *, label: str | None = None) -> T:
        try:
            return fn()
        except RegistryError:
            raise
        except AzureError as e:
            raise map_control_plane_error(e, self.location, what, label=label) from e

    def _ml(self) -> Any:
        """The MLClient, built on first use: for a registry, building it already calls AML (discovery)."""
        with self._lock:
            if self._client is None:
                from azure.ai.ml import MLClient

                loc = self.location
                kwargs: dict[str, Any] = {
                    # No SDK usage telemetry from scoring pods; our own goes where the user configures it.
                    "enable_telemetry": False,
                    "show_progress": False,
                    **self._pipeline,
                    **self._client_options,
                }
                if loc.registry_name:
                    try:
                        self._client = self._call(
                            "registry discovery",
                            lambda: MLClient(self.credential, registry_name=loc.registry_name, **kwargs),
                        )
                    except ModelNotFound:
                        raise ModelNotFound(
                            f"{loc.describe()} does not exist (or is in another cloud): check the registry name"
                        ) from None
                else:
                    self._client = MLClient(
                        self.credential, loc.subscription_id, loc.resource_group, loc.workspace, **kwargs
                    )
            return self._client

    @staticmethod
    def _name(name: str) -> str:
        try:
            return validate_model_name(name)
        except ValueError as e:
            raise InvalidReference(f"{e} (Azure ML model names must fit this too, to be served)") from None

    def _get(self, name: str, version: int | None = None, label: str | None = None) -> Any:
        name = self._name(name)
        if version is not None:
            return self._call(
                f"model {name!r} version {version}", lambda: self._ml().models.get(name, version=str(version))
            )
        assert label is not None
        if label not in AML_LABELS:
            raise LabelNotFound(
                f"model {name!r} has no label {label!r} in {self.location.describe()}: Azure ML models "
                f"only have the {', '.join(AML_LABELS)} label; pin a version instead"
            )
        return self._call(
            f"model {name!r} (label {label!r})", lambda: self._ml().models.get(name, label=label), label=label
        )

    def _version_of(self, model: Any) -> int:
        return parse_version(str(model.version), what=f"Azure ML model {model.name!r} version")

    # ---------------------------------------------------------------- reads
    def list_models(self) -> list[str]:
        return sorted(
            self._call("the model list", lambda: [m.name for m in self._ml().models.list()])  # pages followed
        )

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        name = self._name(name)
        models = self._call(f"versions of model {name!r}", lambda: list(self._ml().models.list(name=name)))
        rows: list[tuple[int, datetime, Any]] = []
        for m in models:
            try:
                rows.append((self._version_of(m), _created(m), m))
            except InvalidReference:
                log.warning("skipping Azure ML model %s version %r: not an integer version", name, m.version)
        if not rows:
            raise ModelNotFound(f"model {name!r} not found in {self.location.describe()}")
        # AML's `latest` is the most recently created version (not the highest number).
        latest = max(rows, key=lambda r: (r[1], r[0]))[0]
        out = []
        for version, created, m in sorted(rows, key=lambda r: r[0]):
            framework, task = _framework_task(m)
            out.append(
                ModelVersionInfo(
                    name=name,
                    version=version,
                    labels=("latest",) if version == latest else (),
                    created=created.isoformat(),
                    framework=framework,
                    task=task,
                )
            )
        return out

    def labels(self, name: str) -> dict[str, int]:
        return {"latest": self._version_of(self._get(name, label="latest"))}

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ResolvedModel:
        """Pin a reference with one AML call: `models.get(name, version=...)` or `(name, label=...)`."""
        if (version is None) == (label is None):
            raise ValueError("give exactly one of version or label")
        model = self._get(name, version=version, label=label)
        pinned = self._version_of(model)
        return ResolvedModel(name, pinned, "version" if label is None else f"label:{label}", self.uri)

    # ---------------------------------------------------------------- artifacts
    def _artifacts(self, model: Any) -> tuple[ArtifactLocation, Any, list[RemoteFile]]:
        what = f"model {model.name!r} version {model.version}"
        loc = self._call(f"the storage location of {what}", lambda: self._artifact_location(model))
        client = container_client(loc, self.credential, self._pipeline)
        files = list_artifacts(client, loc)
        if not files:
            raise ModelNotFound(
                f"{what} is registered in {self.location.describe()} but has no files at {loc.describe()}"
            )
        return loc, client, files

    def _artifact_location(self, model: Any) -> ArtifactLocation:
        path = str(model.path or "")
        if self.location.registry_name:
            return self._registry_location(model, path)
        ds_path = parse_datastore_path(path)
        if ds_path is None:
            return parse_blob_url(path)
        ds = self._ml().datastores.get(ds_path.datastore)  # no secrets: we read with our own identity
        kind = str(getattr(ds.type, "value", ds.type) or "").lower()
        if kind not in _BLOB_DATASTORES:
            raise InvalidReference(
                f"model {model.name!r} version {model.version} is stored in datastore {ds_path.datastore!r} of "
                f"type {kind or 'unknown'}; only blob and ADLS Gen2 datastores are supported"
            )
        container = getattr(ds, _BLOB_DATASTORES[kind])
        endpoint = getattr(ds, "endpoint", None) or "core.windows.net"
        protocol = getattr(ds, "protocol", None) or "https"
        return ArtifactLocation(
            account_url=f"{protocol}://{ds.account_name}.blob.{endpoint}",
            account=ds.account_name,
            container=container,
            prefix=ds_path.prefix,
        )

    def _registry_location(self, model: Any, path: str) -> ArtifactLocation:
        """Registry storage is Microsoft-managed: AML hands out a short-lived SAS for reading an asset."""
        from azure.ai.ml._utils._registry_utils import get_storage_details_for_registry_assets

        ml = self._ml()
        blob_uri, auth = get_storage_details_for_registry_assets(
            service_client=ml.models._registry_service_client,
            asset_type="models",
            asset_name=model.name,
            asset_version=str(model.version),
            rg_name=ml.models._resource_group_name,
            reg_name=str(self.location.registry_name),
            uri=path,
        )
        loc = parse_blob_url(path)
        if auth != "SAS":
            return loc
        sas = parse_blob_url(blob_uri)
        query = blob_uri.split("?", 1)[1] if "?" in blob_uri else ""
        return ArtifactLocation(sas.account_url, sas.account, sas.container, loc.prefix, sas_token=query or None)

    # ---------------------------------------------------------------- manifests
    def get_manifest(self, name: str, version: int) -> ModelManifest:
        """The manifest without keeping the files; hashes every file when AML holds no full model.json."""
        model = self._get(name, version=version)
        loc, client, files = self._artifacts(model)
        by_rel = {f.rel: f for f in files}
        stored = by_rel.get(MANIFEST_FILE)
        raw = read_small(client, loc, stored) if stored else None
        full = self._stored_manifest(model, raw)
        if full is not None:
            return full
        hashes = {f.rel: (hash_remote(client, loc, f), f.size) for f in files if f.rel != MANIFEST_FILE}
        return self._computed_manifest(model, raw, hashes)

    def fetch(self, name: str, version: int, dest: Path, progress: Progress | None = None) -> ModelManifest:
        model = self._get(name, version=version)
        loc, client, files = self._artifacts(model)
        dest = Path(dest)
        prepare_dest(dest)
        staging = dest / f".azureml-download-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            total = sum(f.size for f in files)
            done = 0
            hashes: dict[str, tuple[str, int]] = {}
            for f in files:
                hashes[f.rel] = (download_file(client, loc, f, staging / f.rel, progress, done, total), f.size)
                done += f.size
            raw = (staging / MANIFEST_FILE).read_bytes() if MANIFEST_FILE in hashes else None
            hashes.pop(MANIFEST_FILE, None)
            manifest = self._stored_manifest(model, raw)
            if manifest is not None:
                _verify(manifest, hashes)
                extra = sorted(set(hashes) - {e.path for e in manifest.files})
                if extra:
                    log.warning("%s: ignoring files not listed in its model.json: %s", manifest.source, extra)
            else:
                manifest = self._computed_manifest(model, raw, hashes)
            for entry in manifest.files:
                target = dest / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / entry.path, target)
            shutil.rmtree(staging)
            write_atomic(dest / MANIFEST_FILE, manifest.to_json())  # last: its presence means the directory is complete
        except BaseException:
            empty_dir(dest, ignore_errors=True)
            raise
        return manifest

    def _stored_manifest(self, model: Any, raw: bytes | None) -> ModelManifest | None:
        """The model's own full model.json (with files) under its AML identity; None if it has none."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise IntegrityError(f"{self._source(model)}: model.json is not valid JSON: {e}") from None
        if not isinstance(data, dict) or "files" not in data:
            return None
        data.update(name=self._name(model.name), version=self._version_of(model), source=self._source(model))
        try:
            return ModelManifest.model_validate(data)
        except ValidationError as e:
            raise IntegrityError(f"{self._source(model)}: model.json is not a valid manifest: {e}") from None

    def _computed_manifest(self, model: Any, raw: bytes | None, hashes: dict[str, tuple[str, int]]) -> ModelManifest:
        source = self._source(model)
        if raw is not None:
            try:
                src = ModelSource.model_validate_json(raw)
            except ValidationError as e:
                raise InvalidReference(f"{source}: model.json is not a valid model source: {e}") from None
        else:
            framework, task = _framework_task(model)
            if not framework or not task:
                raise InvalidReference(
                    f"{source} has no model.json and no 'framework'/'task' tags: register it with tags "
                    "framework=<sklearn|torch> and task=<task> (optionally flavour=<JSON>), or include a "
                    "model.json in the registered directory"
                )
            src = ModelSource(framework=framework, task=task, description=model.description or "",
                              flavour=_flavour(model))
        if not hashes:
            raise ModelNotFound(f"{source} holds no artifact files besides model.json")
        return ModelManifest(
            name=self._name(model.name),
            version=self._version_of(model),
            framework=src.framework,
            task=src.task,
            created=_created(model),
            description=src.description,
            files=[FileEntry(path=rel, sha256=digest, size=size) for rel, (digest, size) in sorted(hashes.items())],
            flavour=src.flavour,
            metrics=src.metrics,
            source=source,
        )

    def _source(self, model: Any) -> str:
        return self.location.model_uri(str(model.name), version=int(self._version_of(model)))


# -------------------------------------------------------------------- helpers
def _created(model: Any) -> datetime:
    ctx = getattr(model, "creation_context", None)
    created = getattr(ctx, "created_at", None)
    if isinstance(created, datetime):
        return created if created.tzinfo else created.replace(tzinfo=UTC)
    if isinstance(created, str):
        try:
            return datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.fromtimestamp(0, UTC)


def _meta(model: Any, key: str) -> str:
    for source in (getattr(model, "tags", None), getattr(model, "properties", None)):
        if source and source.get(key):
            return str(source[key])
    return ""


def _framework_task(model: Any) -> tuple[str, str]:
    return _meta(model, "framework"), _meta(model, "task")


def _flavour(model: Any) -> dict[str, Any]:
    raw = _meta(model, "flavour")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise InvalidReference(f"Azure ML model {model.name!r}: tag 'flavour' is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidReference(f"Azure ML model {model.name!r}: tag 'flavour' must be a JSON object")
    return value


def _verify(manifest: ModelManifest, hashes: dict[str, tuple[str, int]]) -> None:
    for entry in manifest.files:
        got = hashes.get(entry.path)
        if got is None:
            raise IntegrityError(f"{entry.path}: listed in {manifest.source}'s model.json but not stored in Azure")
        check_entry(entry, *got)
