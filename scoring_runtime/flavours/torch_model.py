"""Loading a PyTorch model for inference: file formats, device, precision and CPU threads.

Only the torch flavours import this module (torch is the optional `[torch]` extra).

Formats (manifest `flavour.format`, file `flavour.file`):
- `state_dict`: a torchvision architecture name (`flavour.arch`) plus weights read with
  `torch.load(weights_only=True)`, which refuses pickled code: the safe default;
- `export`: a `torch.export.save` program (the PyTorch-recommended format);
- `torchscript`: a `torch.jit.save` archive (deprecated by PyTorch, still loadable).
`export` and `torchscript` archives are programs: serve them only from a registry you trust.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from scoring_runtime.flavours.errors import ModelLoadError

log = logging.getLogger(__name__)

FORMATS = ("state_dict", "export", "torchscript")
ENV_DEVICE = "SCORING_DEVICE"
ENV_THREADS = "SCORING_TORCH_THREADS"
ENV_HALF = "SCORING_HALF_PRECISION"
ENV_OPTIMIZE = "SCORING_TORCH_OPTIMIZE"
T = TypeVar("T")


@dataclass(frozen=True)
class TorchOptions:
    """Inference knobs from the runtime settings (or `SCORING_*` env when settings lack them)."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    half_precision: bool = False
    threads: int = 0  # intra-op threads; 0: cores / workers
    interop_threads: int = 0  # 0: min(2, threads)
    workers: int = 1
    optimize: bool = True  # CPU: fold batch norms into convolutions and run them on oneDNN (see optimize_for_cpu)

    @classmethod
    def from_settings(cls, settings: Any) -> TorchOptions:
        def pick(name: str, env: str, default: Any) -> Any:
            value = getattr(settings, name, None)
            if value is None:
                value = os.environ.get(env, default)
            return value

        def flag(value: Any) -> bool:
            return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)

        half = flag(pick("half_precision", ENV_HALF, False))
        return cls(
            device=str(pick("device", ENV_DEVICE, "auto")).strip().lower() or "auto",
            half_precision=bool(half),
            threads=int(pick("torch_threads", ENV_THREADS, 0)),
            interop_threads=int(getattr(settings, "torch_interop_threads", None) or 0),
            workers=max(1, int(getattr(settings, "workers", 1) or 1)),
            optimize=flag(pick("torch_optimize", ENV_OPTIMIZE, True)),
        )


def select_device(requested: str, cuda_available: bool | None = None, cuda_count: int | None = None) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit device that is absent is an error."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if cuda_available else 0
    req = requested.strip().lower() or "auto"
    if req == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    try:
        dev = torch.device(req)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not cuda_available:
            raise ModelLoadError(
                f"device {requested!r} requested but CUDA is not available (no GPU, no driver, or a CPU-only "
                "torch build); set SCORING_DEVICE=auto or cpu, or schedule the pod on a GPU node"
            )
        if dev.index is not None and dev.index >= cuda_count:
            raise ModelLoadError(f"device {requested!r} requested but only {cuda_count} CUDA device(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {requested!r} requested but Apple MPS is not available")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"unsupported device {requested!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_dtype(device: torch.device, half_precision: bool) -> torch.dtype:
    """fp16 on a GPU when asked; on CPU the flag is ignored with a warning (fp16 is slow there)."""
    if not half_precision:
        return torch.float32
    if device.type in ("cuda", "mps"):
        return torch.float16
    log.warning(
        "half_precision is set but the model runs on %s: ignoring it and using float32 "
        "(fp16 only pays off on a GPU)", device
    )
    return torch.float32


def available_cpus() -> float:
    """CPUs this process may use: the affinity mask, capped by a cgroup v2 CPU quota (a pod's limit)."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def thread_counts(cpus: float, workers: int, threads: int = 0, interop: int = 0) -> tuple[int, int]:
    """(intra-op, inter-op) threads per worker: the CPUs split between workers, at least 1 each."""
    intra = threads if threads > 0 else max(1, math.floor(cpus / max(1, workers)))
    inter = interop if interop > 0 else max(1, min(2, intra))
    return intra, inter


def configure_threads(opts: TorchOptions) -> tuple[int, int]:
    """Set torch's thread pools once per process, so several workers do not oversubscribe the CPUs."""
    intra, inter = thread_counts(available_cpus(), opts.workers, opts.threads, opts.interop_threads)
    torch.set_num_threads(intra)
    try:
        torch.set_num_interop_threads(inter)
    except RuntimeError:  # only settable before the first parallel work in this process
        inter = torch.get_num_interop_threads()
    return intra, inter


