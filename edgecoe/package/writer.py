"""Writing a package atomically.

Everything is written into a hidden sibling directory ``.NAME.tmp-PID-XXXX``;
the manifest goes in last, files are fsynced, and only then is the directory
renamed to its final name. A killed export therefore leaves at most a hidden
temp directory (which the next writer for that destination removes), never
something at the destination that loads as a valid package.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol

import onnx

from edgecoe.errors import InvalidInputError
from edgecoe.package.files import record_file, unsafe_path_reason
from edgecoe.package.manifest import MANIFEST_NAME, FileRecord

# Models whose protobuf would exceed this are written with external data:
# protobuf cannot serialise messages of 2 GiB or more.
_INLINE_LIMIT_BYTES = 1_800_000_000


class SerializableManifest(Protocol):
    """A package manifest of either kind (CoE or MoE): it writes its own canonical JSON."""

    def to_json(self) -> str: ...


class PackageWriter:
    """Builds a package in a temp directory and moves it into place on :meth:`commit`.

    Use as a context manager; leaving the block without committing (an
    exception) deletes the temp directory.
    """

    def __init__(self, dest: str | Path, *, overwrite: bool = False) -> None:
        self.dest = Path(dest)
        self.overwrite = overwrite
        if self.dest.exists() and not overwrite:
            raise InvalidInputError(f"{self.dest} already exists; pass overwrite (--force) to replace it")
        if self.dest.is_symlink() or (self.dest.exists() and not self.dest.is_dir()):
            raise InvalidInputError(f"{self.dest} exists and is not a directory")
        if self.dest.exists() and not _replaceable(self.dest):
            raise InvalidInputError(f"{self.dest} is not an edgecoe package (no {MANIFEST_NAME}) and not empty; "
                                    "refusing to replace it")
        self.tmp: Path | None = None
        self._committed = False

    def __enter__(self) -> PackageWriter:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(self.dest)
        token = secrets.token_hex(4)
        self.tmp = self.dest.parent / f".{self.dest.name}.tmp-{os.getpid()}-{token}"
        self.tmp.mkdir()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed and self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def root(self) -> Path:
        """The temp directory files are written into (valid inside the ``with`` block)."""
        if self.tmp is None:
            raise RuntimeError("PackageWriter used outside its `with` block")
        return self.tmp

    def _inside(self, rel: str) -> Path:
        """``root/rel``, refusing any ``rel`` that would land outside the package."""
        reason = unsafe_path_reason(self.root, rel)
        if reason is not None:
            raise InvalidInputError(f"refusing to write {rel!r}: {reason}")
        return self.root / rel

    def write_model(self, rel: str, model: onnx.ModelProto, *, external: bool | None = None) -> tuple[FileRecord, list[FileRecord]]:
        """Write an ONNX model at ``rel``; returns its record and its external-data records.

        Args:
            external: store weights in ``rel + ".data"``. ``None`` decides by
                size (external only when the protobuf would exceed 2 GiB).
        """
        path = self._inside(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        if external is None:
            external = model.ByteSize() > _INLINE_LIMIT_BYTES
        data_rel: str | None = None
        if external:
            data_name = Path(rel).name + ".data"
            data_rel = (Path(rel).parent / data_name).as_posix()
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            path.write_bytes(model.SerializeToString())
        extra = [record_file(self.root, data_rel)] if data_rel and (self.root / data_rel).exists() else []
        return record_file(self.root, rel), extra

    def write_bytes(self, rel: str, data: bytes) -> FileRecord:
        path = self._inside(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return record_file(self.root, rel)

    def commit(self, manifest: SerializableManifest, *, validate: Callable[[Path], object] | None = None) -> Path:
        """Write the manifest, flush everything to disk and move the package into place.

        Args:
            validate: called with the finished temp directory before it is
                moved; if it raises, nothing appears at the destination.
        """
        root = self.root
        (root / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        if validate is not None:
            validate(root)
        _fsync_tree(root)
        old: Path | None = None
        if self.dest.exists():
            old = self.dest.parent / f".{self.dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(self.dest, old)
        os.replace(root, self.dest)
        self._committed = True
        _fsync_dir(self.dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.dest


def _replaceable(dest: Path) -> bool:
    """A directory ``--force`` may replace: an edgecoe package, or empty."""
    return (dest / MANIFEST_NAME).is_file() or not any(dest.iterdir())


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(dest: Path) -> None:
    """Delete temp dirs of earlier writers of ``dest`` whose process is gone."""
    for candidate in dest.parent.glob(f".{dest.name}.tmp-*"):
        parts = candidate.name.rsplit("-", 2)
        try:
            pid = int(parts[-2])
        except (IndexError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
