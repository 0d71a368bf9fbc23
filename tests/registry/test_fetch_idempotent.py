"""`scoring fetch` recovers in a reused destination: the init container's emptyDir outlives its restarts."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from scoring_runtime.cli import main
from scoring_runtime.registry.local import prepare_dest


@pytest.fixture
def reg(tmp_path: Path, make_model: Callable[..., Path]) -> str:
    """A registry with `m` versions 1 and 2 (`latest` -> 2)."""
    root = str(tmp_path / "reg")
    for _ in range(2):
        r = CliRunner().invoke(main, ["register", "--registry", root, "--name", "m", "--path", str(make_model())])
        assert r.exit_code == 0, r.output
    return root


def fetch(reg: str, dest: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["fetch", "--registry", reg, "--name", "m", "--dest", str(dest), *extra])


def _manifest(dest: Path) -> dict[str, object]:
    return dict(json.loads((dest / "model.json").read_text()))


def test_refetch_of_the_same_version_verifies_and_keeps_the_files(reg: str, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    assert fetch(reg, dest, "--version", "1").exit_code == 0
    stamps = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    for extra in (("--version", "1"), ("--version", "1", "--clean")):
        r = fetch(reg, dest, *extra)
        assert r.exit_code == 0, r.output
        assert "already holds m version 1" in r.stderr and "files verified" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == stamps, "nothing was rewritten"
    # A label resolving to the version already there is the same fetch.
    CliRunner().invoke(main, ["label", "--registry", reg, "--name", "m", "--label", "prod", "--version", "1"])
    r = fetch(reg, dest, "--label", "prod")
    assert r.exit_code == 0 and "already holds m version 1" in r.stderr


def test_pinned_refetch_needs_no_registry(reg: str, tmp_path: Path) -> None:
    """The init container restarting while the registry is down still starts the pod it already filled."""
    dest = tmp_path / "model"
    assert fetch(reg, dest, "--version", "2").exit_code == 0
    r = fetch(str(tmp_path / "gone"), dest, "--version", "2")
    assert r.exit_code == 0, r.output


def test_partial_leftovers_are_cleaned_and_fetched_again(reg: str, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    # A fetch killed midway: some artifacts (one truncated), no model.json (it is written last).
    dest.mkdir()
    (dest / "model.skops").write_bytes(b"\x00" * 10)
    (dest / "sub").mkdir()
    (dest / "sub" / "vocab.txt").write_text("partial")
    r = fetch(reg, dest, "--version", "1", "--clean")
    assert r.exit_code == 0, r.output
    assert _manifest(dest)["version"] == 1
    assert fetch(reg, dest, "--version", "1").exit_code == 0, "the recovered copy verifies"


def test_a_corrupt_or_other_version_is_replaced_with_clean(reg: str, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    assert fetch(reg, dest, "--version", "1").exit_code == 0
    (dest / "model.skops").write_bytes(b"tampered")  # model.json present, a file no longer verifies
    assert fetch(reg, dest, "--version", "1").exit_code != 0
    r = fetch(reg, dest, "--version", "1", "--clean")
    assert r.exit_code == 0, r.output
    assert "already holds" not in r.stderr and "fetched m version 1" in r.stderr
    r = fetch(reg, dest, "--clean")  # latest is version 2: a different model in dest is replaced
    assert r.exit_code == 0, r.output
    assert _manifest(dest)["version"] == 2


def test_without_clean_a_non_empty_dest_is_refused(reg: str, tmp_path: Path) -> None:
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "model.skops").write_bytes(b"partial")
    r = fetch(reg, dest, "--version", "1")
    assert r.exit_code != 0
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "not empty" in r.stderr and "--clean" in r.stderr
    assert (dest / "model.skops").read_bytes() == b"partial", "nothing removed without --clean"
    assert not (dest / "model.json").exists()


def test_clean_removes_contents_but_not_the_mount_point_or_link_targets(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("x")
    (dest / "deep" / "er").mkdir(parents=True)
    (dest / "deep" / "er" / "f").write_text("y")
    os.symlink(outside / "keep", dest / "link")
    prepare_dest(dest, clean=True)
    assert dest.is_dir() and list(dest.iterdir()) == []
    assert (outside / "keep" / "file").read_text() == "x", "a symlink is removed, never followed"
    with pytest.raises(ValueError, match="refusing to empty"):
        prepare_dest(Path("/"), clean=True)
