"""Process memory: what this process really uses, and giving freed memory back.

Budgets are kept against measured footprints. Process and system memory come
from psutil: the proportional set size (PSS: shared file pages counted
fairly, which matters for mmapped external weights) where the OS reports it
(Linux), else the unique set size (macOS), else RSS. GPU memory comes from
NVIDIA's management library (``nvidia-ml-py``, in the ``cuda`` extra).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

_libc: ctypes.CDLL | None = None


def process_memory_bytes() -> int:
    """Proportional set size (PSS) of this process in bytes; USS or RSS where PSS is unavailable."""
    process = psutil.Process()
    try:
        full = process.memory_full_info()
    except (psutil.AccessDenied, OSError):
        return int(process.memory_info().rss)
    return int(getattr(full, "pss", None) or getattr(full, "uss", None) or full.rss)


def rss_bytes() -> int:
    """Current resident set size in bytes."""
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """The most memory this process has held resident, in bytes.

    NOTE: Linux's ``ru_maxrss`` survives ``exec``: a process started from a large parent
    reports the parent's size at fork time as its own peak. ``VmHWM`` belongs to the
    process's own address space, so it is read first; ``ru_maxrss`` only where there is
    no ``/proc`` (macOS reports it in bytes, Linux in KiB).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def total_memory_bytes() -> int:
    """Physical memory of this machine."""
    return int(psutil.virtual_memory().total)


def available_memory_bytes() -> int:
    """Memory available to new allocations without swapping."""
    return int(psutil.virtual_memory().available)


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


class HeapTrimmer:
    """Gives evicted sessions' memory back to the OS after evictions, rate-limited.

    NOTE: glibc keeps a deleted session's memory in its arenas; trimming after
    every eviction would cost more than it frees, so at most once per
    ``min_interval_s`` and only when evictions happened since the last trim.
    Thread-safe.
    """

    def __init__(self, *, min_interval_s: float = 0.05, trim: Callable[[], bool] | None = None) -> None:
        self.min_interval_s = min_interval_s
        self._trim = trim or trim_heap
        self._lock = threading.Lock()
        self._evictions_at_trim = 0
        self._last_trim = float("-inf")

    def after(self, num_evictions: int) -> bool:
        """Trim if ``num_evictions`` (a running count) grew and the interval passed; True when it trimmed."""
        now = time.monotonic()
        with self._lock:
            if num_evictions == self._evictions_at_trim or now - self._last_trim < self.min_interval_s:
                return False
            self._evictions_at_trim = num_evictions
            self._last_trim = now
        self._trim()
        return True


def release_freed_memory() -> bool:
    """Return freed heap memory to the OS.

    NOTE: glibc keeps memory of deleted ONNX Runtime sessions in its arenas
    (docs/background.md: +1.5-2.2 GB after 50 sessions); ``malloc_trim(0)`` gives it
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
    except Exception:
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
        # NOTE: dirty pages are not dropped: a file written moments ago (a new optimized-cache
        # entry, a freshly built package) is flushed first, or its reads never reach storage.
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _nvml_memory(device_id: int) -> tuple[int, int] | None:
    """(used, total) bytes of GPU ``device_id`` from NVML, or None where it is unavailable."""
    try:
        import pynvml
    except ImportError:  # nvidia-ml-py comes with the cuda extra
        return None
    try:
        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(device_id))
            return int(info.used), int(info.total)
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None


def cuda_memory_used_bytes(device_id: int) -> int | None:
    """GPU memory in use on ``device_id``, or None where NVML is unavailable."""
    memory = _nvml_memory(device_id)
    return None if memory is None else memory[0]


def cuda_total_memory_bytes(device_id: int) -> int | None:
    """Total memory of GPU ``device_id``, or None where NVML is unavailable."""
    memory = _nvml_memory(device_id)
    return None if memory is None else memory[1]
