"""The engine on its own: built from a manifest, a profile, a config and a recording fake
loader — no ONNX Runtime, no threads, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgecoe.config import RuntimeConfig
from edgecoe.engine import CacheTotals, apply_budget, build_engine, plan_executors
from edgecoe.errors import InvalidInputError
from edgecoe.loaders import LoadedExpert
from edgecoe.loaders.simulated import CostModelLoader
from edgecoe.package.manifest import (
    ArgmaxRoute,
    EntryRule,
    ExpertRecord,
    FileRecord,
    Manifest,
    MetadataField,
    TensorSpec,
)
from edgecoe.profile import ArchitectureCost, DeviceProfile, ProcessorProfile

SIZES = {"a": 100, "b": 200, "c": 300, "d": 400}  # expert -> footprint bytes
PROBABILITY = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.35}


def manifest() -> Manifest:
    """a, b, c are preliminary (picked by kind); a and b go on to d."""
    spec = [TensorSpec(name="x", dtype="float32", shape=["batch", 4])]
    experts = {}
    for name, size in SIZES.items():
        route = ArgmaxRoute(kind="argmax", output="x", classes={1: ["d"]}) if name in "ab" else None
        fields: dict[str, object] = {
            "architecture": f"arch-{name}", "inputs": spec, "outputs": spec,
            "model": FileRecord(path=f"experts/{name}.onnx", bytes=size, sha256="0" * 64),
            "usage_probability": PROBABILITY[name]}
        if route is not None:
            fields["route"] = route
        experts[name] = ExpertRecord.model_validate(fields)
    return Manifest(name="toy", inputs=[TensorSpec(name="x", dtype="float32", shape=[4])],
                    metadata={"kind": MetadataField(values=["a", "b", "c"])},
                    entry=EntryRule(key="kind", experts={"a": "a", "b": "b", "c": "c"}), experts=experts)


class RecordingLoader:
    """A fake loader: footprints from SIZES, every call recorded, handles are strings."""

    host = None

    def __init__(self, *, fail: frozenset[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (load|unload, expert, processor)
        self.fail = fail

    def footprint_bytes(self, expert: str) -> int:
        return SIZES[expert]

    def load(self, expert: str, processor_id: str) -> LoadedExpert[str]:
        self.calls.append(("load", expert, processor_id))
        if expert in self.fail:
            raise InvalidInputError(f"{expert} is corrupt")
        return LoadedExpert(f"session:{expert}", SIZES[expert], 5.0, measured=True)

    def unload(self, expert: str, loaded: LoadedExpert[str]) -> None:
        self.calls.append(("unload", expert, loaded.handle))


def profile(*, budget: int = 10_000, executors: int = 2, processors: tuple[str, ...] = ("cpu",)) -> DeviceProfile:
    return DeviceProfile(name="toy", memory="uma",
                         processors=[ProcessorProfile(id=p, budget_bytes=budget, num_executors=executors)
                                     for p in processors])


def test_a_share_budget_is_a_share_of_the_loaders_footprints():
    engine = build_engine(manifest(), profile(), RuntimeConfig(policy="samba", budget="50%"), RecordingLoader())
    assert engine.total_footprint_bytes == 1000
    assert engine.caches["cpu"].budget_bytes == 500 == engine.profile.processors[0].budget_bytes


def test_budget_applies_to_every_processor_and_none_keeps_the_profiles():
    prof = profile(budget=777, processors=("cuda:0", "cpu"))
    assert [p.budget_bytes for p in apply_budget(prof, "1kB", total_bytes=1).processors] == [1000, 1000]
    assert apply_budget(prof, None, total_bytes=1) is prof
    with pytest.raises(InvalidInputError, match="budget 'lots'"):
        apply_budget(prof, "lots", total_bytes=1)


def test_executors_follow_the_preset():
    prof = profile(executors=3, processors=("cuda:0", "cpu"))
    assert [(e.processor_id, e.kind) for e in plan_executors(prof, RuntimeConfig(policy="coserve"))] == \
        [("cuda:0", "cuda")] * 3 + [("cpu", "cpu")] * 3
    assert len(plan_executors(prof, RuntimeConfig(policy="samba"))) == 2  # one per processor
    assert len(plan_executors(prof, RuntimeConfig(policy="coserve", num_executors=1))) == 2


def test_preload_fills_the_budget_by_usage_probability_through_the_loader():
    loader = RecordingLoader()
    engine = build_engine(manifest(), profile(budget=650), RuntimeConfig(policy="coserve"), loader)
    # by probability: a (100), d (400), b (200: 700 > 650, skipped), c (300: 800, skipped)
    assert loader.calls == [("load", "a", "cpu"), ("load", "d", "cpu")]
    assert engine.caches["cpu"].members() == {"a", "d"} and engine.caches["cpu"].used_bytes == 500
    totals = engine.totals()
    assert totals.load_seconds >= 0.0  # measured: the preload's time, not part of any run's report
    assert replace(totals, load_seconds=0.0) == CacheTotals(misses=2, hits=0, evictions=0, bytes_loaded=500,
                                                             prefetches=0)


def test_an_expert_that_can_never_fit_is_named_at_build():
    with pytest.raises(InvalidInputError, match=r"expert 'd' needs 400 bytes.*processor cpu.*2 expert\(s\) can never fit"):
        build_engine(manifest(), profile(budget=250), RuntimeConfig(policy="samba"), RecordingLoader())


def test_measured_loads_refine_the_cost_model_and_modelled_ones_do_not():
    loader = RecordingLoader()
    engine = build_engine(manifest(), profile(), RuntimeConfig(policy="samba"), loader)
    before = engine.cost.load_ms("a", "cpu")
    engine.caches["cpu"].acquire("a")
    assert engine.cost.load_ms("a", "cpu") != before  # 5 ms measured, folded in
    costs = {f"arch-{n}": {"cpu": ArchitectureCost(k_ms=1, b_ms=1, max_batch=4, load_ms=50, footprint_bytes=s)}
             for n, s in SIZES.items()}
    simulated = build_engine(manifest(), profile().model_copy(update={"costs": costs}), RuntimeConfig(policy="samba"),
                             CostModelLoader(manifest(), profile().model_copy(update={"costs": costs})))
    before = simulated.cost.load_ms("a", "cpu")
    got = simulated.caches["cpu"].acquire("a")
    assert got is not None and got.handle.load_ms == 50 and not got.handle.measured
    assert simulated.cost.load_ms("a", "cpu") == before


def test_the_future_reaches_a_lookahead_policy_through_the_protocol():
    engine = build_engine(manifest(), profile(budget=400), RuntimeConfig(policy="edgecoe", eviction="belady",
                                                                          preload=False), RecordingLoader())
    engine.set_future(["a", "b", "c", "a", "b"])
    cache = engine.caches["cpu"]
    for expert in ("a", "b"):
        cache.acquire(expert)
        cache.release(expert)
    cache.acquire("c")  # needs 300: evict b (next used after a) rather than a; 100 + 300 fit
    assert cache.members() == {"a", "c"}


def test_prefetches_are_counted_apart_from_switches():
    engine = build_engine(manifest(), profile(budget=1000), RuntimeConfig(policy="samba"), RecordingLoader())
    assert engine.prefetch("cpu", ["d", "a"], protect=frozenset()) == ["d", "a"]
    report = engine.report(num_requests=0, latencies_ms=[], wall_s=1.0, since=CacheTotals.ZERO, errors={})
    assert (report.num_switches, report.num_prefetches, report.bytes_loaded) == (0, 2, 500)


def test_a_failing_loader_restores_accounting():
    engine = build_engine(manifest(), profile(budget=1000), RuntimeConfig(policy="coserve"),
                          RecordingLoader(fail=frozenset({"d"})))
    assert "d" not in engine.caches["cpu"].members()  # preload skipped it
    assert engine.caches["cpu"].stats.num_load_failures == 1
    engine.caches["cpu"].check()


def test_report_is_one_shape_for_every_driver():
    engine = build_engine(manifest(), profile(), RuntimeConfig(policy="samba"), RecordingLoader())
    report = engine.report(num_requests=3, latencies_ms=[10.0, 30.0], wall_s=2.0, since=engine.totals(),
                           errors={"boom": 1}, simulated=True)
    assert (report.num_completed, report.num_failed, report.throughput_rps) == (2, 1, 1.0)
    assert report.latency_ms["max"] == 30.0 and report.simulated and report.load_s == 0.0
    assert report.executors == {"cpu": 1} and report.budget_bytes == {"cpu": 10_000}
