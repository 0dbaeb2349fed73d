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
