"""Loading PyTorch models: the three formats, safe weights loading, device, precision and threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.torch.helpers import require_torch

require_torch()
pytestmark = pytest.mark.torch

import torch  # noqa: E402

from scoring_runtime.flavours import load_scorer  # noqa: E402
from scoring_runtime.flavours.errors import ModelLoadError  # noqa: E402
from scoring_runtime.flavours.torch_model import (  # noqa: E402
    TorchOptions,
    TorchThread,
    load_module,
    load_state_dict,
    optimize_for_cpu,
    resolve_dtype,
    select_device,
    thread_counts,
)
from scoring_runtime.flavours.torch_vision import ImageClassifier  # noqa: E402
from scoring_runtime.settings import RuntimeSettings  # noqa: E402


def scorer_for(model_dir: Path, **settings: object) -> ImageClassifier:
    scorer = load_scorer(RuntimeSettings(model_dir=model_dir, **settings))  # type: ignore[arg-type]
    assert isinstance(scorer, ImageClassifier)
    return scorer


@pytest.mark.timeout(120)
def test_state_dict_torchscript_and_export_load_and_agree(make_model_dir: Callable[..., Path]) -> None:
    pixels = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    results = {}
    for fmt in ("state_dict", "torchscript", "export"):
        scorer = scorer_for(make_model_dir(fmt))
        assert scorer.device.type == "cpu" and scorer.dtype == torch.float32
        probs, idx = scorer.infer(pixels, k=5)
        assert probs.shape == idx.shape == (3, 5)
        assert np.all(np.diff(probs, axis=1) <= 0), "top-k must be sorted by probability"
        results[fmt] = probs, idx
    # Same seeded weights in three formats: the same predictions.
    for fmt in ("torchscript", "export"):
        np.testing.assert_array_equal(results[fmt][1], results["state_dict"][1])
        np.testing.assert_allclose(results[fmt][0], results["state_dict"][0], rtol=1e-4, atol=1e-6)


class _Payload:
    """Pickles to a call of Path.touch: loading it unsafely would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_weights_only_loading_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, evil)
    with pytest.raises(ModelLoadError, match="no pickled code"):
        load_state_dict(evil)
    assert not marker.exists(), "the pickled payload ran"
    with pytest.raises(ModelLoadError, match="no pickled code"):
        load_module(tmp_path, {"format": "state_dict", "file": "model.pt", "arch": "resnet18"}, 1000)
    assert not marker.exists()


def test_state_dict_that_does_not_fit_the_arch_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(10, 512)}, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="does not fit resnet18"):
        load_module(tmp_path, {"format": "state_dict", "file": "w.pt", "arch": "resnet18"}, 1000)
    with pytest.raises(ModelLoadError, match="not a torchvision classification model"):
        load_module(tmp_path, {"format": "state_dict", "file": "w.pt", "arch": "resnet9000"}, 1000)
    with pytest.raises(ModelLoadError, match=r"unknown flavour\.format"):
        load_module(tmp_path, {"format": "onnx", "file": "w.pt"}, 1000)
    with pytest.raises(ModelLoadError, match="outside the model directory"):
        load_module(tmp_path, {"format": "state_dict", "file": "../w.pt", "arch": "resnet18"}, 1000)
    with pytest.raises(ModelLoadError, match="not a TorchScript archive"):
        load_module(tmp_path, {"format": "torchscript", "file": "w.pt"}, 1000)


def test_device_selection() -> None:
    assert select_device("auto", cuda_available=False).type == "cpu"
    assert select_device("auto", cuda_available=True, cuda_count=1).type == "cuda"
    assert select_device("CPU", cuda_available=True, cuda_count=1).type == "cpu"
    assert select_device("cuda:1", cuda_available=True, cuda_count=2) == torch.device("cuda", 1)
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        select_device("cuda", cuda_available=False)
    with pytest.raises(ModelLoadError, match="only 1 CUDA device"):
        select_device("cuda:3", cuda_available=True, cuda_count=1)
    with pytest.raises(ModelLoadError, match="use auto, cpu, cuda"):
        select_device("tpu", cuda_available=False)


