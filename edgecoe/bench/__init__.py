"""``edgecoe bench``: policies side by side, ablation, sweeps, paper-scale simulation."""

from edgecoe.bench.harness import BenchResult, entry_config, run_bench
from edgecoe.bench.paper import paper_package
from edgecoe.sched.presets import ABLATION, BENCH_ENTRIES, DEFAULT_BENCH_ENTRIES

__all__ = ["ABLATION", "BENCH_ENTRIES", "DEFAULT_BENCH_ENTRIES", "BenchResult", "entry_config", "paper_package", "run_bench"]
