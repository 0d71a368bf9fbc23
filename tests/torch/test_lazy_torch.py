"""The base runtime never imports torch: serving a scikit-learn model must work without the [torch] extra.

Not skipped without torch (then it is trivially true); it matters where torch *is* installed, where
an accidental module-level `import torch` would otherwise go unnoticed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

CHECK = """
import sys
import scoring_runtime.cli, scoring_runtime.server.app, scoring_runtime.server.run, scoring_runtime.batching
import scoring_runtime.flavours
heavy = sorted(m for m in ("torch", "torchvision", "PIL") if m in sys.modules)
print(",".join(heavy))
"""


def test_base_runtime_imports_no_torch_pillow_or_torchvision() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported by the base runtime: {out.stdout.strip()}"
