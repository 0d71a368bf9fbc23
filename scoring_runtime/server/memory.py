"""Process-wide memory settings of the server: glibc malloc arenas.

glibc gives every new thread its own malloc arena (up to 8 per core). A thread that has never
allocated much (the large-request lane's thread, a pool thread starting under load) then takes all
its memory as fresh pages: scoring one maximal FAQ request (256 x 4,000 characters, 1 MB) raised the
server's peak RSS by ~7 MiB that way, against ~1.5 MiB when every thread shares the main arena,
whose free lists already hold what loading the model left behind. `SCORING_MALLOC_ARENAS` (default
1) caps the arenas; 0 leaves glibc's default, and an explicit `MALLOC_ARENA_MAX` in the environment
wins. Threads mostly allocate under the GIL here, and glibc's per-thread caches serve the small
allocations without the arena lock, so one arena costs no measurable throughput (bench/hostile.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: mallopt's parameter number for the arena limit (glibc malloc.h)
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; True when the cap was set. No-op (False)
    for 0, when `MALLOC_ARENA_MAX` is set (glibc read it at start-up), or off glibc."""
    if arenas <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their mallopt does not know M_ARENA_MAX
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))
