"""Atomic package writing: an interrupted export never leaves a valid package."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecoe.errors import PackageError
from edgecoe.package import load_package
from edgecoe.package.manifest import Manifest
from edgecoe.package.writer import PackageWriter

BUILD = """
import sys
from edgecoe.demo import build_demo, find_recipe, load_recipe
build_demo(load_recipe(find_recipe("pcb-small")), sys.argv[1])
"""


def test_killed_build_leaves_no_valid_package(tmp_path):
    dest = tmp_path / "pkg"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(dest)])
    deadline = time.monotonic() + 60
    try:
        # wait until the writer has put at least one expert into its temp dir
        while time.monotonic() < deadline:
            temps = list(tmp_path.glob(".pkg.tmp-*"))
            if temps and list(temps[0].glob("experts/*.onnx")):
                break
            assert proc.poll() is None, "build finished before it could be interrupted"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists()
    with pytest.raises(PackageError, match="does not exist"):
        load_package(dest)
    leftover = list(tmp_path.glob(".pkg.tmp-*"))
    assert leftover, "the killed writer's temp dir should still be there"
    with pytest.raises(PackageError, match="missing"):
        load_package(leftover[0])  # no manifest yet: the manifest is written last
    # the next writer for the same destination removes the dead writer's temp dir
    with PackageWriter(dest):
        pass
    assert not list(tmp_path.glob(".pkg.tmp-*"))


def test_exception_inside_writer_removes_temp(tmp_path):
    with pytest.raises(RuntimeError), PackageWriter(tmp_path / "pkg") as writer:
        writer.write_bytes("experts/a.bin", b"123")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_validation_keeps_destination_untouched(chain_package):
    before = {p.name: p.stat().st_mtime_ns for p in chain_package.rglob("*")}
    manifest = Manifest.model_validate_json((chain_package / "edgecoe.json").read_text())

    def reject(root: Path) -> None:
        raise ValueError("not good enough")

    with pytest.raises(ValueError), PackageWriter(chain_package, overwrite=True) as writer:
        writer.commit(manifest, validate=reject)
    assert {p.name: p.stat().st_mtime_ns for p in chain_package.rglob("*")} == before
    load_package(chain_package)
