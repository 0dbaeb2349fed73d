"""Write the two reference device profiles of CoServe's evaluation boxes.

    python device_profiles/make_reference.py

Neither box is available here, so every number is either *published* (with
its source) or *derived* from published numbers (with the derivation) or
*assumed* (with the reason); ``sources`` in each file records which. They
drive the simulated mode (``edgecoe run --simulate``, ``edgecoe bench``) at
the paper's scale: ~350 experts of ResNet101 / YOLOv5m / YOLOv5l size.
"""

from __future__ import annotations

from pathlib import Path

from edgecoe.profile import (
    ArchitectureCost,
    DeviceProfile,
    ProcessorProfile,
    save_profile,
)

GB = 1_000_000_000
HERE = Path(__file__).parent

# Published parameter counts (torchvision ResNet101 model card; Ultralytics YOLOv5 README), fp32 bytes.
PARAMS_M = {"resnet101": 44.5, "yolov5m": 21.2, "yolov5l": 46.5}
SIZE_BYTES = {arch: int(p * 1e6 * 4) for arch, p in PARAMS_M.items()}
# docs/background.md (CoServe, Fig. 1): loading was 91-99 % of per-request latency from SSD and 63-86 %
# from host memory; midpoints used below.
SSD_SHARE, HOST_SHARE = 0.95, 0.745
# Published FP32 peaks: RTX 3080 Ti 34.1 TFLOPS (NVIDIA spec sheet), Apple M2 10-core GPU 3.6 TFLOPS (Apple).
GPU_TFLOPS = {"rtx3080ti": 34.1, "m2": 3.6}
CPU_SLOWDOWN = 10.0  # assumed: a desktop/laptop CPU runs these CNNs ~10x slower than the GPU

SOURCES_COMMON = {
    "costs.*.footprint_bytes": "derived: published parameter count x 4 bytes x 1.1 (assumed 10 % workspace)",
    "costs.*.max_batch": "assumed: 16 (GPU per-item latency typically plateaus by 16 for these CNNs)",
    "costs.*.k_ms,b_ms": "derived: batch-1 time split half fixed (B), half per item (K) (assumed split)",
}


def _costs(kind: str, ssd_mb_s: float, exec_scale: float, cpu: bool) -> dict[str, dict[str, ArchitectureCost]]:
    out: dict[str, dict[str, ArchitectureCost]] = {}
    for arch, size in SIZE_BYTES.items():
        load_ms = size / (ssd_mb_s * 1e6) * 1e3
        exec1 = load_ms * (1 - SSD_SHARE) / SSD_SHARE * exec_scale
        host_ms = exec1 * HOST_SHARE / (1 - HOST_SHARE)
        footprint = int(size * 1.1)
        gpu = ArchitectureCost(k_ms=round(exec1 / 2, 3), b_ms=round(exec1 / 2, 3), max_batch=16,
                               load_ms=round(load_ms, 1), host_load_ms=round(host_ms, 1), footprint_bytes=footprint)
        out[arch] = {kind: gpu}
        if cpu:
            out[arch]["cpu"] = gpu.model_copy(update={"k_ms": round(exec1 / 2 * CPU_SLOWDOWN, 3),
                                                      "b_ms": round(exec1 / 2 * CPU_SLOWDOWN, 3), "max_batch": 8})
    return out


def numa_3080ti() -> DeviceProfile:
    return DeviceProfile(
        name="reference-numa-x86-rtx3080ti", memory="numa", host_budget_bytes=12 * GB,
        processors=[ProcessorProfile(id="cuda:0", budget_bytes=int(12 * GB * 0.9), num_executors=3),
                    ProcessorProfile(id="cpu", budget_bytes=2 * GB, num_executors=1)],
        costs=_costs("cuda", ssd_mb_s=530.0, exec_scale=1.0, cpu=True), created="reference",
        sources={
            **SOURCES_COMMON,
            "processors": "published: x86 + RTX 3080 Ti 12 GB GPU, 16 GB host; 3 GPU + 1 CPU executors (CoServe, docs/background.md)",
            "processors.cuda:0.budget_bytes": "derived: 90 % of the 12 GB GPU (rest: CUDA context, workspace)",
            "processors.cpu.budget_bytes": "assumed: 2 GB of the 16 GB host for CPU-resident experts",
            "host_budget_bytes": "assumed: 12 GB of the 16 GB host for the host-memory tier",
            "costs.*.load_ms": "derived: file size / 530 MB/s SSD (published, docs/background.md)",
            "costs.*.k_ms,b_ms (cuda)": "derived: load_ms x (1 - 0.95) / 0.95: loading is 91-99 % of latency from SSD (docs/background.md)",
            "costs.*.host_load_ms": "derived: batch-1 time x 0.745 / 0.255: loading is 63-86 % of latency from host memory (docs/background.md)",
            "costs.*.cpu": f"assumed: GPU figures x {CPU_SLOWDOWN:g}",
        },
    )


def uma_m2() -> DeviceProfile:
    scale = GPU_TFLOPS["rtx3080ti"] / GPU_TFLOPS["m2"]
    return DeviceProfile(
        name="reference-uma-apple-m2-24gb", memory="uma",
        processors=[ProcessorProfile(id="coreml", budget_bytes=12 * GB, num_executors=2),
                    ProcessorProfile(id="cpu", budget_bytes=2 * GB, num_executors=1)],
        costs=_costs("coreml", ssd_mb_s=3000.0, exec_scale=scale, cpu=True), created="reference",
        sources={
            **SOURCES_COMMON,
            "processors": "published: Apple M2, 24 GB unified memory; 2 GPU + 1 CPU executors (CoServe, docs/background.md)",
            "processors.*.budget_bytes": "assumed: 14 of the 24 GB for experts (12 GPU + 2 CPU), the rest for the OS and apps",
            "costs.*.load_ms": "derived: file size / 3000 MB/s SSD (published, docs/background.md)",
            "costs.*.k_ms,b_ms (coreml)": (f"derived: the NUMA box's batch-1 time x {scale:.2f}, the ratio of published FP32 "
                                           "peaks (RTX 3080 Ti 34.1 TFLOPS / M2 GPU 3.6 TFLOPS)"),
            "costs.*.host_load_ms": "not used on UMA (no separate host tier)",
            "costs.*.cpu": f"assumed: GPU figures x {CPU_SLOWDOWN:g}",
        },
    )


if __name__ == "__main__":
    for profile in (numa_3080ti(), uma_m2()):
        path = HERE / f"{profile.name}.json"
        save_profile(profile, path)
        print(f"wrote {path}")
