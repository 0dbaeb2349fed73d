"""CoServe's two evaluation boxes as device profiles, from published figures and stated assumptions.

Neither box is available here, so every number is either *published* (with its
source), *derived* from published numbers (with the derivation) or *assumed*
(with the reason); each profile's ``sources`` records which. The assumptions
are parameters (:class:`Assumptions`), so a benchmark can show how a result
moves across their plausible range instead of resting on one guess:

- ``k_share``: the per-item share of a batch-1 execution (K = share x t1,
  B = (1 - share) x t1). It sets what batching can gain: a batch of n costs
  n x K + B, so with share s the best gain per item is 1 / s (2x at 0.5).
- ``ssd_scale``: SSD bandwidth as a multiple of the published figure.
- ``load_overhead_ms``: fixed time per load beside moving bytes (allocation,
  session or context set-up).

Derivations (the same for both boxes; UMA scales compute by published GPU peaks):

- load from SSD = file bytes / SSD bandwidth + overhead;
- batch-1 execution on the NUMA GPU, t1 = SSD load x (1 - 0.95) / 0.95: loading
  was 91-99 % of a request's latency from SSD (CoServe, Fig. 1; midpoint 95 %);
- load from host memory (NUMA) = t1 x 0.745 / 0.255: loading was 63-86 % of
  latency from host memory (midpoint 74.5 %);
- UMA GPU batch-1 execution = the NUMA t1 x (34.1 / 3.6), the ratio of the
  published FP32 peaks (RTX 3080 Ti / M2 10-core GPU);
- CPU = the same processor's GPU figures x 10 (assumed).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecoe.profile import ArchitectureCost, DeviceProfile, ProcessorProfile

GB = 1_000_000_000

# Published parameter counts (torchvision ResNet101 model card; Ultralytics YOLOv5 README), fp32 bytes.
PARAMS_M = {"resnet101": 44.5, "yolov5m": 21.2, "yolov5l": 46.5}
SIZE_BYTES = {arch: int(p * 1e6 * 4) for arch, p in PARAMS_M.items()}
SSD_SHARE, HOST_SHARE = 0.95, 0.745  # CoServe Fig. 1 midpoints (see the module docstring)
NUMA_SSD_MB_S, UMA_SSD_MB_S = 530.0, 3000.0  # published: SATA SSD of the NUMA box; the M2's NVMe
GPU_TFLOPS = {"rtx3080ti": 34.1, "m2": 3.6}  # published FP32 peaks
CPU_SLOWDOWN = 10.0  # assumed: a desktop/laptop CPU runs these CNNs ~10x slower than the GPU


@dataclass(frozen=True)
class Assumptions:
    """The assumed parameters of the reference profiles; the defaults are the middle of each range."""

    k_share: float = 0.5
    ssd_scale: float = 1.0
    load_overhead_ms: float = 0.0

    def label(self) -> str:
        return f"K/t1={self.k_share:g}, SSD x{self.ssd_scale:g}, +{self.load_overhead_ms:g} ms/load"


#: The range the assumption table spans, one parameter at a time around the middle.
ASSUMPTION_RANGE: dict[str, tuple[float, ...]] = {
    "k_share": (0.25, 0.5, 0.75),
    "ssd_scale": (0.5, 1.0, 2.0),
    "load_overhead_ms": (0.0, 20.0, 50.0),
}

SOURCES_COMMON = {
    "costs.*.footprint_bytes": "derived: published parameter count x 4 bytes x 1.1 (assumed 10 % workspace)",
    "costs.*.max_batch": "assumed: 16 on the GPU (per-item latency typically plateaus by 16 for these CNNs), 8 on CPU",
    "costs.*.load_ms": "derived: file size / SSD bandwidth (published) + the assumed per-load overhead",
    "costs.*.k_ms,b_ms": "derived: batch-1 time t1 split K = k_share x t1, B = (1 - k_share) x t1 (k_share assumed)",
    "costs.*.cpu": f"assumed: the GPU figures x {CPU_SLOWDOWN:g}",
}


def _numa_t1_ms(arch: str) -> float:
    """Batch-1 execution on the NUMA GPU: loading from SSD was 95 % of a request's latency there."""
    return SIZE_BYTES[arch] / (NUMA_SSD_MB_S * 1e6) * 1e3 * (1 - SSD_SHARE) / SSD_SHARE


