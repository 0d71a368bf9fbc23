"""Flavours: which `Scorer` class serves a model, chosen from its manifest.

A manifest picks its flavour with `flavour.kind`; without one, `(framework, task)` decides.
Flavour modules are imported lazily, so serving a scikit-learn model never imports torch.
To add a flavour, add one line to `BUILTIN` (and, optionally, one to `DEFAULT_KIND`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from scoring_runtime.flavours.base import Batching, Job, Scorer
from scoring_runtime.flavours.errors import BadRequest, ModelLoadError, UnsupportedMediaType
from scoring_runtime.manifest import ModelManifest, load_manifest
from scoring_runtime.settings import RuntimeSettings

__all__ = [
    "BUILTIN",
    "DEFAULT_BATCHING",
    "DEFAULT_KIND",
    "BadRequest",
    "Batching",
    "Job",
    "ModelLoadError",
    "Scorer",
    "UnsupportedMediaType",
    "batching_for",
    "flavour_class",
    "flavour_kind",
    "load_scorer",
]

#: flavour kind -> "module:Class"
BUILTIN: dict[str, str] = {
    "sklearn-faq": "scoring_runtime.flavours.sklearn_faq:FAQScorer",
    "sklearn-tabular": "scoring_runtime.flavours.sklearn_tabular:TabularScorer",
    "torch-image-classification": "scoring_runtime.flavours.torch_vision:ImageClassifier",
}

#: (framework, task) -> flavour kind, for manifests without `flavour.kind`
DEFAULT_KIND: dict[tuple[str, str], str] = {
    ("sklearn", "faq-matching"): "sklearn-faq",
    ("sklearn", "tabular"): "sklearn-tabular",
    ("sklearn", "classification"): "sklearn-tabular",
    ("sklearn", "regression"): "sklearn-tabular",
    ("torch", "image-classification"): "torch-image-classification",
}


#: flavour kind -> adaptive batching used when SCORING_MAX_BATCH_SIZE is unset, for flavours that
#: gain from it (measured with bench/run.py, see docs/benchmarks.md); absent: batching off.
#: The FAQ matcher scores questions ~9x faster per row in batches of 16 than one at a time on one CPU
#: core, ~10x in batches of 32 and ~12x in batches of 64 (at twice the latency of 32); a lone
#: client is never held (the batcher waits only under concurrent load), and 2 ms is below one
#: batch's model time.
DEFAULT_BATCHING: dict[str, Batching] = {
    # one question costs ~2 ms: a lone one is scored on the event loop, without thread hand-offs
    "sklearn-faq": Batching(max_batch_size=32, max_batch_delay_ms=2.0, inline_max_rows=1),
}
#: the delay used when only the batch size is set
DEFAULT_BATCH_DELAY_MS = 2.0


def batching_for(scorer: Scorer, settings: RuntimeSettings) -> Batching:
    """The batching a server uses for `scorer`: the settings where set, else the flavour's default."""
    own = getattr(scorer, "batching_defaults", None)  # duck-typed scorers (tests, plugins) may lack it
    default = own() if callable(own) else None
    if default is None:
        cls = type(scorer)
        kind = next((k for k, v in BUILTIN.items() if v == f"{cls.__module__}:{cls.__qualname__}"), None)
        default = DEFAULT_BATCHING.get(kind or "")
    size = settings.max_batch_size if settings.max_batch_size is not None else (
        default.max_batch_size if default else 1)
    delay = settings.max_batch_delay_ms if settings.max_batch_delay_ms is not None else (
        default.max_batch_delay_ms if default else DEFAULT_BATCH_DELAY_MS)
    return Batching(max_batch_size=min(size, settings.max_queue_rows), max_batch_delay_ms=delay,
                    inline_max_rows=default.inline_max_rows if default else 0)


def flavour_kind(manifest: ModelManifest) -> str:
    """The flavour kind a manifest asks for, or a ModelLoadError listing the known ones."""
    kind = manifest.flavour.get("kind")
    if kind is None:
        kind = DEFAULT_KIND.get((manifest.framework, manifest.task))
    if not isinstance(kind, str) or kind not in BUILTIN:
        known = ", ".join(sorted(BUILTIN))
        raise ModelLoadError(
            f"model {manifest.name!r} (framework={manifest.framework!r}, task={manifest.task!r}) names no known "
            f"flavour (flavour.kind={manifest.flavour.get('kind')!r}); "
            f"set flavour.kind in model.json to one of: {known}"
        )
    return kind


def flavour_class(manifest: ModelManifest) -> type[Scorer]:
    """Import the Scorer class for a manifest (lazy: only the module that is needed)."""
    kind = flavour_kind(manifest)
    module_name, _, attr = BUILTIN[kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelLoadError(
            f"flavour {kind!r} cannot be imported ({e}); install the extra it needs "
            "(pip install 'scoring-operator[sklearn]' or '[torch]')"
        ) from e
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise ModelLoadError(f"flavour {kind!r}: {BUILTIN[kind]} is not a Scorer subclass")
    return cls


def load_scorer(settings: RuntimeSettings, model_dir: Path | None = None) -> Scorer:
    """Read `model.json` from the model directory and load it with its flavour."""
    model_dir = model_dir or settings.model_dir
    try:
        manifest = load_manifest(model_dir)
    except FileNotFoundError as e:
        raise ModelLoadError(str(e)) from None
    except ValueError as e:
        raise ModelLoadError(f"{model_dir}/model.json is not a valid manifest: {e}") from None
    return flavour_class(manifest).load(model_dir, manifest, settings)
