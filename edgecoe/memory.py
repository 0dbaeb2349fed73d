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
from collections.abc import Callable
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


def meminfo_bytes(key: str, default: int) -> int:
    """A ``/proc/meminfo`` field (``MemTotal``, ``MemAvailable``) in bytes, or ``default``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return default


def available_memory_bytes() -> int:
    """Memory available to new allocations (4 GiB where it cannot be read)."""
    return meminfo_bytes("MemAvailable", 4 * 1024**3)


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


def measure_footprint(create: Callable[[], object], *, copies: int = 3) -> int | None:
    """Memory one live object from ``create`` holds: PSS growth over ``copies`` live ones.

    Averaging over several live copies evens out allocator noise; the heap is
    trimmed before and after so freed memory from earlier work is not counted.
    Returns None when ``create`` raises.
    """
    release_freed_memory()
    before = process_memory_bytes()
    held = []
    try:
        for _ in range(copies):
            held.append(create())
    except Exception:  # noqa: BLE001 - the caller decides what a failed measurement means
        return None
    per_copy = (process_memory_bytes() - before) // copies
    del held
    release_freed_memory()
    return max(0, per_copy)


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to drop a file's cached pages (for cold-load measurements)."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _nvidia_smi_mib(query: str, device_id: int) -> int | None:
    """One nvidia-smi GPU query in bytes (it reports MiB), or None where unavailable."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits", f"--id={device_id}"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(float(out.strip().splitlines()[0]) * 1024 * 1024)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def cuda_memory_used_bytes(device_id: int) -> int | None:
    """GPU memory in use on ``device_id`` per nvidia-smi, or None where it is unavailable."""
    return _nvidia_smi_mib("memory.used", device_id)


def cuda_total_memory_bytes(device_id: int) -> int | None:
    """Total memory of GPU ``device_id`` per nvidia-smi, or None where it is unavailable."""
    return _nvidia_smi_mib("memory.total", device_id)
