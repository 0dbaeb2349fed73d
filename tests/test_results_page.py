"""The results page is generated from the committed raw JSON, and is up to date with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_results_page_matches_its_raw_json():
    result = subprocess.run([sys.executable, "benchmarks/make_results_page.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_raw_file_the_page_names_is_committed():
    page = (ROOT / "benchmarks/results/README.md").read_text(encoding="utf-8")
    named = [part.split("`")[0] for part in page.split("Raw: `")[1:]]
    assert named, "the page names its raw files"
    for name in named:
        assert (ROOT / "benchmarks/results" / name).is_file(), name
