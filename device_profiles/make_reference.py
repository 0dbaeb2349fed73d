"""Write the two reference device profiles of CoServe's evaluation boxes.

    python device_profiles/make_reference.py

The figures, their sources and the assumptions behind them are in
``edgecoe/bench/reference.py`` (the middle of each assumed range is written
here); ``benchmarks/paper_assumptions.py`` shows how results move across the
ranges. They drive the simulated mode (``edgecoe bench --paper numa|uma``) at
the paper's scale: ~350 experts of ResNet101 / YOLOv5m / YOLOv5l size.
"""

from __future__ import annotations

from pathlib import Path

from edgecoe.bench.reference import numa_profile, uma_profile
from edgecoe.profile import save_profile

HERE = Path(__file__).parent

if __name__ == "__main__":
    for profile in (numa_profile(), uma_profile()):
        path = HERE / f"{profile.name}.json"
        save_profile(profile, path)
        print(f"wrote {path}")
