"""Is the profiler repeatable? Measures every architecture of a package twice
(K, B of latency ~ K*n + B) and prints the relative differences.

    python benchmarks/profile_repeat.py models/pcb [--quick]

B is a small fixed cost next to K*n; its difference is also shown relative to
the batch-1 latency (K + B), the scale at which B matters to the scheduler,
and the two fits' predictions K*n + B are compared at every batch measured.
"""

from __future__ import annotations

import argparse

from edgecoe.package import load_package
from edgecoe.profile import ProcessorProfile
from edgecoe.profiler.measure import measure_architecture
from edgecoe.profiler.run import ProfileSettings
from edgecoe.providers import choose_providers
from edgecoe.results import machine_info


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    settings = ProfileSettings.quick() if args.quick else ProfileSettings()
    pkg = load_package(args.package, verify="quick")
    processor = ProcessorProfile(id="cpu", budget_bytes=1 << 40)
    choice = choose_providers(processor)
    reps: dict[str, str] = {}
    for name, record in pkg.experts.items():
        reps.setdefault(record.architecture, name)
    print(f"machine: {machine_info()}; batches {settings.batches}, repeats {settings.repeats}")
    worst_k = worst_b1 = worst_pred = 0.0
    for arch, expert in sorted(reps.items()):
        runs = [measure_architecture(pkg, expert, processor, choice, batches=list(settings.batches),
                                     repeats=settings.repeats, threads=1,
                                     min_seconds=settings.curve_seconds) for _ in range(2)]
        (a, b) = runs
        dk, db = rel(a.k_ms, b.k_ms), rel(a.b_ms, b.b_ms)
        db1 = abs(a.b_ms - b.b_ms) / max(a.k_ms + a.b_ms, 1e-9)
        dpred = max(rel(a.k_ms * n + a.b_ms, b.k_ms * n + b.b_ms) for n in a.latency_ms)
        worst_k, worst_b1, worst_pred = max(worst_k, dk), max(worst_b1, db1), max(worst_pred, dpred)
        print(f"  {arch:<10} K {a.k_ms:7.3f} / {b.k_ms:7.3f} ms ({100 * dk:4.1f} %)   "
              f"B {a.b_ms:6.3f} / {b.b_ms:6.3f} ms ({100 * db:5.1f} %; {100 * db1:4.1f} % of K+B)   "
              f"predictions differ <= {100 * dpred:4.1f} %")
    print(f"worst K difference {100 * worst_k:.1f} %; worst B difference {100 * worst_b1:.1f} % of the batch-1 latency; "
          f"worst prediction difference {100 * worst_pred:.1f} %")


if __name__ == "__main__":
    main()
