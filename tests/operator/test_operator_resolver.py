"""Resolving versions against a real local file registry, plus operator settings and metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from scoring_operator import metrics
from scoring_operator.__main__ import main
from scoring_operator.config import ConfigError, OperatorConfig
from scoring_operator.resolver import RegistryCorrupt, RegistryNotConfigured, Resolver
from scoring_operator.spec import ModelRef
from scoring_runtime.registry import LabelNotFound, LocalFileRegistry, ModelNotFound, RegistryUnavailable
from tests.operator.conftest import make_spec


def _register(root: Path, name: str, tmp: Path) -> int:
    src = tmp / f"src-{name}"
    src.mkdir(exist_ok=True)
    (src / "model.json").write_text(json.dumps({"framework": "sklearn", "task": "test"}))
    (src / "weights.bin").write_bytes(b"w")
    return LocalFileRegistry(root).register(name, src).version


def _ref(**model: object) -> ModelRef:
    return make_spec(model={"registry": {"type": "local", "claimName": "r"}, "name": "faq", **model}).model


async def test_resolves_labels_and_pinned_versions(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    _register(root, "faq", tmp_path)
    _register(root, "faq", tmp_path)
    resolver = Resolver(root)
    latest = await resolver.resolve(_ref(label="latest"))
    assert (latest.name, latest.version, latest.resolved_from) == ("faq", 2, "label:latest")
    LocalFileRegistry(root).set_label("faq", "latest", 1)
    assert (await resolver.resolve(_ref(label="latest"))).version == 1
    pinned = await resolver.resolve(_ref(version=2))
    assert (pinned.version, pinned.resolved_from) == (2, "version")


async def test_registry_sub_path(tmp_path: Path) -> None:
    _register(tmp_path / "reg" / "team", "faq", tmp_path)
    ref = make_spec(model={"registry": {"type": "local", "claimName": "r", "path": "team"}, "name": "faq",
                           "label": "latest"}).model
    assert (await Resolver(tmp_path / "reg").resolve(ref)).version == 1


async def test_errors_carry_reason_and_retryability(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    _register(root, "faq", tmp_path)
    resolver = Resolver(root)
    with pytest.raises(ModelNotFound) as missing:
        await resolver.resolve(_ref(version=9))
    assert (missing.value.reason, missing.value.retryable) == ("ModelNotFound", False)
    with pytest.raises(LabelNotFound) as no_label:
        await resolver.resolve(_ref(label="prod"))
    assert "has no label 'prod' (labels: latest)" in str(no_label.value)
    with pytest.raises(RegistryUnavailable) as down:
        await Resolver(tmp_path / "nowhere").resolve(_ref(label="latest"))
    assert down.value.retryable and "does not exist" in str(down.value)
    with pytest.raises(RegistryNotConfigured) as unset:
        await Resolver(None).resolve(_ref(label="latest"))
    assert "--local-registry-root" in str(unset.value) and not unset.value.retryable
    (root / "faq" / "labels.json").write_text("{not json")
    with pytest.raises(RegistryCorrupt) as corrupt:
        await resolver.resolve(_ref(label="latest"))
    assert corrupt.value.reason == "RegistryCorrupt"


async def test_a_label_move_in_a_local_registry_is_seen_without_waiting_for_the_interval(tmp_path: Path) -> None:
    """The resolver stats the labels file every `watch_every` and re-reads a question whose file changed:
    the askers are woken within about a second, although their answers may be an interval old."""
    root = tmp_path / "reg"
    _register(root, "faq", tmp_path)
    resolver = Resolver(root, watch_every=0.05)
    changed: list[tuple[str, str, str]] = []
    moved = asyncio.Event()

    def on_change(question: tuple[str, str, str]) -> None:
        changed.append(question)
        moved.set()

    resolver.on_change = on_change
    try:
        assert (await resolver.resolve(_ref(label="latest"), max_age=3600)).version == 1
        assert (await resolver.resolve(_ref(version=1), max_age=3600)).version == 1
        await asyncio.sleep(0.3)
        assert resolver.reads == 2 and not changed  # nothing changed: stats only, no reads
        _register(root, "faq", tmp_path)  # `scoring register`: latest -> 2
        await asyncio.wait_for(moved.wait(), timeout=5)
        assert changed == [(root.as_uri(), "faq", "label:latest")]  # the pinned version is not watched
        assert resolver.reads == 3
        assert (await resolver.resolve(_ref(label="latest"), max_age=3600)).version == 2  # no read needed
        assert resolver.reads == 3
        LocalFileRegistry(root).set_label("faq", "prod", 1)  # the file changed, latest's answer did not
        await asyncio.sleep(0.5)
        assert resolver.reads == 4 and len(changed) == 1
        # The registry vanishes (a lost mount) and comes back: both are seen at once too.
        moved.clear()
        root.rename(tmp_path / "away")
        await asyncio.wait_for(moved.wait(), timeout=5)
        with pytest.raises(RegistryUnavailable):
            await resolver.resolve(_ref(label="latest"), max_age=3600)
        moved.clear()
        (tmp_path / "away").rename(root)
        await asyncio.wait_for(moved.wait(), timeout=5)
        assert (await resolver.resolve(_ref(label="latest"), max_age=3600)).version == 2
        # Nobody asks any more: the watch stops.
        resolver.forget((root.as_uri(), "faq", "label:latest"))
        await asyncio.sleep(0.2)
        assert resolver._watcher is None or resolver._watcher.done()
    finally:
        await resolver.close()


def test_config_from_env_and_bad_values() -> None:
    cfg = OperatorConfig.load({
        "SCORING_OPERATOR_LOCAL_REGISTRY_ROOT": "/registry",
        "SCORING_OPERATOR_NAMESPACES": "a, b,",
        "SCORING_OPERATOR_METRICS_PORT": "9000",
        "SCORING_OPERATOR_LOG_LEVEL": "debug",
    })
    assert cfg.local_registry_root == Path("/registry")
    assert cfg.namespaces == ("a", "b")
    assert (cfg.metrics_port, cfg.liveness_port, cfg.log_level) == (9000, 8081, "DEBUG")
    assert cfg.with_overrides(metrics_port=None, liveness_port=7).liveness_port == 7
    with pytest.raises(ConfigError, match="expected a port number"):
        OperatorConfig.load({"SCORING_OPERATOR_METRICS_PORT": "http"})
    with pytest.raises(ConfigError, match="SCORING_OPERATOR_LOG_LEVEL='chatty': log level 'chatty': use one of DEBUG"):
        OperatorConfig.load({}, log_level="chatty")
    with pytest.raises(ConfigError, match="liveness-port 70000: use a TCP port"):
        cfg.with_overrides(liveness_port=70000)


def test_config_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same settings class reads os.environ (what the chart sets), flags passed to load() win."""
    monkeypatch.setenv("SCORING_OPERATOR_NAMESPACES", "x,y")
    monkeypatch.setenv("SCORING_OPERATOR_RUNTIME_IMAGE", "example.com/rt:2")
    monkeypatch.setenv("SCORING_OPERATOR_METRICS_PORT", "")
    cfg = OperatorConfig.load(runtime_image=None, bind_address="127.0.0.1")
    assert (cfg.namespaces, cfg.runtime_image, cfg.metrics_port, cfg.bind_address) == (
        ("x", "y"), "example.com/rt:2", 8080, "127.0.0.1")
    assert OperatorConfig.load(namespaces=("z",)).namespaces == ("z",)


def test_cli_refuses_conflicting_namespace_flags() -> None:
    result = CliRunner().invoke(main, ["--namespace", "a", "--all-namespaces"])
    assert result.exit_code == 2
    assert "give --namespace or --all-namespaces, not both" in result.output


def test_model_tracker_keeps_gauges_consistent() -> None:
    tracker = metrics.ModelTracker()
    tracker.observe(("ns-a", "one"), "Ready", ("faq", 3))
    tracker.observe(("ns-a", "two"), "Failed", None)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'scoring_operator_models{phase="Ready"} 1.0' in text
    assert 'scoring_operator_models{phase="Failed"} 1.0' in text
    assert 'scoring_operator_model_version{model="faq",name="one",namespace="ns-a"} 3.0' in text
    tracker.observe(("ns-a", "one"), "Deploying", ("faq", 4))
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'scoring_operator_model_version{model="faq",name="one",namespace="ns-a"} 4.0' in text
    assert 'scoring_operator_models{phase="Ready"} 0.0' in text
    tracker.forget(("ns-a", "one"))
    tracker.forget(("ns-a", "two"))
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'name="one"' not in text
    assert 'scoring_operator_models{phase="Failed"} 0.0' in text
