"""The local file registry: the embedded default, needing no cloud.

Layout::

    <root>/<name>/<version>/model.json   manifest (name, version, framework, task, files + sha256 ...)
    <root>/<name>/<version>/...          the artifacts
    <root>/<name>/labels.json            {"latest": 3, "prod": 2}
    <root>/<name>/.lock                  flock(2) target serialising version allocation
    <root>/<name>/.staging-*/            registrations in progress (never listed)

A version directory only ever appears by an atomic rename of a complete staging directory, so a
half-copied model is never visible; the rename happens under an exclusive lock, so two concurrent
registrations of one name cannot get the same version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Hashable, Iterator
from pathlib import Path

from scoring_runtime.manifest import (
    MANIFEST_FILE,
    FileEntry,
    ModelManifest,
    ModelSource,
    artifact_files,
    sha256_file,
    validate_label_name,
    validate_model_name,
)
from scoring_runtime.registry.base import ModelRegistry, ModelVersionInfo, Progress
from scoring_runtime.registry.errors import (
    IntegrityError,
    InvalidReference,
    ModelNotFound,
    RegistryCorrupt,
    RegistryUnavailable,
)

log = logging.getLogger(__name__)
LABELS_FILE = "labels.json"
#: a staging directory untouched for this long and not locked by a live registration is removed
STAGING_GRACE_S = 600.0
_COPY_CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _copy_hashing(src: Path, dst: Path, progress: Progress | None, done: int, total: int) -> tuple[str, int]:
    """Copy one file and hash what was actually read, so the checksum covers the bytes we wrote."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    rel = dst.name
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(_COPY_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
            if progress:
                progress(done + size, total, rel)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest(), size


class LocalFileRegistry(ModelRegistry):
    """A registry in a directory tree (a local disk, an NFS/Azure Files mount, a hostPath)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = self.root.as_uri()

    # ---------------------------------------------------------------- helpers
    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise RegistryUnavailable(
                f"registry root {self.root} does not exist or is not a directory "
                "(is the volume mounted? create it with `scoring register`)"
            )

    def _model_dir(self, name: str) -> Path:
        try:
            validate_model_name(name)
        except ValueError as e:
            raise InvalidReference(str(e)) from None
        return self.root / name

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        d = self._model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        with (d / ".lock").open("a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield d
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _versions_in(d: Path) -> list[int]:
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())

    def _read_labels(self, d: Path, repair: bool = False) -> dict[str, int]:
        """The labels of model dir `d`. A corrupt file (hand-edited, say) is a RegistryError on reads;
        writers pass `repair=True` to keep its valid entries and rewrite it (so `scoring label` fixes it)."""
        path = d / LABELS_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:  # not JSON, or not UTF-8
            raw = None
        entries = raw if isinstance(raw, dict) else {}
        valid = {k: v for k, v in entries.items() if type(v) is int and v >= 1}
        if isinstance(raw, dict) and len(valid) == len(raw):
            return valid
        if repair:
            log.warning("%s was corrupt; rewriting it with its valid labels %s", path, valid or "(none)")
            return valid
        raise RegistryCorrupt(
            f"{path} is corrupt: it must be a JSON object mapping labels to version numbers, like "
            f'{{"latest": 3}}; fix it by hand, or rewrite it with `scoring label --name {d.name} '
            "--label latest --version N` (which keeps its valid labels)"
        )

    # ---------------------------------------------------------------- reads
    def list_models(self) -> list[str]:
        self._check_root()
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
            and self._versions_in(p)
        )

    def list_versions(self, name: str) -> list[ModelVersionInfo]:
        self._check_root()
        d = self._model_dir(name)
        if not d.is_dir() or not self._versions_in(d):
            raise ModelNotFound(f"model {name!r} not found in registry {self.uri}")
        labels = self._read_labels(d)
        out = []
        for v in self._versions_in(d):
            tags = tuple(sorted(k for k, lv in labels.items() if lv == v))
            try:
                m = self.get_manifest(name, v)
            except (RegistryCorrupt, ModelNotFound) as e:
                out.append(ModelVersionInfo(name=name, version=v, labels=tags, created="", framework="?", task="?",
                                            error=str(e)))
                continue
            out.append(
                ModelVersionInfo(
                    name=name,
                    version=v,
                    labels=tags,
                    created=m.created.isoformat(),
                    framework=m.framework,
                    task=m.task,
                )
            )
        return out

    def labels(self, name: str) -> dict[str, int]:
        self._check_root()
        d = self._model_dir(name)
        if not d.is_dir():
            raise ModelNotFound(f"model {name!r} not found in registry {self.uri}")
        return self._read_labels(d)

    def labels_stamp(self, name: str) -> Hashable | None:
        """The labels file's identity and times: every writer replaces it (`write_atomic`), so any
        change gives a new inode or mtime. One stat, no read; errors are part of the stamp (a mount
        that vanishes or comes back is a change too). On network mounts the stat may come from the
        client's attribute cache (NFS: `actimeo`), so a change is seen once that expires."""
        try:
            st = (self._model_dir(name) / LABELS_FILE).stat()
        except InvalidReference:
            return None
        except OSError as e:
            return ("unreadable", e.errno)
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def get_manifest(self, name: str, version: int) -> ModelManifest:
        self._check_root()
        path = self._model_dir(name) / str(version) / MANIFEST_FILE
        try:
            return ModelManifest.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ModelNotFound(f"model {name!r} version {version} not found in registry {self.uri}") from None
        except ValueError as e:  # not JSON, or not a manifest (pydantic's ValidationError is a ValueError)
            first = str(e).splitlines()
            detail = "; ".join(line.strip() for line in first[:3])[:300]
            raise RegistryCorrupt(f"{path} is not a valid model manifest ({detail}); restore it, or remove "
                                  f"version {version} of {name!r} from the registry") from None

    # ---------------------------------------------------------------- writes
    def register(
        self,
        name: str,
        src: str | Path,
        progress: Progress | None = None,
        set_latest: bool = True,
    ) -> ModelManifest:
        """Copy `src` (a directory with a `model.json` source manifest) in as the next version."""
        src = Path(src)
        validate_model_name(name)
        source_path = src / MANIFEST_FILE
        if not source_path.is_file():
            raise FileNotFoundError(
                f"{source_path} not found: a model directory needs a model.json with at least "
                '{"framework": "sklearn", "task": "..."}'
            )
        source = ModelSource.model_validate_json(source_path.read_bytes())
        files = artifact_files(src)
        if not files:
            raise ValueError(f"{src} holds no artifact files besides model.json")
        self.root.mkdir(parents=True, exist_ok=True)
        d = self._model_dir(name)
        d.mkdir(exist_ok=True)
        self.clean_stale_staging(name)
        staging = d / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        # Held until the staging directory is renamed or removed: proof that this registration is alive.
        staging_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(staging_fd, fcntl.LOCK_EX)
        try:
            total = sum(f.stat().st_size for f in files)
            done = 0
            entries = []
            for f in files:
                rel = f.relative_to(src)
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                digest, size = _copy_hashing(f, dst, progress, done, total)
                done += size
                entries.append(FileEntry(path=rel.as_posix(), sha256=digest, size=size))
            with self._locked(name):
                existing = self._versions_in(d)
                version = (existing[-1] if existing else 0) + 1
                manifest = ModelManifest(
                    name=name,
                    version=version,
                    framework=source.framework,
                    task=source.task,
                    description=source.description,
                    files=entries,
                    flavour=source.flavour,
                    metrics=source.metrics,
                    source=f"{self.uri}#{name}/{version}",
                )
                write_atomic(staging / MANIFEST_FILE, manifest.to_json())
                _fsync_dir(staging)
                os.rename(staging, d / str(version))
                _fsync_dir(d)
                if set_latest:
                    labels = self._read_labels(d, repair=True)
                    labels["latest"] = version
                    write_atomic(d / LABELS_FILE, json.dumps(labels, indent=2, sort_keys=True) + "\n")
            return manifest
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            os.close(staging_fd)  # releases the lock

    def clean_stale_staging(self, name: str, grace_s: float = STAGING_GRACE_S) -> list[Path]:
        """Remove the staging directories of `name` left by killed registrations; returns what was removed.

        Only provably abandoned ones: a live registration holds an exclusive flock on its staging
        directory from just after creating it until it is renamed into place, so a directory whose
        lock can be taken, and that nothing has touched for `grace_s` (which covers the instant
        between mkdir and flock), belongs to nobody.
        """
        d = self._model_dir(name)
        removed: list[Path] = []
        if not d.is_dir():
            return removed
        now = time.time()
        for staging in d.glob(".staging-*"):
            try:
                if not staging.is_dir() or staging.is_symlink() or now - staging.stat().st_mtime < grace_s:
                    continue
                fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue  # gone meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a registration in progress holds it
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
                log.warning("removed %s, left by a registration that did not finish", staging)
            finally:
                os.close(fd)
        return removed

    def set_label(self, name: str, label: str, version: int) -> None:
        """Point `label` at `version` (moving `latest` back is how a rollback is done)."""
        try:
            validate_label_name(label)
        except ValueError as e:
            raise InvalidReference(str(e)) from None
        self.get_manifest(name, version)
        with self._locked(name) as d:
            labels = self._read_labels(d, repair=True)
            labels[label] = version
            write_atomic(d / LABELS_FILE, json.dumps(labels, indent=2, sort_keys=True) + "\n")

    def remove_label(self, name: str, label: str) -> None:
        with self._locked(name) as d:
            labels = self._read_labels(d, repair=True)
            labels.pop(label, None)
            write_atomic(d / LABELS_FILE, json.dumps(labels, indent=2, sort_keys=True) + "\n")

    # ---------------------------------------------------------------- fetch
    def fetch(self, name: str, version: int, dest: Path, progress: Progress | None = None) -> ModelManifest:
        manifest = self.get_manifest(name, version)
        src = self._model_dir(name) / str(version)
        return copy_verified(manifest, src, Path(dest), progress)


def empty_dir(dest: Path, *, ignore_errors: bool = False) -> None:
    """Remove what is in `dest` but not `dest` itself (it may be a mount point); links are not followed."""
    if not dest.is_dir():
        return
    for child in list(dest.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=ignore_errors)
        else:
            try:
                child.unlink(missing_ok=True)
            except OSError:
                if not ignore_errors:
                    raise


def check_entry(entry: FileEntry, digest: str, size: int) -> None:
    """The one integrity rule of every backend: the bytes obtained are the bytes the manifest lists."""
    if size != entry.size or digest != entry.sha256:
        raise IntegrityError(
            f"{entry.path}: sha256 {digest} ({size} bytes) does not match the manifest's "
            f"{entry.sha256} ({entry.size} bytes); the stored artifact is corrupt or was tampered with"
        )


def prepare_dest(dest: Path, *, clean: bool = False) -> None:
    """`dest` may exist (a mounted emptyDir) but must be empty, so stale files never mix in.

    clean=True first removes what is in it (not `dest` itself, which may be a mount point): for a
    directory dedicated to one model, such as the pod's /model left half-filled by a killed fetch.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if clean:
        if dest.resolve() in (Path("/"), Path.home().resolve()):
            raise ValueError(f"refusing to empty {dest}: give a directory dedicated to the model")
        empty_dir(dest)
    if any(dest.iterdir()):
        raise FileExistsError(f"destination {dest} is not empty; fetch into an empty directory")


def verify_file(entry: FileEntry, path: Path) -> None:
    size = path.stat().st_size
    if size != entry.size:
        raise IntegrityError(f"{entry.path}: size {size} does not match the manifest's {entry.size}")
    check_entry(entry, sha256_file(path), size)


def copy_verified(manifest: ModelManifest, src: Path, dest: Path, progress: Progress | None) -> ModelManifest:
    """Copy the manifest's files from `src` to `dest`, checking each sha256; manifest written last.

    On any mismatch everything copied is removed again, so a failed fetch leaves `dest` empty and
    the init container fails loudly instead of a pod serving a corrupt model.
    """
    prepare_dest(dest)
    total = sum(e.size for e in manifest.files)
    done = 0
    try:
        for entry in manifest.files:
            s = src / entry.path
            if not s.is_file():
                raise IntegrityError(f"{entry.path}: listed in the manifest but missing from {src}")
            d = dest / entry.path
            d.parent.mkdir(parents=True, exist_ok=True)
            digest, size = _copy_hashing(s, d, progress, done, total)
            done += size
            check_entry(entry, digest, size)
        write_atomic(dest / MANIFEST_FILE, manifest.to_json())
    except BaseException:
        empty_dir(dest, ignore_errors=True)
        raise
    return manifest
