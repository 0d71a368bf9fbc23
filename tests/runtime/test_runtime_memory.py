"""The server's malloc arena cap (scoring_runtime/server/memory.py): threads share the main arena."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from scoring_runtime.server.memory import limit_malloc_arenas

_CHILD = """
import ctypes, sys, threading
from scoring_runtime.server.memory import limit_malloc_arenas
print(limit_malloc_arenas(int(sys.argv[1])), flush=True)
def work():
    for _ in range(50):
        bytearray(200_000)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def _arenas(limit: int) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(limit)], capture_output=True, text=True, env=env,
                         check=True, timeout=60)
    return out.stdout.strip(), out.stderr.count("Arena ")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_threads_share_one_arena_when_capped_and_get_their_own_otherwise() -> None:
    assert _arenas(1) == ("True", 1)
    said, arenas = _arenas(0)  # 0: glibc's default, one arena per new thread (up to 8 per core)
    assert said == "False" and arenas > 1


def test_an_explicit_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(1) is False
