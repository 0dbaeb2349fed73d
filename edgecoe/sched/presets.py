"""Named policy presets: a scheduler, an eviction policy and the extras that go with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Preset:
    """What a policy name turns on.

    Attributes:
        scheduler: scheduling policy name (see ``edgecoe.sched.SCHEDULERS``).
        eviction: eviction policy name (see ``edgecoe.cache.EVICTION_POLICIES``).
        preload: fill memory with the most likely experts at start-up.
        prefetch: load a running expert's likely subsequent experts into free room.
            "auto": only on processors whose loads do not compete with execution
            for the same cores (CUDA, CoreML). NOTE: on a 2-core CPU, prefetch
            cost 8-20 % throughput on pcb (session creation and inference share
            the cores), so edgecoe leaves it off there.
        batching: batch tasks for one expert (False: one task at a time). FCFS baselines
            batch only tasks that happen to be adjacent in the queue.
        parallel: run the profile's executor count (False: one executor per processor).
        description: one line for ``--help`` and reports.
    """

    scheduler: str
    eviction: str
    preload: bool
    prefetch: bool | str
    batching: bool
    parallel: bool
    description: str


PRESETS: dict[str, Preset] = {
    "samba": Preset("fcfs", "lru", preload=False, prefetch=False, batching=True, parallel=False,
                    description="Samba-CoE baseline: first-come-first-served, LRU eviction, one executor"),
    "samba-fifo": Preset("fcfs", "fifo", preload=False, prefetch=False, batching=True, parallel=False,
                         description="Samba-CoE with FIFO eviction"),
    "samba-parallel": Preset("round-robin", "lru", preload=False, prefetch=False, batching=True, parallel=True,
                             description="Samba-CoE Parallel: as many executors, round-robin, LRU"),
    "coserve": Preset("coserve", "coserve", preload=True, prefetch=False, batching=True, parallel=True,
                      description="CoServe as published: assign/arrange/split, two-stage eviction, preload"),
    "edgecoe": Preset("edgecoe", "coserve", preload=True, prefetch="auto", batching=True, parallel=True,
                      description="everything we have: coserve + earliest-finish assign, delay bound, prefetch"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    return _lookup(PRESETS, name, "policy")


def prefetch_enabled(preset: Preset, processor_kind: str) -> bool:
    """Whether ``preset`` prefetches on a processor of ``processor_kind``."""
    if preset.prefetch == "auto":
        return processor_kind != "cpu"
    return bool(preset.prefetch)


@dataclass(frozen=True, slots=True)
class BenchEntry:
    """A configuration the bench compares, by name: a preset plus overrides.

    Attributes:
        policy: the preset it starts from.
        overrides: RuntimeConfig fields it changes (eviction, scheduler, preload, prefetch).
        all_resident: its budget holds every expert (the bound), whatever the bench's budget.
        description: one line for ``--help`` and reports.
    """

    policy: str
    overrides: tuple[tuple[str, object], ...] = ()
    all_resident: bool = False
    description: str = ""


#: Every name ``edgecoe bench`` accepts: the presets, two references, and the ablation steps.
BENCH_ENTRIES: dict[str, BenchEntry] = {
    **{name: BenchEntry(name, description=preset.description) for name, preset in PRESETS.items()},
    "belady": BenchEntry("edgecoe", (("eviction", "belady"),),
                         description="edgecoe's scheduling with offline-optimal eviction (a reference)"),
    "all-resident": BenchEntry("edgecoe", (("preload", True),), all_resident=True,
                               description="every expert preloaded, nothing ever switched: the bound"),
    "none": BenchEntry("samba-parallel", description="ablation: several executors, round-robin, LRU"),
    "+expert-management": BenchEntry("samba-parallel", (("eviction", "coserve"), ("preload", True)),
                                     description="ablation: + CoServe's eviction and preload"),
    "+arranging": BenchEntry("samba-parallel", (("eviction", "coserve"), ("preload", True), ("scheduler", "arrange")),
                             description="ablation: + arranging and splitting"),
    "+assigning": BenchEntry("coserve", description="ablation: + assigning (CoServe as published)"),
    "+prefetch": BenchEntry("coserve", (("prefetch", True),), description="ablation: + prefetch"),
}
#: What ``edgecoe bench`` runs by default.
DEFAULT_BENCH_ENTRIES = ("samba", "samba-fifo", "samba-parallel", "coserve", "edgecoe", "belady", "all-resident")
#: The paper's ablation order.
ABLATION = ("none", "+expert-management", "+arranging", "+assigning", "+prefetch")


def get_bench_entry(name: str) -> BenchEntry:
    """The bench entry called ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    return _lookup(BENCH_ENTRIES, name, "bench entry")


def _lookup(registry: dict[str, T], name: str, what: str) -> T:
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(registry)}") from None
