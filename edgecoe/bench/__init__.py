"""``edgecoe bench``: policies side by side, ablation, sweeps, paper-scale simulation."""

from edgecoe.bench.harness import ABLATION, DEFAULT_POLICIES, BenchResult, entry_config, run_bench
from edgecoe.bench.paper import paper_package

__all__ = ["ABLATION", "DEFAULT_POLICIES", "BenchResult", "entry_config", "paper_package", "run_bench"]
