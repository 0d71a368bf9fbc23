"""The local file registry: atomic versions, labels, verified fetch, clear errors."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scoring_runtime.manifest import MANIFEST_FILE, sha256_file
from scoring_runtime.registry import (
    IntegrityError,
    InvalidReference,
    LabelNotFound,
    LocalFileRegistry,
    ModelNotFound,
    RegistryUnavailable,
    open_registry,
)


def test_register_assigns_versions_and_moves_latest(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    reg = LocalFileRegistry(tmp_path / "reg")
    m1 = reg.register("iris", make_model())
    m2 = reg.register("iris", make_model())
    assert (m1.version, m2.version) == (1, 2)
    assert reg.labels("iris") == {"latest": 2}
    m3 = reg.register("iris", make_model(), set_latest=False)
    assert m3.version == 3 and reg.labels("iris") == {"latest": 2}
    assert [v.version for v in reg.list_versions("iris")] == [1, 2, 3]
    assert reg.list_versions("iris")[1].labels == ("latest",)
    assert reg.list_models() == ["iris"]
    files = {f.path: f for f in m2.files}
    assert set(files) == {"model.skops", "sub/vocab.txt"}
    stored = tmp_path / "reg" / "iris" / "2"
    assert files["model.skops"].sha256 == sha256_file(stored / "model.skops")
    assert m2.source.endswith("#iris/2")


def test_labels_set_move_remove_and_resolve(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    reg = LocalFileRegistry(tmp_path)
    for _ in range(3):
        reg.register("m", make_model())
    reg.set_label("m", "prod", 2)
    assert reg.resolve("m", label="prod").version == 2
    assert reg.resolve("m", label="latest").version == 3
    assert reg.resolve("m", version=1).resolved_from == "version"
    reg.set_label("m", "latest", 1)  # rollback
    assert reg.resolve("m", label="latest").version == 1
    reg.remove_label("m", "prod")
    with pytest.raises(LabelNotFound, match="no label 'prod'"):
        reg.resolve("m", label="prod")
    with pytest.raises(ModelNotFound, match="version 9"):
        reg.set_label("m", "prod", 9)
    with pytest.raises(InvalidReference, match="invalid label"):
        reg.set_label("m", "bad label!", 1)
    with pytest.raises(ValueError, match="exactly one"):
        reg.resolve("m")


def test_fetch_verifies_and_a_checksum_mismatch_leaves_dest_empty(
    tmp_path: Path, make_model: Callable[..., Path]
) -> None:
    reg = LocalFileRegistry(tmp_path / "reg")
    reg.register("m", make_model(size=5000))
    good = tmp_path / "good"
    manifest = reg.fetch("m", 1, good)
    assert (good / MANIFEST_FILE).is_file() and (good / "sub" / "vocab.txt").is_file()
    assert manifest.version == 1

    stored = tmp_path / "reg" / "m" / "1" / "model.skops"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF  # same size, different content
    stored.write_bytes(bytes(data))
    dest = tmp_path / "bad"
    with pytest.raises(IntegrityError, match=r"model.skops: sha256 .* does not match"):
        reg.fetch("m", 1, dest)
    assert dest.is_dir() and list(dest.iterdir()) == []

    stored.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        reg.fetch("m", 1, dest)
    assert list(dest.iterdir()) == []

    with pytest.raises(FileExistsError, match="not empty"):
        reg.fetch("m", 1, good)


def test_bad_uris_and_missing_roots_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidReference, match="unsupported registry URI scheme 's3'"):
        open_registry("s3://bucket/models")
    with pytest.raises(InvalidReference, match="must be absolute"):
        open_registry("file://somehost/models")
    reg = open_registry(str(tmp_path / "nowhere"))
    with pytest.raises(RegistryUnavailable, match="does not exist"):
        reg.list_models()
    assert RegistryUnavailable.retryable and not IntegrityError.retryable
    assert isinstance(open_registry((tmp_path / "x").as_uri()), LocalFileRegistry)
    with pytest.raises(InvalidReference, match="invalid model name"):
        LocalFileRegistry(tmp_path).list_versions("Bad_Name!")
    with pytest.raises(ModelNotFound, match="'ghost' not found"):
        LocalFileRegistry(tmp_path).list_versions("ghost")


def test_a_reader_never_sees_a_half_copied_version(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    reg = LocalFileRegistry(tmp_path / "reg")
    reg.register("big", make_model(size=1000))
    src = make_model(size=6 * 1024 * 1024)  # six 1 MiB copy chunks, slowed down below
    copying = threading.Event()

    def slow(done: int, total: int, current: str) -> None:
        copying.set()
        time.sleep(0.05)

    writer = threading.Thread(target=reg.register, args=("big", src), kwargs={"progress": slow})
    writer.start()
    assert copying.wait(10)
    model_dir = tmp_path / "reg" / "big"
    during_copy = 0
    checks = 0
    while writer.is_alive() or checks == 0:
        versions = [info.version for info in reg.list_versions("big")]
        for v in versions:
            reg.fetch("big", v, tmp_path / f"read-{checks}-{v}")  # IntegrityError on a partial version
        if any(p.name.startswith(".staging") for p in model_dir.iterdir()):
            assert versions == [1]  # the copy is still running: version 2 must not be visible yet
            during_copy += 1
        checks += 1
    writer.join()
    assert during_copy >= 3  # the reader really looked while the copy was running
    assert [v.version for v in reg.list_versions("big")] == [1, 2]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".staging")]
    assert reg.labels("big")["latest"] == 2


def _register_many(root: str, src: str, n: int, out: mp.Queue) -> None:
    reg = LocalFileRegistry(root)
    out.put([reg.register("shared", src).version for _ in range(n)])


def test_concurrent_registrations_from_processes_get_distinct_versions(
    tmp_path: Path, make_model: Callable[..., Path]
) -> None:
    root = tmp_path / "reg"
    src = make_model(size=64 * 1024)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(str(root), str(src), 3, q)) for _ in range(4)]
    for p in procs:
        p.start()
    versions = sorted(v for _ in procs for v in q.get(timeout=60))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert versions == list(range(1, 13))
    reg = LocalFileRegistry(root)
    assert [v.version for v in reg.list_versions("shared")] == versions
    assert reg.labels("shared")["latest"] == 12
