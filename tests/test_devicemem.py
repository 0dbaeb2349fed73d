"""Device-memory mode: a limit that counts the page cache, its fallback, and bytes read from storage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecoe.cli import main
from edgecoe.devicemem import (
    MemoryCgroup,
    PageDroppingLoader,
    limit_device_memory,
    own_memory_cgroup,
    storage_read_bytes,
)
from edgecoe.errors import InvalidInputError
from edgecoe.loaders import LoadedExpert


def _cached_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    with path.open("rb") as f:
        os.fsync(f.fileno())  # clean pages: only those can be dropped
        f.read()  # now cached
    return path


def _read_from_storage(path: Path) -> int:
    before = storage_read_bytes()
    path.read_bytes()
    after = storage_read_bytes()
    assert before is not None and after is not None
    return after - before


def _io_accounting_works(tmp_path: Path) -> bool:
    """Whether this kernel accounts reads per process and this file system reads from a device."""
    probe = _cached_file(tmp_path / "probe.bin", 1 << 20)
    return storage_read_bytes() is not None and _read_from_storage(probe) == 0


def test_own_cgroup_is_found_for_v1_and_v2(tmp_path):
    proc = tmp_path / "cgroup"
    (tmp_path / "memory" / "a" / "b").mkdir(parents=True)
    proc.write_text("9:name=systemd:/\n4:memory:/a/b\n0::/\n")
    assert own_memory_cgroup(tmp_path, proc) == MemoryCgroup(tmp_path / "memory" / "a" / "b", 1)
    v2 = tmp_path / "v2"
    (v2 / "user.slice").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu io memory pids\n")
    proc.write_text("0::/user.slice\n")
    assert own_memory_cgroup(v2, proc) == MemoryCgroup(v2 / "user.slice", 2)
    (v2 / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(OSError, match="no memory cgroup"):
        own_memory_cgroup(v2, proc)


def test_cgroup_control_files_are_read_and_written(tmp_path):
    v1 = MemoryCgroup(tmp_path, 1)
    v1.set_limit(123)
    assert (tmp_path / "memory.limit_in_bytes").read_text() == "123" and v1.limit() == 123
    (tmp_path / "memory.failcnt").write_text("7\n")
    (tmp_path / "memory.max_usage_in_bytes").write_text("99\n")
    assert v1.limit_hits() == 7 and v1.peak() == 99
    v2 = MemoryCgroup(tmp_path, 2)
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 0\n")
    assert v2.limit() is None and v2.limit_hits() == 5
    v2.set_limit(456)
    assert v2.limit() == 456


def test_a_limit_below_what_the_process_holds_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="below what this process already holds"), \
            limit_device_memory(1 << 20, []):
        pass


def test_fallback_drops_an_experts_pages_after_each_load(tmp_path):
    files = {"a": _cached_file(tmp_path / "a.onnx", 4 << 20), "b": _cached_file(tmp_path / "b.onnx", 4 << 20)}
    loads = []

    class Recording:
        host = None

        def footprint_bytes(self, expert: str) -> int:
            return 1

        def load(self, expert: str, processor_id: str) -> LoadedExpert[None]:
            loads.append(expert)
            files[expert].read_bytes()  # what a session does: read the model, now cached
            return LoadedExpert(None, 1, 0.0, measured=False)

        def unload(self, expert: str, loaded: LoadedExpert[None]) -> None:
            pass

    check_io = _io_accounting_works(tmp_path)
    with limit_device_memory(64 << 30, files.values(), allow_cgroup=False) as device:
        assert device.mechanism == "fadvise" and "cgroup not requested" in device.note
        loader = device.wrap(Recording(), lambda expert: [files[expert]])
        assert isinstance(loader, PageDroppingLoader)
        if check_io:  # entry dropped every file: the first read comes from storage
            assert _read_from_storage(files["b"]) >= 4 << 20
        loader.load("a", "cpu")
        if check_io:  # the load read "a" into the cache, and the loader dropped it again
            assert _read_from_storage(files["a"]) >= 4 << 20
    assert loads == ["a"]
    assert device.describe()["mechanism"] == "fadvise"


def test_run_under_device_memory_reads_storage_and_leaves_no_cgroup(pcb_small, tmp_path):
    """On a machine with a writable memory cgroup (CI's) the cgroup is used; elsewhere the fallback."""
    out = tmp_path / "report.json"
    before = Path("/proc/self/cgroup").read_text() if Path("/proc/self/cgroup").exists() else ""
    result = CliRunner().invoke(main, ["run", str(pcb_small), "--budget", "25%", "--requests", "60",
                                       "--rate", "300", "--device-memory", "auto", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    memory = report["device_memory"]
    assert report["num_completed"] == 60
    assert memory["mechanism"] in ("cgroup-v1", "cgroup-v2", "fadvise")
    assert memory["limit_bytes"] > memory["process_bytes_at_entry"] > 0
    assert f"({memory['mechanism']})" in result.output and "read from storage while serving" in result.output
    if memory["mechanism"] != "fadvise":
        assert memory["peak_bytes"] <= memory["limit_bytes"]
        # the process is back where it was, and the cgroup it used is gone
        assert Path("/proc/self/cgroup").read_text() == before
        own = own_memory_cgroup()
        assert not [p for p in own.path.iterdir() if p.name.startswith(f"edgecoe-{os.getpid()}-")]
    if _io_accounting_works(tmp_path):  # every expert file started cold: serving read them from storage
        assert report["storage_read_bytes"] > 0


def test_bench_limits_every_entry_but_the_bound(pcb_small):
    from edgecoe import load_package
    from edgecoe.bench import run_bench
    from edgecoe.workload import generate_workload

    pkg = load_package(pcb_small)
    trace = generate_workload(pkg.manifest, num_requests=40, rate_rps=400, seed=3)
    result = run_bench(pkg, trace, entries=["samba", "all-resident"], budget="25%", device_memory="auto")
    limited, bound = result.reports["samba"].device_memory, result.reports["all-resident"].device_memory
    assert limited["mechanism"] in ("cgroup-v1", "cgroup-v2", "fadvise")
    assert limited["limit_bytes"] > result.budget_bytes
    assert bound["mechanism"] == "none" and bound["limit_bytes"] is None
    assert all(r.num_completed == 40 for r in result.reports.values())
    with pytest.raises(InvalidInputError, match="simulation reads no storage"):
        run_bench(pkg, trace, entries=["samba"], simulate=True, device_memory="auto")


def test_cgroups_left_by_a_killed_run_are_removed(tmp_path, monkeypatch):
    import edgecoe.devicemem as devicemem

    parent = MemoryCgroup(tmp_path, 1)
    abandoned, busy = tmp_path / "edgecoe-1-2", tmp_path / "edgecoe-3-4"
    for path, procs in ((abandoned, ""), (busy, "4242\n")):
        path.mkdir()
        (path / "cgroup.procs").write_text(procs)
    removed = []
    monkeypatch.setattr(devicemem, "_remove", lambda cgroup: removed.append(cgroup.path))
    devicemem._remove_abandoned(parent)
    assert removed == [abandoned]  # the one with a process in it stays
