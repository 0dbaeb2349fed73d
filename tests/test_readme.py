"""The README's Python blocks run as written, in order, in an empty directory.

Each block runs in its own interpreter (a reader may copy any one of them),
in one working directory, so a block may use files an earlier one wrote but
no variables. The directory holds only a copy of ``export/`` (the export
example reads it), as a checkout would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_python_blocks():
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 4 and all("import edgecoe" in b for b in blocks)


@pytest.mark.slow
def test_readme_python_blocks_run_verbatim_in_order(tmp_path):
    shutil.copytree(ROOT / "export", tmp_path / "export")
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    for index, block in enumerate(blocks, start=1):
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"README block {index} failed:\n{block}\n{result.stderr[-3000:]}"
        assert result.stdout.strip(), f"README block {index} printed nothing"