def _artifact(model_dir: Path, flavour: dict[str, Any]) -> Path:
    name = flavour.get("file")
    if not isinstance(name, str) or not name:
        raise ModelLoadError("manifest flavour.file is missing: it names the weights or program file to load")
    path = (model_dir / name).resolve()
    if model_dir.resolve() not in path.parents:
        raise ModelLoadError(f"flavour.file {name!r} points outside the model directory")
    if not path.is_file():
        raise ModelLoadError(f"{path} not found (flavour.file); is the model directory complete?")
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights only: `weights_only=True` refuses any pickled object that is not a tensor or container."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for code, RuntimeError for a corrupt zip
        raise ModelLoadError(
            f"{path.name}: not a plain state_dict ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "only tensors are accepted here, no pickled code. Save weights with torch.save(model.state_dict(), f)"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"{path.name}: expected a dict of tensor names to tensors (a state_dict)")
    return sd


def build_torchvision(arch: str, num_classes: int) -> torch.nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise ModelLoadError(
            f"flavour.arch {arch!r} is not a torchvision classification model; known: {', '.join(sorted(known))}"
        )
    model: torch.nn.Module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    return model


def load_module(model_dir: Path, flavour: dict[str, Any], num_classes: int) -> torch.nn.Module:
    """The model on CPU in eval mode, from whichever format the manifest names."""
    fmt = flavour.get("format", "state_dict")
    if fmt not in FORMATS:
        raise ModelLoadError(f"unknown flavour.format {fmt!r}: use one of {', '.join(FORMATS)}")
    path = _artifact(model_dir, flavour)
    module: torch.nn.Module
    if fmt == "state_dict":
        arch = flavour.get("arch")
        if not isinstance(arch, str):
            raise ModelLoadError("flavour.arch is required for format state_dict (e.g. resnet152)")
        module = build_torchvision(arch, num_classes)
        try:
            module.load_state_dict(load_state_dict(path), strict=True)
        except RuntimeError as e:
            raise ModelLoadError(f"{path.name} does not fit {arch} with {num_classes} classes: {e}") from None
    elif fmt == "export":
        try:
            module = torch.export.load(path).module()
        except Exception as e:
            raise ModelLoadError(f"{path.name}: not a torch.export program: {e}") from None
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; it still loads
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:
                raise ModelLoadError(f"{path.name}: not a TorchScript archive: {e}") from None
        log.info("%s: TorchScript is deprecated by PyTorch; prefer --format export or state_dict", path.name)
    if fmt != "export":  # an exported program's module has no eval(); it is traced in eval mode already
        module.eval()
    return module


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move the model to its device and precision; parameters never need gradients here."""
    module = module.to(device=device, dtype=dtype) if dtype != torch.float32 else module.to(device)
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def optimize_for_cpu(module: torch.nn.Module, sample_shape: tuple[int, ...]) -> tuple[torch.nn.Module, str]:
    """The module rewritten for CPU inference, or the module itself where that does not apply; and why.

    `torch.fx.experimental.optimization.optimize_for_inference` traces the module, folds every batch
    norm into the convolution before it and keeps activations in oneDNN's blocked layout between the
    convolutions (weights reordered once, at load). ResNet-152 on 2 CPUs measured ~15-20 % more
    images/s at batch 1 and 4 (docs/benchmarks.md). The rewrite is checked on a random batch against the
    original module (logits within 1e-4 of their scale); a module that cannot be traced (TorchScript,
    data-dependent control flow) or disagrees is served as it is, with a log line saying so.

    Memory: the rewrite copies the weights on its way (ResNet-152: the process peaks at ~2x its plain
    size during the load); the copies are freed and handed back to the OS afterwards (`malloc_trim`),
    leaving ~15 % more resident memory than the plain module.
    """
    if isinstance(module, torch.jit.ScriptModule):
        return module, "not rewritten (TorchScript)"
    from torch.fx.experimental import optimization

    x = torch.randn(2, *sample_shape, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fx warns about attributes it treats as constants
            fast = optimization.optimize_for_inference(module)
            with torch.inference_mode():
                want, got = module(x), fast(x)
    except Exception as e:  # not traceable, or an op oneDNN lacks: serve the module as it is
        return module, f"not rewritten ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if isinstance(want, tuple | list):
        want, got = want[0], got[0]
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return module, "not rewritten (the rewritten module's output has another shape)"
    scale = max(1.0, float(want.abs().max()))
    diff = float((want - got).abs().max())
    if not diff <= 1e-4 * scale:  # (NaN fails too)
        return module, f"not rewritten (outputs differ by {diff:.3g} at a scale of {scale:.3g})"
    return fast, "oneDNN (batch norms folded into convolutions)"


def release_freed_memory() -> None:
    """Hand memory freed inside the process back to the OS (glibc keeps it otherwise): after a load
    that made and dropped copies of the weights, the resident size shrinks to what is still used. The
    dropped copies sit in reference cycles (torch.fx graphs point back at their modules): collect first."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl has no malloc_trim)
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class TorchThread:
    """One thread for all of this process's PyTorch CPU work: loading, warm-up and every model call.

    With OpenMP (PyTorch's CPU thread pool), every application thread that runs a parallel op gets
    its own pool of worker threads. Once the pools together hold more threads than there are CPUs,
    libgomp stops keeping idle workers spinning, and each of the hundreds of parallel regions in a
    forward pass pays a wake-up: ResNet-152 on 2 CPUs measured ~30 % slower when warm-up and
    inference ran on different threads. Funnelling everything through one thread keeps one hot pool.
    """

    _lock = threading.Lock()
    _executor: ThreadPoolExecutor | None = None

    @classmethod
    def run(cls, fn: Callable[..., T], *args: Any) -> T:
        if threading.current_thread().name.startswith("torch-work"):
            return fn(*args)
        with cls._lock:
            if cls._executor is None:
                cls._executor = ThreadPoolExecutor(1, thread_name_prefix="torch-work")
            executor = cls._executor
        return executor.submit(fn, *args).result()
