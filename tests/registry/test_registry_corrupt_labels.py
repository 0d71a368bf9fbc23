"""A corrupt labels.json is a clear RegistryError (one line in the CLI), and `scoring label` repairs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from scoring_runtime.cli import main
from scoring_runtime.registry import LocalFileRegistry
from scoring_runtime.registry.errors import RegistryError


@pytest.mark.parametrize("content", ['{"latest": "x"}', "[1]", '{"latest": 2, "prod": true}', "{not json", "\xff"])
def test_corrupt_labels_file_is_reported_and_can_be_repaired(
    tmp_path: Path, make_model: Callable[..., Path], content: str
) -> None:
    root = tmp_path / "reg"
    reg = LocalFileRegistry(root)
    reg.register("iris", make_model())
    reg.register("iris", make_model())
    labels = root / "iris" / "labels.json"
    labels.write_bytes(content.encode("latin-1"))

    reads: list[Callable[[], object]] = [
        lambda: reg.labels("iris"), lambda: reg.list_versions("iris"), lambda: reg.resolve("iris", label="latest"),
    ]
    for read in reads:
        with pytest.raises(RegistryError, match=r"labels.json is corrupt: .*scoring label --name iris") as info:
            read()
        assert info.value.reason == "RegistryCorrupt" and not info.value.retryable
    r = CliRunner().invoke(main, ["models", "--registry", str(root), "iris"])
    assert r.exit_code != 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "corrupt" in r.stderr, r.stderr

    r = CliRunner().invoke(main, ["label", "--registry", str(root), "--name", "iris", "--label", "latest",
                                  "--version", "1"])
    assert r.exit_code == 0, r.output
    repaired = json.loads(labels.read_text(encoding="utf-8"))
    assert repaired["latest"] == 1
    assert all(type(v) is int for v in repaired.values())  # valid entries kept, broken ones dropped
    assert reg.resolve("iris", label="latest").version == 1
    reg.register("iris", make_model())  # registering moves latest on the repaired file
    assert reg.labels("iris")["latest"] == 3
