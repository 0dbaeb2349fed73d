"""Random mutations of valid manifests and specs (hypothesis): every outcome is a valid package
or one typed edgecoe error — never another exception, and never a file outside the package."""

from __future__ import annotations

import atexit
import copy
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from helpers import chain_spec, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecoe.errors import EdgecoeError, ExportError, PackageError, SpecError
from edgecoe.export import export_package
from edgecoe.package import load_package

NASTY_STRINGS = ["../x", "/etc/passwd", "a/../../b", "", " ", "\x1b[31mred", "[/]", "x" * 300, "é", "k0",
                 "cls_a", "stage2", "experts/cls_a.onnx", "float32", "batch", "nan", "..", "C:\\x"]
NASTY_NUMBERS = [0, -1, 1, 2**63, -(2**63), 0.5, 1e308, -0.0, math.nan, math.inf, 10**400]


def json_values(depth: int = 2) -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.sampled_from(NASTY_STRINGS), st.sampled_from(NASTY_NUMBERS), st.booleans(), st.none())
    if depth == 0:
        return leaves
    return st.one_of(leaves, st.lists(json_values(depth - 1), max_size=3),
                     st.dictionaries(st.sampled_from(NASTY_STRINGS), json_values(depth - 1), max_size=3))


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc``."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += paths(value, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with 1-3 random edits: a value replaced, a key removed or renamed, a key added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "remove", "rename", "add"]))
        if action == "replace":
            parent[key] = draw(json_values())
        elif action == "remove" and isinstance(parent, dict):
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(NASTY_STRINGS))] = parent.pop(key)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from([*NASTY_STRINGS, "unknown_field"]))] = draw(json_values(1))
    return doc


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


_BASE = Path(tempfile.mkdtemp(prefix="edgecoe-mutations-"))  # the valid originals, built once
atexit.register(shutil.rmtree, _BASE, True)
_SRC = _BASE / "src"
_SRC.mkdir()
_SPEC = chain_spec(_SRC)
_PACKAGE = export_package(write_spec(_SRC / "spec.json", _SPEC), _BASE / "valid").package
_MANIFEST = json.loads((_PACKAGE / "edgecoe.json").read_text())


@given(mutated(_MANIFEST), st.sampled_from(["quick", "full"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_manifest_is_a_package_or_one_package_error(manifest, verify):
    with tempfile.TemporaryDirectory(prefix="edgecoe-mut-") as tmp:
        root = Path(tmp) / "pkg"
        shutil.copytree(_PACKAGE, root)
        (root / "edgecoe.json").write_text(json.dumps(manifest))  # Python writes NaN/Infinity: refused too
        before = snapshot(Path(tmp))
        try:
            load_package(root, verify=verify)
        except PackageError as exc:
            assert exc.problems and "Traceback" not in str(exc)
        assert snapshot(Path(tmp)) == before  # loading never writes


@given(mutated(_SPEC))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_spec_is_a_package_or_one_typed_error(spec):
    with tempfile.TemporaryDirectory(prefix="edgecoe-mut-") as tmp:
        work = Path(tmp)
        src = work / "src"
        shutil.copytree(_SRC, src)
        path = src / "spec.json"
        path.write_text(json.dumps(spec))
        before = snapshot(work)
        try:
            result = export_package(path, work / "out" / "pkg")
            load_package(result.package)  # what export wrote is a valid package
        except (SpecError, PackageError, ExportError) as exc:
            assert str(exc)
        except EdgecoeError as exc:  # pragma: no cover - a typed error of another branch is a bug here
            raise AssertionError(f"unexpected error type {type(exc).__name__}: {exc}") from exc
        after = snapshot(work)
        created = {name for name in set(after) - set(before) if not name.startswith("out")}
        assert not created, f"files written outside the package: {sorted(created)}"
        changed = {name for name in before if after.get(name) != before[name]}
        assert not changed, f"files changed outside the package: {sorted(changed)}"
