"""Measure what switching costs on this machine for a demo package.

For one expert per architecture: session creation from a cold file (page cache
dropped with posix_fadvise), from a warm file, and with graph optimization off
(as an ORT-optimized copy would load); then execution of batches of 1 and 8.
Prints a table and the ratio creation / one-image execution, which is why
switching dominates (docs/background.md).

    python benchmarks/demo_costs.py models/pcb [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecoe.memory import drop_page_cache
from edgecoe.package import load_package
from edgecoe.providers import create_session


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pkg = load_package(args.package, verify="quick")
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"onnxruntime={ort.__version__} python={platform.python_version()}")
    print(f"package: {pkg.name}: {len(pkg.experts)} experts, {pkg.total_bytes / 1e9:.2f} GB")
    by_arch: dict[str, str] = {}
    for name, e in pkg.experts.items():
        by_arch.setdefault(e.architecture, name)
    header = f"{'architecture':<12} {'MB':>6} {'cold ms':>8} {'warm ms':>8} {'noopt ms':>9} {'run b1':>7} {'run b8':>7} {'b8/img':>7} {'create/run':>10}"
    print(header)
    print("-" * len(header))
    for arch, name in sorted(by_arch.items()):
        path = pkg.model_path(name)
        cold, warm, noopt = [], [], []
        for _ in range(args.repeats):
            drop_page_cache(path)
            t = time.perf_counter()
            create_session(path)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            create_session(path)
            warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            create_session(path, optimization="none")
            noopt.append(time.perf_counter() - t)
        session = create_session(path)
        spec = pkg.experts[name].inputs[0]
        item = [int(d) for d in spec.shape[1:]]  # type: ignore[arg-type]
        runs = {}
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal([batch, *item]).astype(spec.dtype)
            session.run(None, {spec.name: x})
            samples = []
            for _ in range(args.repeats * 2):
                t = time.perf_counter()
                session.run(None, {spec.name: x})
                samples.append(time.perf_counter() - t)
            runs[batch] = median_ms(samples)
        mb = pkg.experts[name].total_bytes / 1e6
        print(f"{arch:<12} {mb:>6.1f} {median_ms(cold):>8.1f} {median_ms(warm):>8.1f} {median_ms(noopt):>9.1f} "
              f"{runs[1]:>7.1f} {runs[8]:>7.1f} {runs[8] / 8:>7.2f} {median_ms(cold) / runs[1]:>9.1f}x")


if __name__ == "__main__":
    main()
