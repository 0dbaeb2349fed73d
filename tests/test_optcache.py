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
    first = cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    second = cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    assert calls[0] == ("m.onnx", "all", True) and calls[1][1:] == ("none", False) and calls[1][0] != "m.onnx"
    assert (cache.misses, cache.hits) == (1, 1)
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == 1 and not list((tmp_path / "cache").glob(".*"))
    np.testing.assert_allclose(first.run(None, {"x": x})[0], second.run(None, {"x": x})[0], rtol=1e-6)


def test_changed_content_misses_same_content_hits(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    os.utime(model, ns=(1, 1))  # same content, new identity: hashed again, and the entry still serves
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    assert (cache.misses, cache.hits) == (1, 1)
    onnx.save_model(_mlp(8, 16, 3, seed=2), str(model))  # other content: another entry
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    assert (cache.misses, cache.hits) == (2, 1)


def test_a_package_cannot_poison_another_packages_entry(tmp_path):
    """Package B declares A's checksum, size and mtime for a different model: the cache keys
    by real content, so A still gets an entry built from A's model."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a, b = a_dir / "m.onnx", b_dir / "m.onnx"
    onnx.save_model(_mlp(8, 16, 3, seed=1), str(a))
    onnx.save_model(_mlp(8, 16, 3, seed=9), str(b))
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    x = np.ones((1, 8), np.float32)
    cache.session(b, ["CPUExecutionProvider"], recording_create(calls))  # the attacker loads first
    from_cache = cache.session(a, ["CPUExecutionProvider"], recording_create(calls))
    direct = create_session(a)
    np.testing.assert_allclose(from_cache.run(None, {"x": x})[0], direct.run(None, {"x": x})[0], rtol=1e-6)
    assert cache.misses == 2  # A's content had no entry yet: built from A


def test_a_source_swapped_while_building_is_not_cached(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    inner = recording_create(calls)

    def swapping(source, level, save):  # type: ignore[no-untyped-def]
        session = inner(source, level, save)
        if save is not None:  # after ORT read it: the package changes its file
            onnx.save_model(_mlp(8, 16, 3, seed=5), str(model))
        return session

    cache.session(model, ["CPUExecutionProvider"], swapping)
    assert not list((tmp_path / "cache").glob("*.onnx"))


def test_an_entry_changed_on_disk_fails_its_check(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    (entry,) = (tmp_path / "cache").glob("*.onnx")
    other = tmp_path / "other.onnx"
    onnx.save_model(_mlp(8, 16, 3, seed=7), str(other))
    entry.write_bytes(other.read_bytes())  # a valid model, but not the one that was built
    fresh = OptimizedModelCache(tmp_path / "cache")  # another process: checks each entry once
    fresh.session(model, ["CPUExecutionProvider"], recording_create(calls))
    assert (fresh.misses, fresh.hits) == (1, 0)


def test_cache_dir_is_private_and_a_shared_one_is_not_used(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    cache, calls = OptimizedModelCache(shared), []
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    assert calls == [("m.onnx", "all", False)] * 2 and not list(shared.iterdir())


def test_corrupt_entry_is_rebuilt(tmp_path, model):
    cache, calls = OptimizedModelCache(tmp_path / "cache"), []
    cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    (entry,) = (tmp_path / "cache").glob("*.onnx")
    entry.write_bytes(b"\x00garbage")
    session = cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
    assert session.run(None, {"x": np.ones((1, 8), np.float32)})[0].shape == (1, 3)
    assert cache.misses == 2 and onnx.load(str(entry)).graph.node  # rebuilt, valid again


def test_unwritable_cache_dir_still_serves(tmp_path, model):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache, calls = OptimizedModelCache(blocker / "cache"), []
    session = cache.session(model, ["CPUExecutionProvider"], recording_create(calls))
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


def test_a_later_process_trusts_an_unchanged_entry_without_hashing_it(tmp_path, model, monkeypatch):
    """An entry whose file identity is the one recorded when it was written loads without being
    hashed again (it cost 50-100 ms per first switch); a rewritten one is hashed and refused."""
    import edgecoe.optcache as optcache

    OptimizedModelCache(tmp_path / "cache").session(model, ["CPUExecutionProvider"], recording_create([]))
    (entry,) = (tmp_path / "cache").glob("*.onnx")
    hashed: list[str] = []
    real = optcache.sha256_file
    monkeypatch.setattr(optcache, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    fresh = OptimizedModelCache(tmp_path / "cache")
    fresh.session(model, ["CPUExecutionProvider"], recording_create([]))
    assert (fresh.hits, fresh.misses) == (1, 0) and entry.name not in hashed
    data = bytearray(entry.read_bytes())
    data[-1] ^= 1  # same size, one bit changed: a new mtime and ctime
    entry.write_bytes(bytes(data))
    again = OptimizedModelCache(tmp_path / "cache")
    again.session(model, ["CPUExecutionProvider"], recording_create([]))
    assert entry.name in hashed and (again.hits, again.misses) == (0, 1)
