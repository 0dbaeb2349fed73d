from __future__ import annotations

from pathlib import Path

from edgecoe.cache.host import HostStore
from edgecoe.config import RuntimeConfig
from edgecoe.package import load_package
from edgecoe.profile import DeviceProfile, ProcessorProfile
from edgecoe.runtime import Runtime
from edgecoe.workload import generate_workload


def test_host_store_keeps_bytes_within_budget_lru():
    reads = []

    def read(path: Path) -> bytes:
        reads.append(path.name)
        return b"x" * int(path.name)

    host = HostStore(25, read=read)
    host.get("a", Path("10"))
    host.get("b", Path("10"))
    host.get("a", Path("10"))  # hit; a is now most recent
    host.get("c", Path("10"))  # 30 > 25: b (least recent) goes
    assert reads == ["10", "10", "10"]
    assert host.contains("a") and host.contains("c") and not host.contains("b")
    assert host.used_bytes == 20 <= host.budget_bytes
    assert (host.stats.num_hits, host.stats.num_misses, host.stats.num_evictions) == (1, 3, 1)
    big = host.get("d", Path("40"))  # larger than the budget: served, not kept
    assert len(big) == 40 and not host.contains("d")


def test_numa_runtime_loads_through_host_tier(pcb_small):
    pkg = load_package(pcb_small, verify="quick")
    profile = DeviceProfile(name="numa-test", memory="numa", host_budget_bytes=60_000_000,
                            processors=[ProcessorProfile(id="cpu", budget_bytes=10**9, num_executors=1)])
    trace = generate_workload(pkg.manifest, num_requests=60, dist="uniform", seed=2)
    with Runtime(pkg, config=RuntimeConfig(policy="samba", budget="30%"), profile=profile) as runtime:
        report = runtime.run(trace)
        assert runtime.loader.host is not None
        assert runtime.loader.host.stats.num_hits > 0 and runtime.loader.host.stats.num_evictions > 0
    assert report.num_completed == 60
    assert report.peak_bytes["host"] <= report.budget_bytes["host"] == 60_000_000


def test_numa_preload_stages_the_files_sessions_are_made_from(pcb_small):
    """Start-up fills host memory with what a later switch reads: on CPU the optimized-cache entry,
    never the package's model under the same expert (a switch would then run it unoptimized)."""
    pkg = load_package(pcb_small, verify="quick")
    profile = DeviceProfile(name="numa-test", memory="numa", host_budget_bytes=60_000_000,
                            processors=[ProcessorProfile(id="cpu", budget_bytes=10**9, num_executors=1)])
    with Runtime(pkg, config=RuntimeConfig(policy="coserve", budget="30%"), profile=profile) as runtime:
        loader, host = runtime.loader, runtime.loader.host
        assert host is not None and host.used_bytes > 0
        resident = runtime.caches["cpu"].members()
        staged = [e for e in pkg.experts if e not in resident and host.contains(str(loader._source(e, "cpu")[0]))]
        assert staged  # the next likely experts are in host memory, as the files a switch reads
        assert all(loader._source(e, "cpu")[1] == "none" for e in staged)
        assert not any(host.contains(str(pkg.model_path(e))) for e in pkg.experts)
        trace = generate_workload(pkg.manifest, num_requests=40, dist="uniform", seed=3)
        assert runtime.run(trace).num_completed == 40
