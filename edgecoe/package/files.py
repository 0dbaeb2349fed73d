"""Safe paths and file records inside a package directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Container
from pathlib import Path, PurePosixPath

from edgecoe.errors import Problem
from edgecoe.package.manifest import MANIFEST_NAME, FileRecord

_CHUNK_BYTES = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large experts need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def record_file(root: Path, rel: str) -> FileRecord:
    """A :class:`FileRecord` for ``root/rel`` as it is on disk now."""
    path = root / rel
    return FileRecord(path=rel, bytes=path.stat().st_size, sha256=sha256_file(path))


# POSIX file systems' usual limits (NAME_MAX, and a margin under PATH_MAX for the package's own location)
_MAX_NAME_BYTES = 255
_MAX_PATH_CHARS = 1024


def unsafe_path_reason(root: Path, rel: str) -> str | None:
    """Why ``rel`` may not be used as a path inside package ``root``, or None if it may.

    A package path is relative, POSIX-style, has no ``..`` or empty parts, and
    no part of it is a symbolic link: following one could read files outside
    the package (a crafted package must never make edgecoe open ``/etc/...``).
    """
    if not rel or "\\" in rel or "\x00" in rel:
        return f"path {rel!r} must be a non-empty POSIX relative path"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        return f"path {rel!r} is absolute; package paths must be relative to the package"
    if any(part in ("..", "") for part in rel.split("/")) or "." in rel.split("/")[:-1]:
        return f"path {rel!r} leaves or escapes the package directory ('..' or empty parts)"
    too_long = [part for part in pure.parts if len(part.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES]
    if too_long or len(rel) > _MAX_PATH_CHARS:
        return (f"path {rel[:60]!r}... is too long for a file system ({len(rel)} characters; at most "
                f"{_MAX_NAME_BYTES} bytes per name, {_MAX_PATH_CHARS} in all)")
    current = root
    try:
        for part in pure.parts:
            current = current / part
            if current.is_symlink():
                return (f"path {rel!r} goes through symbolic link {current.relative_to(root)!s}, which packages "
                        "may not contain")
    except OSError as exc:  # what the file system refuses, a package may not name
        return f"path {rel[:60]!r} cannot be checked: {exc.strerror or exc}"
    resolved = (root / rel).resolve()
    if os.path.commonpath([resolved, root.resolve()]) != str(root.resolve()):
        return f"path {rel!r} resolves outside the package to {resolved}"
    return None


def check_record(root: Path, record: FileRecord, where: str, *, checksum: bool) -> Problem | None:
    """What is wrong with the file a record declares (missing, other size, other checksum), or None."""
    path = root / record.path
    if not path.is_file():
        return Problem(where, "missing: the manifest declares it but it is not in the package")
    size = path.stat().st_size
    if size != record.bytes:
        return Problem(where, f"size is {size} bytes, manifest declares {record.bytes} (truncated or replaced?)")
    if checksum:
        digest = sha256_file(path)
        if digest != record.sha256:
            return Problem(where, f"checksum mismatch: manifest sha256 {record.sha256[:12]}…, file has {digest[:12]}…")
    return None


def stray_entries(root: Path, declared: Container[str]) -> list[Problem]:
    """Links anywhere in the package, and files the manifest does not declare."""
    problems = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for entry in sorted(dirnames + filenames):
            full = Path(dirpath) / entry
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                problems.append(Problem(rel, "is a symbolic link; packages may not contain links"))
            elif full.is_file() and rel != MANIFEST_NAME and rel not in declared:
                problems.append(Problem(rel, "extra file not declared in the manifest"))
    return problems
