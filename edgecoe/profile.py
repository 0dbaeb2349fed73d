"""Device profiles: what a device offers and what experts cost on it (versioned JSON).

A profile says, per processor, how much memory resident experts may use and
how many executors to run, and per architecture x processor kind what
execution (latency ~ K*n + B) and loading cost. The runtime takes budgets,
batch limits and cost estimates from here; ``edgecoe profile``
measures them. Unknown fields are errors; every error names its field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from edgecoe.errors import ProfileError
from edgecoe.schema import StrictModel, load_document

PROFILE_VERSION: Literal[1] = 1
MAX_PROFILE_BYTES = 16 * 1024 * 1024
ProcessorKind = Literal["cpu", "cuda", "coreml"]


class ProcessorProfile(StrictModel):
    """One processor: where its experts run and how much of its memory they may use."""

    id: str = Field(pattern=r"^(cpu|cuda:\d+|coreml)$", description="cpu, cuda:N or coreml")
    budget_bytes: int = Field(gt=0, description="memory for resident expert sessions on this processor")
    num_executors: int = Field(default=1, ge=1, le=64)
    intra_op_threads: int = Field(default=0, ge=0, description="ORT threads per executor; 0 = ORT default")
    provider_options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @property
    def kind(self) -> ProcessorKind:
        return self.id.split(":")[0]  # type: ignore[return-value]


class ArchitectureCost(StrictModel):
    """Cost of one architecture on one processor kind."""

    k_ms: float = Field(ge=0, description="execution time per batch item")
    b_ms: float = Field(ge=0, description="fixed execution time per batch")
    max_batch: int = Field(ge=1, description="largest useful batch")
    load_ms: float = Field(ge=0, description="making one expert resident from disk (read + session creation)")
    host_load_ms: float | None = Field(
        default=None, ge=0, description="NUMA: making it resident when its bytes are already in host memory")
    footprint_bytes: int | None = Field(default=None, ge=0, description="resident memory of one expert")
    item_bytes: int = Field(default=0, ge=0, description="extra memory per batch item while running")
    fit_max_rel_error: float | None = Field(default=None, ge=0, description="worst relative residual of K*n+B")
    latency_ms: dict[int, float] = Field(default_factory=dict, description="measured batch size -> latency")
    load_cold_ms: float | None = Field(default=None, ge=0, description="from disk, file not in page cache")
    load_warm_ms: float | None = Field(default=None, ge=0, description="from disk, file in page cache")
    load_optimized_ms: float | None = Field(
        default=None, ge=0, description="from a pre-optimized copy with graph optimization off")
    representative: str | None = Field(default=None, description="the expert measured for this architecture")


class DeviceInfo(StrictModel):
    """What the profiled machine is."""

    machine: str
    cpu_count: int = Field(ge=1)
    host_memory_bytes: int = Field(gt=0)
    device_memory_bytes: int | None = Field(default=None, gt=0, description="accelerator memory (NUMA)")
    onnxruntime: str
    providers: list[str]
    processor_name: str = ""


class AllocationStep(StrictModel):
    num_resident: int
    budget_bytes: int
    throughput_rps: float
    predicted_rps: float | None = None


class Allocation(StrictModel):
    """The profiler's decision and how it was reached."""

    package: str
    num_resident: int = Field(ge=0, description="experts kept resident on the fast processor (by usage probability)")
    budget_bytes: int = Field(gt=0)
    num_executors: dict[str, int]
    search: list[AllocationStep] = Field(default_factory=list)
    stop_reason: str = ""
    executor_throughput_rps: dict[int, float] = Field(default_factory=dict, description="executors -> measured")


class DeviceProfile(StrictModel):
    """The whole profile file."""

    version: Literal[1] = PROFILE_VERSION
    name: str
    memory: Literal["uma", "numa"]
    host_budget_bytes: int | None = Field(default=None, gt=0, description="NUMA: host-memory tier for expert bytes")
    processors: list[ProcessorProfile] = Field(min_length=1)
    costs: dict[str, dict[str, ArchitectureCost]] = Field(
        default_factory=dict, description="architecture -> processor kind -> cost")
    sources: dict[str, str] = Field(default_factory=dict, description="field -> 'measured' or 'published: <source>'")
    device: DeviceInfo | None = None
    allocation: Allocation | None = None
    created: str = Field(default="", description="when it was measured (ISO date)")

    @model_validator(mode="after")
    def _unique_processors(self) -> DeviceProfile:
        ids = [p.id for p in self.processors]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"processor ids must be unique, repeated: {dupes}")
        return self

    def cost(self, architecture: str, kind: str) -> ArchitectureCost | None:
        return self.costs.get(architecture, {}).get(kind)

    def with_budget(self, processor_id: str, budget_bytes: int) -> DeviceProfile:
        procs = [p.model_copy(update={"budget_bytes": budget_bytes}) if p.id == processor_id else p
                 for p in self.processors]
        return self.model_copy(update={"processors": procs})


def save_profile(profile: DeviceProfile, path: str | Path) -> None:
    """Write a profile as indented JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(profile.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate a profile JSON file.

    Raises:
        ProfileError: naming the file and each invalid field.
    """
    return load_document(path, DeviceProfile, error=ProfileError, max_bytes=MAX_PROFILE_BYTES)


def default_profile() -> DeviceProfile:
    """A profile for this machine when none is given: one CPU processor, UMA.

    Budget: 40 % of available memory; executors: 2 (one loads while the other runs).
    """
    from edgecoe.memory import available_memory_bytes

    available = available_memory_bytes()
    return DeviceProfile(
        name="default-cpu", memory="uma",
        processors=[ProcessorProfile(id="cpu", budget_bytes=max(1, int(available * 0.4)), num_executors=2)],
        sources={"*": "defaults: no profile given"},
    )
