"""Registry regressions from issue 11: one bad model.json, stale staging directories, fetch --clean into the
registry, label names."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from scoring_runtime.cli import main
from scoring_runtime.registry import LocalFileRegistry
from scoring_runtime.registry.errors import InvalidReference, RegistryCorrupt


def test_one_invalid_model_json_does_not_hide_the_good_ones(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    reg = LocalFileRegistry(tmp_path / "reg")
    for _ in range(3):
        reg.register("iris", make_model())
    reg.register("other", make_model())
    (tmp_path / "reg" / "iris" / "2" / "model.json").write_text('{"name": "iris", "version": "two"', encoding="utf-8")
    r = CliRunner().invoke(main, ["models", "--registry", str(tmp_path / "reg")])
    assert r.exit_code == 0, r.output
    assert r.exception is None
    assert "Traceback" not in r.output
    lines = r.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[1:]] == [["iris", "1"], ["iris", "2"], ["iris", "3"], ["other", "1"]]
    assert "INVALID" in lines[2]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("warning: iris version 2 is unusable: ")
    assert "model.json is not a valid model manifest" in r.stderr
    rows = json.loads(CliRunner().invoke(main, ["models", "--registry", str(tmp_path / "reg"), "--json"]).stdout)
    assert [x["error"] is not None for x in rows] == [False, True, False, False]
    with pytest.raises(RegistryCorrupt, match="not a valid model manifest"):
        reg.get_manifest("iris", 2)


def test_stale_staging_directories_are_removed_but_live_ones_kept(
    tmp_path: Path, make_model: Callable[..., Path]
) -> None:
    reg = LocalFileRegistry(tmp_path / "reg")
    reg.register("iris", make_model())
    d = tmp_path / "reg" / "iris"
    old = time.time() - 3600
    stale = d / ".staging-killed"
    (stale / "sub").mkdir(parents=True)
    (stale / "model.skops").write_bytes(b"x" * 1000)
    os.utime(stale, (old, old))
    live = d / ".staging-live"  # as a registration still copying holds it
    live.mkdir()
    os.utime(live, (old, old))
    fresh = d / ".staging-fresh"  # just created, not locked yet: inside the grace period
    fresh.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert reg.register("iris", make_model()).version == 2  # registering cleans up as it goes
        assert not stale.exists()
        assert live.is_dir() and fresh.is_dir()
    finally:
        os.close(fd)
    assert reg.clean_stale_staging("iris") == [live]
    assert fresh.is_dir()
    assert reg.clean_stale_staging("iris", grace_s=0) == [fresh]
    assert [p.name for p in d.iterdir() if p.name.startswith(".staging")] == []
    assert [v.version for v in reg.list_versions("iris")] == [1, 2]


@pytest.mark.parametrize("where", ["root", "inside", "model-dir", "parent"])
def test_fetch_never_writes_into_the_registry(tmp_path: Path, make_model: Callable[..., Path], where: str) -> None:
    root = tmp_path / "reg"
    LocalFileRegistry(root).register("iris", make_model())
    dest = {"root": root, "inside": root / "iris" / "x", "model-dir": root / "iris", "parent": tmp_path}[where]
    r = CliRunner().invoke(main, ["fetch", "--registry", str(root), "--name", "iris", "--dest", str(dest), "--clean"])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: refusing to fetch into") and "registry" in r.stderr
    assert (root / "iris" / "1" / "model.json").is_file()  # nothing was emptied
    assert LocalFileRegistry(root).list_versions("iris")[0].error is None


@pytest.mark.parametrize("label", ["x" * 64, "", "prod/../x", "prød", "a b", "latest\n"])
def test_label_names_are_bounded_in_length_and_charset(
    tmp_path: Path, make_model: Callable[..., Path], label: str
) -> None:
    reg = LocalFileRegistry(tmp_path / "reg")
    reg.register("iris", make_model())
    with pytest.raises(InvalidReference, match="1-63 ASCII letters"):
        reg.set_label("iris", label, 1)
    reg.set_label("iris", "x" * 63, 1)
    reg.set_label("iris", "Prod_2.1-rc", 1)
    assert set(reg.labels("iris")) == {"latest", "x" * 63, "Prod_2.1-rc"}
