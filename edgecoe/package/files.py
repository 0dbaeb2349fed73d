"""Safe paths and file records inside a package directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from edgecoe.package.manifest import FileRecord

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
    current = root
    for part in pure.parts:
        current = current / part
        if current.is_symlink():
            return f"path {rel!r} goes through symbolic link {current.relative_to(root)!s}, which packages may not contain"
    resolved = (root / rel).resolve()
    if os.path.commonpath([resolved, root.resolve()]) != str(root.resolve()):
        return f"path {rel!r} resolves outside the package to {resolved}"
    return None
