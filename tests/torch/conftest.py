"""Fixtures for the PyTorch tests: a small ResNet written by the example's own script, test images.

Nothing here imports torch at import time; each test module calls `helpers.require_torch()`.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.torch.helpers import REGISTER_PY, TEST_ARCH, encode, pattern_image


@pytest.fixture(scope="session")
def register_mod() -> ModuleType:
    """examples/image-classification/register.py, imported as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("image_classification_register", REGISTER_PY)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="session")
def make_model_dir(
    register_mod: ModuleType, registry_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Path]:
    """Register (once per format/options) what register.py would, and return the stored version directory.

    A version directory of the local registry is exactly what `scoring fetch` copies out, so it can be
    loaded in-process; the round-trip test goes through the real `scoring fetch` instead.
    """
    from scoring_runtime.registry.local import LocalFileRegistry

    cache: dict[tuple[Any, ...], Path] = {}
    registry = LocalFileRegistry(registry_root)

    def make(fmt: str = "state_dict", **overrides: Any) -> Path:
        key = (fmt, *sorted(overrides.items()))
        if key not in cache:
            args = argparse.Namespace(arch=TEST_ARCH, weights=None, format=fmt, seed=0, resize=256, crop=224,
                                      top_k=5)
            for k, v in overrides.items():
                setattr(args, k, v)
            src = tmp_path_factory.mktemp(f"src-{fmt}")
            register_mod.write_model_dir(args, src)
            manifest = registry.register("image-classifier", src)
            cache[key] = registry_root / "image-classifier" / str(manifest.version)
        return cache[key]

    return make


@pytest.fixture
def jpeg() -> bytes:
    return encode(pattern_image(320, 240), "JPEG", quality=90)


@pytest.fixture
def png() -> bytes:
    return encode(pattern_image(200, 300, seed=1), "PNG")
