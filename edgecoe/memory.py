"""Process memory: what this process really uses, and giving freed memory back.

Budgets are kept against measured footprints. On Linux we read
``/proc/self/smaps_rollup`` (PSS: shared file pages counted fairly, which
matters for mmapped external weights); RSS is the fallback elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from pathlib import Path

_SMAPS = Path("/proc/self/smaps_rollup")
_libc: ctypes.CDLL | None = None


def process_memory_bytes() -> int:
    """Proportional set size (PSS) of this process in bytes, or RSS where PSS is unavailable."""
    try:
        for line in _SMAPS.read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def rss_bytes() -> int:
    """Current resident set size in bytes (Linux: from /proc/self/statm)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return process_memory_bytes()


def trim_heap() -> bool:
    """``malloc_trim(0)`` only (no garbage collection): cheap enough after each eviction."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def release_freed_memory() -> bool:
    """Return freed heap memory to the OS.

    NOTE: glibc keeps memory of deleted ONNX Runtime sessions in its arenas
    (DESIGN.md §4: +1.5-2.2 GB after 50 sessions); ``malloc_trim(0)`` gives it
    back. Returns False where that call does not exist (musl, macOS, jemalloc
    builds return memory themselves).
    """
    gc.collect()
    return trim_heap()
