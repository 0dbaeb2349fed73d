from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import chain_spec, write_spec

from edgecoe.demo import build_demo, find_recipe, load_recipe
from edgecoe.export import export_package


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """The optimized-model cache of a test session lives in its temp dir, never in ~/.cache."""
    import os

    from edgecoe.optcache import ENV_DIR

    old = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(tmp_path_factory.mktemp("edgecoe-cache"))
    yield
    if old is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = old


@pytest.fixture
def chain_package(tmp_path: Path) -> Path:
    """A valid 3-expert package exported from ONNX files (fresh per test: tests may corrupt it)."""
    src = tmp_path / "src"
    src.mkdir()
    spec = write_spec(src / "spec.json", chain_spec(src))
    return export_package(spec, tmp_path / "chain").package


@pytest.fixture(scope="session")
def pcb_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled pcb-small demo, built once per test session (read-only for tests)."""
    dest = tmp_path_factory.mktemp("demo") / "pcb-small"
    return build_demo(load_recipe(find_recipe("pcb-small")), dest)