def test_half_precision_is_fp16_on_gpu_and_ignored_with_a_warning_on_cpu(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_dtype(torch.device("cuda"), True) == torch.float16
    assert resolve_dtype(torch.device("cuda"), False) == torch.float32
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype(torch.device("cpu"), True) == torch.float32
    assert "ignoring it" in caplog.text


def test_thread_counts_split_cores_between_workers() -> None:
    assert thread_counts(16, 1) == (16, 2)
    assert thread_counts(16, 4) == (4, 2)
    assert thread_counts(8, 3) == (2, 2)
    assert thread_counts(2, 4) == (1, 1)  # never 0, never more than the cores allow
    assert thread_counts(1.5, 1) == (1, 1)  # a fractional cgroup quota rounds down
    assert thread_counts(16, 4, threads=6, interop=3) == (6, 3)


def test_options_come_from_settings_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORING_DEVICE", "CPU")
    monkeypatch.setenv("SCORING_HALF_PRECISION", "true")
    monkeypatch.setenv("SCORING_TORCH_THREADS", "3")
    opts = TorchOptions.from_settings(SimpleNamespace(workers=2))
    assert (opts.device, opts.half_precision, opts.threads, opts.workers) == ("cpu", True, 3, 2)
    opts = TorchOptions.from_settings(SimpleNamespace(device="cuda:0", half_precision=False, torch_threads=1))
    assert (opts.device, opts.half_precision, opts.threads) == ("cuda:0", False, 1)
    assert opts.optimize is True  # the CPU rewrite is on unless turned off
    monkeypatch.setenv("SCORING_TORCH_OPTIMIZE", "0")
    assert TorchOptions.from_settings(SimpleNamespace()).optimize is False


def test_cpu_model_is_rewritten_for_onednn_and_answers_like_the_original(
    make_model_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pixels = np.random.default_rng(3).normal(size=(3, 3, 224, 224)).astype(np.float32)
    monkeypatch.setenv("SCORING_DEVICE", "cpu")
    with caplog.at_level(logging.INFO, logger="scoring_runtime.flavours.torch_vision"):
        fast = scorer_for(make_model_dir())
    assert isinstance(fast.module, torch.fx.GraphModule)  # rewritten: batch norms folded, oneDNN layout
    assert "graph: oneDNN" in caplog.text
    monkeypatch.setenv("SCORING_TORCH_OPTIMIZE", "false")
    plain = scorer_for(make_model_dir())
    assert not isinstance(plain.module, torch.fx.GraphModule)
    p_fast, i_fast = fast.infer(pixels, 5)
    p_plain, i_plain = plain.infer(pixels, 5)
    np.testing.assert_array_equal(i_fast, i_plain)
    np.testing.assert_allclose(p_fast, p_plain, rtol=1e-4, atol=1e-6)


class _DataDependent(torch.nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y


class _Drifting(torch.nn.Module):
    """Its batch norm's running statistics are NaN: the folded convolution cannot agree with it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        assert self.bn.running_var is not None  # track_running_stats defaults to True
        self.bn.running_var.fill_(float("nan"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


@pytest.mark.parametrize(("module", "why"), [
    (_DataDependent(), "not rewritten (TraceError"),
    (_Drifting(), "not rewritten (outputs differ"),
])
def test_a_module_the_rewrite_cannot_handle_is_served_as_it_is(module: torch.nn.Module, why: str) -> None:
    module.eval()
    served, note = optimize_for_cpu(module, (3, 16, 16))
    assert served is module
    assert note.startswith(why), note


def test_explicit_cuda_without_a_gpu_fails_the_load_clearly(
    make_model_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU-only failure path cannot be observed")
    monkeypatch.setenv("SCORING_DEVICE", "cuda")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        scorer_for(make_model_dir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_half_precision_agrees_with_cpu_fp32(
    make_model_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels = np.random.default_rng(1).normal(size=(4, 3, 224, 224)).astype(np.float32)
    cpu = scorer_for(make_model_dir())
    monkeypatch.setenv("SCORING_DEVICE", "cuda")
    monkeypatch.setenv("SCORING_HALF_PRECISION", "1")
    gpu = scorer_for(make_model_dir(), max_batch_size=4)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    gpu.warmup()
    p_cpu, _ = cpu.infer(pixels, 1)
    p_gpu, _ = gpu.infer(pixels, 1)
    np.testing.assert_allclose(p_gpu, p_cpu, atol=2e-3)


def test_thread_settings_apply_where_the_model_runs(
    make_model_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenMP thread settings are per application thread: they must be made on the thread that runs
    # the model, whichever thread (batcher, request pool) asks for a prediction.
    before = TorchThread.run(torch.get_num_threads)
    monkeypatch.setenv("SCORING_TORCH_THREADS", "1")
    seen: list[tuple[str, int]] = []
    try:
        scorer = scorer_for(make_model_dir())
        forward = scorer.module.forward

        def spy(x: torch.Tensor) -> torch.Tensor:
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return forward(x)

        scorer.module.forward = spy
        pixels = np.zeros((1, 3, 224, 224), dtype=np.float32)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: scorer.infer(pixels, 1), range(3)))
        scorer.infer(pixels, 1)
    finally:
        TorchThread.run(torch.set_num_threads, before)
    assert len(seen) == 4
    assert {name for name, _ in seen} == {"torch-work_0"}, seen
    assert {n for _, n in seen} == {1}, seen


def test_labels_outside_the_model_directory_are_refused(make_model_dir: Callable[..., Path], tmp_path: Path) -> None:
    import json
    import shutil

    from scoring_runtime.manifest import ModelManifest

    d = tmp_path / "model"
    shutil.copytree(make_model_dir(), d)
    labels = json.loads((d / "labels.json").read_text(encoding="utf-8"))
    (tmp_path / "elsewhere.json").write_text(json.dumps(labels), encoding="utf-8")  # a valid file, but outside
    manifest = ModelManifest.model_validate_json((d / "model.json").read_bytes())
    for ref in ("../elsewhere.json", str(tmp_path / "elsewhere.json")):
        tampered = manifest.model_copy(update={"flavour": manifest.flavour | {"labels": ref}})
        (d / "model.json").write_text(tampered.to_json(), encoding="utf-8")
        with pytest.raises(ModelLoadError, match=r"flavour\.labels .* points outside the model directory"):
            scorer_for(d)
    (d / "labels.json").unlink()
    (d / "model.json").write_text(manifest.to_json(), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="needs its class labels"):
        scorer_for(d)