def _costs(kind: str, ssd_mb_s: float, compute_scale: float, a: Assumptions,
           host_tier: bool) -> dict[str, dict[str, ArchitectureCost]]:
    out: dict[str, dict[str, ArchitectureCost]] = {}
    for arch, size in SIZE_BYTES.items():
        load_ms = size / (ssd_mb_s * a.ssd_scale * 1e6) * 1e3 + a.load_overhead_ms
        t1 = _numa_t1_ms(arch) * compute_scale
        host_ms = _numa_t1_ms(arch) * HOST_SHARE / (1 - HOST_SHARE) + a.load_overhead_ms if host_tier else None
        footprint = int(size * 1.1)
        gpu = ArchitectureCost(k_ms=round(t1 * a.k_share, 3), b_ms=round(t1 * (1 - a.k_share), 3), max_batch=16,
                               load_ms=round(load_ms, 1), host_load_ms=None if host_ms is None else round(host_ms, 1),
                               footprint_bytes=footprint)
        cpu = gpu.model_copy(update={"k_ms": round(gpu.k_ms * CPU_SLOWDOWN, 3),
                                     "b_ms": round(gpu.b_ms * CPU_SLOWDOWN, 3), "max_batch": 8})
        out[arch] = {kind: gpu, "cpu": cpu}
    return out


def numa_profile(a: Assumptions = Assumptions()) -> DeviceProfile:
    """CoServe's NUMA box: x86 + RTX 3080 Ti 12 GB, 16 GB host, SATA SSD."""
    return DeviceProfile(
        name="reference-numa-x86-rtx3080ti", memory="numa", host_budget_bytes=12 * GB,
        processors=[ProcessorProfile(id="cuda:0", budget_bytes=int(12 * GB * 0.9), num_executors=3),
                    ProcessorProfile(id="cpu", budget_bytes=2 * GB, num_executors=1)],
        costs=_costs("cuda", NUMA_SSD_MB_S, 1.0, a, host_tier=True), created="reference",
        sources={
            **SOURCES_COMMON,
            "assumptions": f"assumed: {a.label()} (the middle of each range; benchmarks/paper_assumptions.py spans them)",
            "processors": "published: x86 + RTX 3080 Ti 12 GB GPU, 16 GB host; 3 GPU + 1 CPU executors (CoServe)",
            "processors.cuda:0.budget_bytes": "derived: 90 % of the 12 GB GPU (rest: CUDA context, workspace)",
            "processors.cpu.budget_bytes": "assumed: 2 GB of the 16 GB host for CPU-resident experts",
            "host_budget_bytes": "assumed: 12 GB of the 16 GB host for the host-memory tier",
            "costs.*.k_ms,b_ms (cuda)": "derived: t1 = SSD load x (1 - 0.95) / 0.95: loading is 91-99 % of latency "
                                        "from SSD (CoServe, Fig. 1)",
            "costs.*.host_load_ms": "derived: t1 x 0.745 / 0.255 + overhead: loading is 63-86 % of latency from "
                                    "host memory (CoServe, Fig. 1)",
            "load channels": "assumed: one SSD -> host channel and one host -> GPU channel, shared by every "
                             "load (a load from SSD to the GPU passes both)",
        },
    )


def uma_profile(a: Assumptions = Assumptions()) -> DeviceProfile:
    """CoServe's UMA box: Apple M2, 24 GB unified memory, NVMe SSD."""
    scale = GPU_TFLOPS["rtx3080ti"] / GPU_TFLOPS["m2"]
    return DeviceProfile(
        name="reference-uma-apple-m2-24gb", memory="uma",
        processors=[ProcessorProfile(id="coreml", budget_bytes=12 * GB, num_executors=2),
                    ProcessorProfile(id="cpu", budget_bytes=2 * GB, num_executors=1)],
        costs=_costs("coreml", UMA_SSD_MB_S, scale, a, host_tier=False), created="reference",
        sources={
            **SOURCES_COMMON,
            "assumptions": f"assumed: {a.label()} (the middle of each range; benchmarks/paper_assumptions.py spans them)",
            "processors": "published: Apple M2, 24 GB unified memory; 2 GPU + 1 CPU executors (CoServe)",
            "processors.*.budget_bytes": "assumed: 14 of the 24 GB for experts (12 GPU + 2 CPU), the rest for "
                                         "the OS and apps",
            "costs.*.k_ms,b_ms (coreml)": (f"derived: the NUMA box's batch-1 time t1 x {scale:.2f}, the ratio of "
                                           "published FP32 peaks (RTX 3080 Ti 34.1 TFLOPS / M2 GPU 3.6 TFLOPS)"),
            "costs.*.host_load_ms": "not used on UMA (no separate host tier)",
            "load channels": "assumed: one SSD -> unified memory channel shared by every load",
        },
    )
