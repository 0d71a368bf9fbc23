"""The `scoring` registry commands: output, and errors as one line with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from scoring_runtime.cli import main


def test_register_models_label_fetch(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    runner = CliRunner()
    reg = str(tmp_path / "reg")
    for expected in ("1", "2"):
        r = runner.invoke(main, ["register", "--registry", reg, "--name", "iris", "--path", str(make_model())])
        assert r.exit_code == 0, r.output
        assert r.stdout.strip() == expected
    r = runner.invoke(main, ["label", "--registry", reg, "--name", "iris", "--label", "prod", "--version", "1"])
    assert r.exit_code == 0 and "prod -> 1" in r.stdout
    r = runner.invoke(main, ["models", "--registry", reg, "--json"])
    rows = json.loads(r.stdout)
    assert [(x["version"], x["labels"]) for x in rows] == [(1, ["prod"]), (2, ["latest"])]
    r = runner.invoke(main, ["fetch", "--registry", reg, "--name", "iris", "--label", "prod",
                             "--dest", str(tmp_path / "d")])
    assert r.exit_code == 0 and json.loads((tmp_path / "d" / "model.json").read_text())["version"] == 1
    r = runner.invoke(main, ["fetch", "--name", "iris", "--dest", str(tmp_path / "e")],
                      env={"SCORING_REGISTRY": reg})
    assert r.exit_code == 0 and json.loads((tmp_path / "e" / "model.json").read_text())["version"] == 2


def one_line_error(args: list[str]) -> str:
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)
    return r.stderr


def test_cli_errors_are_one_line(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    reg = str(tmp_path / "reg")
    assert "does not exist" in one_line_error(["models", "--registry", str(tmp_path / "missing")])
    assert "unsupported registry URI scheme" in one_line_error(["models", "--registry", "s3://b/m"])
    assert "invalid model name" in one_line_error(
        ["register", "--registry", reg, "--name", "Bad Name", "--path", str(make_model())])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "model.json" in one_line_error(["register", "--registry", reg, "--name", "m", "--path", str(empty)])
    CliRunner().invoke(main, ["register", "--registry", reg, "--name", "m", "--path", str(make_model())])
    assert "no label 'prod'" in one_line_error(
        ["fetch", "--registry", reg, "--name", "m", "--label", "prod", "--dest", str(tmp_path / "x")])
    assert "version 7 not found" in one_line_error(
        ["fetch", "--registry", reg, "--name", "m", "--version", "7", "--dest", str(tmp_path / "x")])
    assert "not both" in one_line_error(
        ["fetch", "--registry", reg, "--name", "m", "--version", "1", "--label", "latest", "--dest", "x"])
    assert "not found" in one_line_error(["models", "--registry", reg, "ghost"])
    assert "version 5 not found" in one_line_error(
        ["label", "--registry", reg, "--name", "m", "--label", "prod", "--version", "5"])
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert "not empty" in one_line_error(["fetch", "--registry", reg, "--name", "m", "--dest", str(full)])


def test_cli_error_in_a_real_process(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "scoring_runtime.cli", "models", "--registry", str(tmp_path / "no")],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert r.stdout == "" and r.stderr.startswith("error: registry root") and r.stderr.count("\n") == 1
