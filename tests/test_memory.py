from __future__ import annotations

import gc
import sys

import pytest

from edgecoe.memory import process_memory_bytes, rss_bytes, trim_heap
from edgecoe.package import load_package
from edgecoe.providers import create_session


def test_memory_readings_are_positive():
    assert process_memory_bytes() > 0 and rss_bytes() > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_evicted_sessions_memory_comes_back_after_trim(pcb_small):
    pkg = load_package(pcb_small, verify="quick")
    names = list(pkg.experts)
    trim_heap()
    start = rss_bytes()
    sessions = [create_session(pkg.model_path(names[i % len(names)])) for i in range(20)]
    grown = rss_bytes() - start
    del sessions
    gc.collect()
    assert trim_heap()
    left = rss_bytes() - start
    assert grown > 50e6
    assert left < 0.3 * grown, f"{left / 1e6:.0f} MB of {grown / 1e6:.0f} MB still resident after malloc_trim"


def test_pss_and_system_memory_are_consistent():
    from edgecoe.memory import available_memory_bytes, total_memory_bytes

    assert 0 < process_memory_bytes() <= rss_bytes() * 1.05  # PSS counts shared pages fractionally
    assert 0 < available_memory_bytes() <= total_memory_bytes()


def test_gpu_memory_through_nvml(monkeypatch):
    """The NVML path, with a stand-in for the library (no GPU here): used and total of
    the asked device, NVML shut down again, and None when NVML fails or is absent."""
    import types

    from edgecoe import memory

    calls = []

    class NVMLError(Exception):
        pass

    def handle(index):  # type: ignore[no-untyped-def]
        if index > 0:
            raise NVMLError("no such device")
        return "gpu0"

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3 << 30, total=12 << 30))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert memory.cuda_memory_used_bytes(0) == 3 << 30 and memory.cuda_total_memory_bytes(0) == 12 << 30
    assert calls == ["init", "shutdown", "init", "shutdown"]
    assert memory.cuda_total_memory_bytes(1) is None and calls[-1] == "shutdown"
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert memory.cuda_total_memory_bytes(0) is None


def test_heap_trimmer_trims_after_evictions_at_most_once_per_interval():
    from edgecoe.memory import HeapTrimmer

    calls = []
    trimmer = HeapTrimmer(min_interval_s=3600.0, trim=lambda: calls.append(1) or True)
    assert not trimmer.after(0)  # nothing evicted yet
    assert trimmer.after(2) and len(calls) == 1
    assert not trimmer.after(5)  # within the interval
    eager = HeapTrimmer(min_interval_s=0.0, trim=lambda: calls.append(1) or True)
    assert eager.after(1) and not eager.after(1) and eager.after(2)
    assert len(calls) == 3
