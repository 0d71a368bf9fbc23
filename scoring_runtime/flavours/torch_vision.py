"""The `torch-image-classification` flavour: images in, top-k labels with probabilities out.

Requests (`/score`):
- raw image bytes with `Content-Type: image/jpeg | image/png | image/webp` (one image);
- JSON `{"image": "<base64>"}` or `{"images": ["<base64>", ...]}`, optional `"top_k": 3`.
V2 `infer`: a BYTES input `image` (base64-encoded files, shape [n]) or an FP32 input `pixels`
already preprocessed (shape [n, 3, crop, crop]); optional request parameter `top_k`.

Decoding and preprocessing happen in `parse_*` (server worker threads); `predict` only stacks the
arrays, runs the network under `torch.inference_mode` on its device and takes the top k.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch

from scoring_runtime.flavours.base import BadRequest, Batching, Job, ModelLoadError, Scorer, decode_json, media_type
from scoring_runtime.flavours.errors import describe
from scoring_runtime.flavours.sklearn_io import artifact_path
from scoring_runtime.flavours.torch_model import (
    TorchOptions,
    TorchThread,
    configure_threads,
    load_module,
    optimize_for_cpu,
    place,
    release_freed_memory,
    resolve_dtype,
    select_device,
)
from scoring_runtime.flavours.v2 import V2Request, V2Tensor
from scoring_runtime.imaging import (
    CONTENT_TYPES,
    ImageLimits,
    ImageTooLarge,
    Preprocess,
    b64decode,
    image_to_input,
)
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
DEFAULT_MAX_IMAGES = 64
INPUT_IMAGE = "image"
INPUT_PIXELS = "pixels"
#: adaptive batching on a GPU: a batch of 32 costs little more than one image
GPU_BATCHING = Batching(max_batch_size=32, max_batch_delay_ms=5.0)
#: on a CPU: ResNet-152 in batches of 2-4 gives ~10-15 % more images/s than one at a time, and with
#: concurrent clients one batch also keeps their requests from slicing into each other's forward passes
#: (docs/benchmarks.md); a batch waits at most 50 ms for company (a third of one image's forward pass),
#: and only under concurrent load: a lone client is never held
CPU_BATCHING = Batching(max_batch_size=4, max_batch_delay_ms=50.0)


def _read_labels(model_dir: Path, flavour: dict[str, Any]) -> list[str]:
    name = str(flavour.get("labels", "labels.json"))
    if not (model_dir / name).exists():
        raise ModelLoadError(f"{model_dir / name} not found: an image classifier needs its class labels "
                             "(flavour.labels)")
    path = artifact_path(model_dir, name, "flavour.labels")  # never a file outside the model directory
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelLoadError(f"{path}: expected a non-empty JSON list of class names")
    return labels


class ImageClassifier(Scorer):
    """A torchvision-style classifier (ResNet and friends) with ImageNet preprocessing."""

    platform: ClassVar[str] = "pytorch"
    score_media_types: ClassVar[tuple[str, ...]] = ("application/json", *CONTENT_TYPES)

    def __init__(
        self,
        manifest: ModelManifest,
        settings: RuntimeSettings,
        module: torch.nn.Module,
        labels: list[str],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(manifest, settings)
        flavour = manifest.flavour
        self.module = module
        self.labels = labels
        self.device = device
        self.dtype = dtype
        self.pre = Preprocess.from_flavour(flavour)
        self.limits = ImageLimits.from_flavour(flavour)
        self.max_images = int((flavour.get("limits") or {}).get("max_images_per_request", DEFAULT_MAX_IMAGES))
        self.default_top_k = self._check_top_k(flavour.get("top_k", DEFAULT_TOP_K), "flavour.top_k")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        return TorchThread.run(cls._load, model_dir, manifest, settings)

    @classmethod
    def _load(cls, model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings) -> Self:
        opts = TorchOptions.from_settings(settings)
        device = select_device(opts.device)
        dtype = resolve_dtype(device, opts.half_precision)
        intra, inter = configure_threads(opts)
        labels = _read_labels(model_dir, manifest.flavour)
        t0 = time.perf_counter()
        module = place(load_module(model_dir, manifest.flavour, num_classes=len(labels)), device, dtype)
        graph = "not rewritten (SCORING_TORCH_OPTIMIZE=0)" if device.type == "cpu" else "cuDNN"
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        elif device.type == "cpu" and opts.optimize:
            module, graph = optimize_for_cpu(module, Preprocess.from_flavour(manifest.flavour).shape)
            release_freed_memory()  # the rewrite's intermediate copies of the weights
        log.info(
            "loaded %s v%s (%s) on %s as %s in %.1f s; torch threads intra=%d inter=%d; graph: %s",
            manifest.name, manifest.version, manifest.flavour.get("format", "state_dict"), device,
            str(dtype).removeprefix("torch."), time.perf_counter() - t0, intra, inter, graph,
        )
        if note := manifest.flavour.get("weights"):
            log.warning("model %s: weights: %s", manifest.name, note)
        return cls(manifest, settings, module, labels, device, dtype)

    # ------------------------------------------------------------------ metadata
    def v2_metadata(self) -> dict[str, Any]:
        c = self.pre.crop
        return {
            "inputs": [
                {"name": INPUT_IMAGE, "datatype": "BYTES", "shape": [-1],
                 "parameters": {"content": "base64-encoded JPEG, PNG or WEBP files"}},
                {"name": INPUT_PIXELS, "datatype": "FP32", "shape": [-1, 3, c, c],
                 "parameters": {"content": "preprocessed images", "preprocess": self.pre.to_flavour()}},
            ],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "probability", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "class_index", "datatype": "INT64", "shape": [-1, -1]},
            ],
            "parameters": {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                           "classes": len(self.labels), "top_k": self.default_top_k},
        }

    # ------------------------------------------------------------------ parsing
    def _check_top_k(self, value: Any, where: str) -> int:
        n = len(self.labels)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n:
            raise BadRequest(f"{where} must be an integer from 1 to {n} (the number of classes), got {describe(value)}")
        return value

    def _images(self, encoded: list[bytes], top_k: int) -> Job:
        if not encoded:
            raise BadRequest("no images in the request; send at least one")
        if len(encoded) > self.max_images:
            raise BadRequest(
                f"{len(encoded)} images in one request, over the limit of {self.max_images}; split the request"
            )
        arrays = [
            image_to_input(data, self.pre, self.limits, what=f"image {i}" if len(encoded) > 1 else "image")
            for i, data in enumerate(encoded)
        ]
        return Job(rows=len(arrays), data=np.stack(arrays), params={"top_k": top_k})

    def _decode_b64_list(self, items: list[Any], what: str) -> list[bytes]:
        # base64 is 4/3 of the bytes: reject an oversized string before decoding it
        limit = self.limits.max_bytes * 4 // 3 + 4
        out = []
        for i, s in enumerate(items):
            where = f"{what}[{i}]" if len(items) > 1 else what
            if isinstance(s, str) and len(s) > limit + 64:
                raise ImageTooLarge(f"{where} is over the limit of {self.limits.max_bytes} bytes")
            out.append(b64decode(s, where))
        return out

    def parse_score(self, body: bytes, content_type: str) -> Job:
        mt = media_type(content_type)
        if mt in CONTENT_TYPES:
            return self._images([body], self.default_top_k)
        doc = decode_json(body)
        if not isinstance(doc, dict) or ("image" in doc) == ("images" in doc):
            raise BadRequest(
                'send {"image": "<base64>"} or {"images": ["<base64>", ...]} (optionally with "top_k"), '
                "or the raw file with Content-Type image/jpeg or image/png"
            )
        unknown = set(doc) - {"image", "images", "top_k"}
        if unknown:
            raise BadRequest(f"unknown fields {sorted(unknown)}; allowed: image, images, top_k")
        top_k = self._check_top_k(doc.get("top_k", self.default_top_k), "top_k")
        if "image" in doc:
            return self._images(self._decode_b64_list([doc["image"]], "image"), top_k)
        images = doc["images"]
        if not isinstance(images, list):
            raise BadRequest('"images" must be a list of base64 strings')
        if len(images) > self.max_images:
            raise BadRequest(f"{len(images)} images in one request, over the limit of {self.max_images}")
        return self._images(self._decode_b64_list(images, "images"), top_k)

    def parse_v2(self, request: V2Request) -> Job:
        top_k = self._check_top_k(request.parameters.get("top_k", self.default_top_k), "parameters.top_k")
        if len(request.inputs) != 1:
            raise BadRequest(
                f"send exactly one input tensor: {INPUT_IMAGE!r} (BYTES, base64 files) or "
                f"{INPUT_PIXELS!r} (FP32 [n,3,{self.pre.crop},{self.pre.crop}]); got {len(request.inputs)}"
            )
        t = request.inputs[0]
        if t.name == INPUT_IMAGE:
            if t.datatype != "BYTES" or t.data.ndim not in (1, 2) or (t.data.ndim == 2 and t.shape[1] != 1):
                raise BadRequest(f"input {INPUT_IMAGE!r} must be BYTES with shape [n] or [n, 1], one file each")
            return self._images(self._decode_b64_list(list(t.data.ravel()), INPUT_IMAGE), top_k)
        if t.name == INPUT_PIXELS:
            want = [3, self.pre.crop, self.pre.crop]
            if t.datatype not in ("FP32", "FP16") or t.data.ndim != 4 or list(t.shape[1:]) != want:
                raise BadRequest(
                    f"input {INPUT_PIXELS!r} must be FP32 with shape [n, {', '.join(map(str, want))}] "
                    f"(preprocessed images), got {t.datatype} {t.shape}"
                )
            n = t.shape[0]
            if not 1 <= n <= self.max_images:
                raise BadRequest(f"input {INPUT_PIXELS!r}: 1 to {self.max_images} images per request, got {n}")
            pixels = np.ascontiguousarray(t.data, dtype=np.float32)
            if not np.isfinite(pixels).all():
                raise BadRequest(f"input {INPUT_PIXELS!r} contains NaN or infinity")
            return Job(rows=n, data=pixels, params={"top_k": top_k})
        raise BadRequest(f"unknown input {t.name!r}; use {INPUT_IMAGE!r} (BYTES) or {INPUT_PIXELS!r} (FP32)")

    # ------------------------------------------------------------------ inference
    def infer(self, pixels: np.ndarray[Any, Any], k: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """(probabilities, class indices), each [n, k]: the model call every request path ends in."""
        return TorchThread.run(self._infer, pixels, k)

    def _infer(self, pixels: np.ndarray[Any, Any], k: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        x = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            x = x.pin_memory()
        with torch.inference_mode():  # on the TorchThread: one model call at a time per process
            x = x.to(self.device, dtype=self.dtype, non_blocking=True)
            logits = self.module(x)
            if isinstance(logits, tuple | list):  # some exported programs return a 1-tuple
                logits = logits[0]
            probs = torch.softmax(logits.float(), dim=1)
            top_p, top_i = torch.topk(probs, k=min(k, probs.shape[1]), dim=1)
            return top_p.cpu().numpy(), top_i.cpu().numpy()

    def predict(self, jobs: list[Job]) -> list[Any]:
        pixels = jobs[0].data if len(jobs) == 1 else np.concatenate([j.data for j in jobs])
        k = max(int(j.params.get("top_k", self.default_top_k)) for j in jobs)
        top_p, top_i = self.infer(pixels, k)
        out = []
        start = 0
        for j in jobs:
            kj = int(j.params.get("top_k", self.default_top_k))
            out.append((top_p[start:start + j.rows, :kj], top_i[start:start + j.rows, :kj]))
            start += j.rows
        return out

    # ------------------------------------------------------------------ responses
    def render_score(self, result: Any, job: Job) -> Any:
        probs, idx = result
        return {
            "predictions": [
                [{"label": self.labels[int(i)], "index": int(i), "probability": round(float(p), 6)}
                 for p, i in zip(prow, irow, strict=True)]
                for prow, irow in zip(probs, idx, strict=True)
            ]
        }

    def render_v2(self, result: Any, job: Job) -> list[V2Tensor]:
        probs, idx = result
        labels = np.empty(idx.shape, dtype=object)
        labels.flat[:] = [self.labels[int(i)] for i in idx.ravel()]
        return [
            V2Tensor.of("label", labels, "BYTES"),
            V2Tensor.of("probability", probs.astype(np.float32), "FP32"),
            V2Tensor.of("class_index", idx.astype(np.int64), "INT64"),
        ]

    def batching_defaults(self) -> Batching | None:
        """Batch by default on a GPU (32 images) and on a CPU (4 images): both measured faster per image
        than one at a time (see GPU_BATCHING, CPU_BATCHING)."""
        return CPU_BATCHING if self.device.type == "cpu" else GPU_BATCHING

    def warmup(self) -> None:
        """A full batch, then a single image: allocators, cuDNN autotuning and caches are ready. On a CPU
        also every batch size up to 8 (and the maximum): oneDNN builds its kernels per input shape, the
        first time a shape comes, which a request would otherwise pay for."""
        default = self.batching_defaults()
        size = max(1, int(self.settings.max_batch_size or (default.max_batch_size if default else 1)))
        sizes = sorted({size, 1, *(range(2, min(size, 8) + 1) if self.device.type == "cpu" else ())}, reverse=True)
        for n in sizes:
            t0 = time.perf_counter()
            self.infer(np.zeros((n, *self.pre.shape), dtype=np.float32), self.default_top_k)
            log.info("warm-up: batch of %d in %.0f ms", n, (time.perf_counter() - t0) * 1000)
