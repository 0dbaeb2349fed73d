"""The per-machine optimized-model cache: a miss builds an entry, a hit loads it with
optimization off, anything wrong with the cache costs only the speed-up."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import _mlp, wide_package

from edgecoe.config import RuntimeConfig
from edgecoe.optcache import OptimizedModelCache
from edgecoe.package import load_package
from edgecoe.providers import create_session
from edgecoe.runtime import Runtime


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save_model(_mlp(8, 16, 3, seed=1), str(path))
    return path


def recording_create(calls: list):  # type: ignore[no-untyped-def]
    def create(source, level, save):  # type: ignore[no-untyped-def]
        calls.append((Path(source).name, level, save is not None))
        return create_session(source, optimization=level, save_optimized_to=save)
    return create


def test_miss_builds_an_entry_then_hits_load_it_unoptimized(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    x = np.ones((2, 8), np.float32)
    first = cache.session(model, "a" * 64, ["CPUExecutionProvider"], recording_create(calls))
    second = cache.session(model, "a" * 64, ["CPUExecutionProvider"], recording_create(calls))
    assert calls[0] == ("m.onnx", "all", True) and calls[1][1:] == ("none", False) and calls[1][0] != "m.onnx"
    assert (cache.misses, cache.hits) == (1, 1)
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1 and not list((tmp_path / "cache").glob(".*"))
    np.testing.assert_allclose(first.run(None, {"x": x})[0], second.run(None, {"x": x})[0], rtol=1e-6)


def test_changed_file_or_providers_miss(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    cache.session(model, "a" * 64, ["CPUExecutionProvider"], recording_create(calls))
    os.utime(model, ns=(1, 1))  # same content, new mtime: a file changed on disk is never served stale
    cache.session(model, "a" * 64, ["CPUExecutionProvider"], recording_create(calls))
    cache.session(model, "b" * 64, ["CPUExecutionProvider"], recording_create(calls))
    assert cache.misses == 3 and cache.hits == 0


def test_corrupt_entry_is_rebuilt(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    cache.session(model, "a" * 64, ["CPUExecutionProvider"], recording_create(calls))
    (entry,) = (tmp_path / "cache").glob("*.onnx")
    entry.write_bytes(b"\x00garbage")
    session = cache.session(model, "a" * 64, ["CPUExecutionProvider"], recording_create(calls))
    assert session.run(None, {"x": np.ones((1, 8), np.float32)})[0].shape == (1, 3)
    assert cache.misses == 2 and onnx.load(str(entry)).graph.node  # rebuilt, valid again


def test_unwritable_cache_dir_still_serves(tmp_path, model):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache, calls = OptimizedModelCache(blocker / "cache"), []
    session = cache.session(model, "a" * 64, ["CPUExecutionProvider"], recording_create(calls))
    assert session.run(None, {"x": np.ones((1, 8), np.float32)})[0].shape == (1, 3)
    assert calls == [("m.onnx", "all", False)]


def test_runtime_results_are_the_same_with_and_without_the_cache(tmp_path):
    pkg = load_package(wide_package(tmp_path / "pkg", num_first=4, num_second=2), verify="quick")
    rng = np.random.default_rng(0)
    items = [{"x": rng.standard_normal(8).astype(np.float32)} for _ in range(40)]
    outputs = {}
    for cached in (False, True):
        config = RuntimeConfig(policy="edgecoe", optimized_cache=cached, cache_dir=str(tmp_path / "c"))
        with Runtime(pkg, config=config) as runtime:
            futures = [runtime.submit(x, {"kind": f"k{i % 4}"}) for i, x in enumerate(items)]
            outputs[cached] = [f.result(timeout=60) for f in futures]
            if cached:
                assert runtime.loader.optcache is not None and runtime.loader.optcache.hits > 0
    for a, b in zip(outputs[False], outputs[True], strict=False):
        assert a.path == b.path
        np.testing.assert_allclose(a.outputs["y"], b.outputs["y"], rtol=1e-5, atol=1e-6)
