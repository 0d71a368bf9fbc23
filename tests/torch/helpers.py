"""Shared helpers of the PyTorch tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from PIL import Image

REPO = Path(__file__).resolve().parents[2]
REGISTER_PY = REPO / "examples" / "image-classification" / "register.py"
TEST_ARCH = "resnet18"  # the example defaults to resnet152; resnet18 keeps the tests fast


def require_torch() -> None:
    """Skip the calling test module unless the `[torch]` extra is installed."""
    why = "needs the [torch] extra (pip install 'scoring-operator[torch]'): {} is not installed"
    for mod in ("torch", "torchvision", "PIL"):
        pytest.importorskip(mod, reason=why.format(mod))


def pattern_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour pattern with some noise: compresses like a photo, differs per seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 120 * np.sin(x / (7 + seed) + y / 13)
    g = 127 + 120 * np.cos(y / (9 + seed))
    b = 255 * (x + y) / (width + height)
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()
