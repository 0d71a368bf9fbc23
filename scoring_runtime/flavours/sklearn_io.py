"""Loading scikit-learn artifacts safely: skops with an allow-list, pickle only on explicit opt-in.

Why an allow-list on top of skops: skops refuses to build types it does not trust, and tells us
which ones a file needs (`get_untrusted_types`). Passing that list straight back as `trusted=`
would trust whatever the file asks for, and recording it in model.json alone does not help either:
the manifest sits in the registry next to the artifact, so whoever can write one can write both.
So a type is built only if it was recorded at registration (`flavour.trusted_types`: the file
was not swapped for one needing more) AND the runtime itself allows it: scikit-learn estimator
classes, numpy ufuncs, scipy sparse containers, this package's own model classes, plus what the
deployer adds with `SCORING_TRUSTED_TYPES`. A file asking for `builtins.eval`, `os.system` or any
other type outside that list is refused before anything in it is constructed.
"""

from __future__ import annotations

import importlib
import logging
import pickle
from pathlib import Path
from typing import Any

from scoring_runtime.flavours.errors import ModelLoadError
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.settings import RuntimeSettings

log = logging.getLogger("scoring_runtime.model")

#: Exact names the runtime trusts beyond the rules in `is_allowed_type`.
ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        "scoring_runtime.flavours.faq_pipeline.FAQMatcher",
        # the fitted trees of HistGradientBoosting* (node arrays; not an estimator, so listed by name)
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "scipy.sparse._csr.csr_matrix",
        "scipy.sparse._csc.csc_matrix",
        "scipy.sparse._coo.coo_matrix",
        "scipy.sparse._csr.csr_array",
        "scipy.sparse._csc.csc_array",
        "collections.OrderedDict",
        "collections.defaultdict",
    }
)
SKOPS_FORMATS = ("skops",)
PICKLE_FORMATS = ("pickle", "joblib")


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None


def is_allowed_type(name: str, extra: frozenset[str] = frozenset()) -> bool:
    """True when the runtime lets skops construct `name` (see the module docstring)."""
    if name in ALLOWED_TYPES or name in extra:
        return True
    if name.startswith("sklearn."):
        from sklearn.base import BaseEstimator

        obj = _resolve(name)
        return isinstance(obj, type) and issubclass(obj, BaseEstimator)
    if name.startswith("numpy."):
        import numpy as np

        return isinstance(_resolve(name), np.ufunc)
    return False


def untrusted_types(path: Path) -> list[str]:
    """The types a skops file needs beyond skops' defaults; record them at registration."""
    import skops.io as sio

    return sorted(sio.get_untrusted_types(file=path))


def dump_skops(obj: Any, path: Path, compress: bool = True) -> list[str]:
    """Save `obj` with skops; returns the list to store as `flavour.trusted_types`.

    `compress=False` stores the arrays as they are: a bigger file that saves and loads much faster
    (for models made of large numeric arrays, where deflate gains little and costs seconds).
    """
    import zipfile

    import skops.io as sio

    # skops' JSON schema is verbose (a large vocabulary is megabytes) and compresses ~10x.
    sio.dump(obj, path, compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
    return untrusted_types(path)


def artifact_path(model_dir: Path, rel: str, setting: str) -> Path:
    """A file the manifest names, which must exist inside the model directory."""
    path = (model_dir / rel).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ModelLoadError(f"{setting} {rel!r} points outside the model directory")
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the manifest's {setting} names a file the model directory lacks")
    return path


def load_estimator(model_dir: Path, manifest: ModelManifest, settings: RuntimeSettings, default_file: str) -> Any:
    """Load the estimator file a manifest names (`flavour.file`), per its `flavour.format`."""
    cfg = manifest.flavour
    fmt = str(cfg.get("format", "skops")).lower()
    path = artifact_path(model_dir, str(cfg.get("file", default_file)), "flavour.file")
    trained_with = cfg.get("sklearn_version")
    if trained_with:
        import sklearn

        if trained_with != sklearn.__version__:
            log.warning("model trained with scikit-learn %s, serving with %s: results may differ; retrain or pin "
                        "the version", trained_with, sklearn.__version__)
    if fmt in SKOPS_FORMATS:
        return _load_skops(path, cfg.get("trusted_types", []), settings)
    if fmt in PICKLE_FORMATS:
        return _load_pickle(path, fmt, settings)
    raise ModelLoadError(f"unknown flavour.format {fmt!r}: use 'skops' (or 'pickle'/'joblib' with --allow-pickle)")


def _load_skops(path: Path, recorded: Any, settings: RuntimeSettings) -> Any:
    import skops.io as sio

    if not isinstance(recorded, list) or not all(isinstance(t, str) for t in recorded):
        raise ModelLoadError(
            "flavour.trusted_types must be a list of type names (as skops.io.get_untrusted_types gives)"
        )
    try:
        needed = untrusted_types(path)
    except Exception as e:
        raise ModelLoadError(f"{path.name} is not a readable skops file: {e}") from e
    unrecorded = [t for t in needed if t not in recorded]
    if unrecorded:
        raise ModelLoadError(
            f"{path.name} needs types not recorded in model.json at registration: {', '.join(unrecorded)}; "
            "the artifact does not match its manifest: re-register it (record skops.io.get_untrusted_types)"
        )
    extra = frozenset(settings.trusted_types)
    refused = [t for t in needed if not is_allowed_type(t, extra)]
    if refused:
        raise ModelLoadError(
            f"{path.name} needs types this runtime does not trust: {', '.join(refused)}. Constructing them could "
            "run code from the file. If you wrote them and reviewed them, allow them with SCORING_TRUSTED_TYPES"
        )
    try:
        return sio.load(path, trusted=needed)
    except Exception as e:
        raise ModelLoadError(f"cannot load {path.name} with skops: {type(e).__name__}: {e}") from e


def _load_pickle(path: Path, fmt: str, settings: RuntimeSettings) -> Any:
    if not settings.allow_pickle:
        raise ModelLoadError(
            f"{path.name} is a {fmt} file, and loading one runs any code inside it; refused. Save the model with "
            "skops (skops.io.dump) instead, or if you trust its source start the server with --allow-pickle "
            "(SCORING_ALLOW_PICKLE=1)"
        )
    log.warning(
        "UNSAFE: loading %s file %s because --allow-pickle is set: it can run arbitrary code; "
        "only serve pickles from a source you trust",
        fmt,
        path.name,
    )
    try:
        if fmt == "joblib":
            import joblib

            return joblib.load(path)
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - explicit, logged opt-in
    except Exception as e:
        raise ModelLoadError(f"cannot unpickle {path.name}: {type(e).__name__}: {e}") from e
