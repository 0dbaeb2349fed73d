"""A per-machine cache of fully optimized models, so a switch skips graph optimization.

Most of a conv net's session creation on CPU is ONNX Runtime's graph
optimization (docs/background.md). The package's portable optimized copies stop at
level "extended"; level "all" adds layout transforms (NCHWc) that depend on
the CPU, so such a model may only be reused on the machine that made it. This
cache makes one on an expert's first load (``optimized_model_filepath``) and
every later load reads it with optimization off. Measured on pcb here: the
largest experts load in 21-28 ms instead of 133-213 ms and run as fast as
with online optimization; the package's "extended" copies load as fast but
run 15-58 % slower on the ResNets (no NCHWc).

The cache is shared by every package on the machine, and packages are
untrusted, so it is keyed by *content*: an entry's key is the SHA-256 of the
model file it was built from (never a checksum a manifest declares), the ONNX
Runtime version, the providers and the CPU. Hashing a file once per change is
what a per-machine index remembers: (device, inode, size, mtime, ctime) ->
SHA-256; a different file, or the same file changed, has another identity and
is hashed again. Each entry records the hash of its source, its own hash and
its own file identity, all checked before it is used; the entry is hashed
again only when its identity is not the recorded one (it was copied, restored
or rewritten). NOTE: hashing a 40-80 MB entry on every process's first load of
it cost 50-100 ms per switch, in the measured part of a run. Entries are written
to a temp name and renamed, so a crash never leaves a half-written model under
a valid key; an entry that fails a check or to load is deleted and rebuilt.
The cache directory is private to the user (0700); one that another user can
write is not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import secrets
import stat
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from edgecoe.package.files import sha256_file

logger = logging.getLogger(__name__)

ENV_DIR = "EDGECOE_CACHE_DIR"
_INDEX_NAME = "content-index.json"
_INDEX_LIMIT = 20_000  # file identities remembered; the oldest are forgotten first


def default_cache_dir() -> Path:
    """``$EDGECOE_CACHE_DIR`` or ``~/.cache/edgecoe``, plus ``ort-optimized``."""
    base = os.environ.get(ENV_DIR) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                   "edgecoe")
    return Path(base) / "ort-optimized"


@lru_cache(maxsize=1)
def machine_signature() -> str:
    """What a level-"all" graph depends on besides the model: CPU model and ISA flags, ORT version."""
    parts = [platform.machine(), platform.system(), ort.__version__]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                parts.append(line.split(":", 1)[1].strip())
                if len(parts) >= 6:
                    break
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def file_identity(path: Path) -> str:
    """What changes whenever a file's content may have: device, inode, size, mtime and ctime.

    NOTE: ctime cannot be set by a user, so a file made to look like another
    (same size and mtime) still has another identity.
    """
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


Create = Callable[[Path, Literal["none", "all"], "Path | None"], object]
"""``create(source, optimization, save_optimized_to)`` makes a session with the caller's providers and threads."""


class OptimizedModelCache:
    """Sessions through a level-"all" optimized-model cache in ``root`` (created, private, on first write).

    Thread-safe: executors of one runtime load different experts at once.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._index: dict[str, str] | None = None  # file identity -> sha256, loaded on first use
        self._verified: set[tuple[str, str]] = set()  # (entry path, identity) checked in this process
        self._usable: bool | None = None

    # -- content identity -----------------------------------------------------------
    def content_hash(self, source: Path) -> str:
        """SHA-256 of ``source``'s bytes, from the index when this very file was hashed before."""
        identity = file_identity(source)
        with self._lock:
            index = self._load_index_locked()
            known = index.get(identity)
        if known is not None:
            return known
        sha = sha256_file(source)
        if file_identity(source) != identity:  # changed while being read: hash what is there next time
            return sha
        with self._lock:
            index = self._load_index_locked()
            index[identity] = sha
            while len(index) > _INDEX_LIMIT:
                index.pop(next(iter(index)))
            self._save_index_locked(index)
        return sha

    def key(self, source: Path, providers: list[str]) -> str:
        text = "|".join([self.content_hash(source), ",".join(providers), machine_signature()])
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def entry_path(self, source: Path, providers: list[str]) -> Path:
        """Where ``source``'s optimized model lives in the cache (it may not exist yet)."""
        return self.root / f"{self.key(source, providers)}.onnx"

    # -- sessions -----------------------------------------------------------------------
    def ensure(self, source: Path, providers: list[str], create: Create) -> bool:
        """Build the entry for ``source`` unless a valid one exists; True when one was built."""
        if self._valid_entry(source, self.entry_path(source, providers)):
            return False
        misses = self.misses
        self.session(source, providers, create)
        return self.misses > misses

    def session(self, source: Path, providers: list[str], create: Create) -> object:
        """A session for ``source``: from its cached optimized model, or made now and cached.

        Raises whatever ``create`` raises for ``source`` itself; problems with
        the cache (unwritable, not private, a corrupt or mismatched entry) only
        cost the speed-up.
        """
        if not self._private_root():
            return create(source, "all", None)
        cached = self.entry_path(source, providers)
        if self._valid_entry(source, cached):
            try:
                session = create(cached, "none", None)
                self.hits += 1
                return session
            except Exception as exc:
                logger.warning("optimized-model cache entry %s unusable (%s); rebuilding it", cached, exc)
                self._drop(cached)
        self.misses += 1
        temp = self.root / f".{cached.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        identity = file_identity(source)
        try:
            session = create(source, "all", temp)
            # NOTE: only if the source is still the file that was hashed: a package swapping its
            # file between our hash and ORT's read must not plant a model under another's content.
            if temp.exists() and file_identity(source) == identity:
                entry_sha = sha256_file(temp)
                os.replace(temp, cached)  # without its sidecar, an entry is not valid yet
                self._write_meta(cached, self.content_hash(source), entry_sha, file_identity(cached))
            return session
        finally:
            temp.unlink(missing_ok=True)

    # -- checks -----------------------------------------------------------------------
    def _valid_entry(self, source: Path, entry: Path) -> bool:
        """The entry exists, was built from ``source``'s content, and is the file it was written as."""
        meta_path = entry.with_suffix(".json")
        if not entry.is_file() or not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            identity = file_identity(entry)
            if meta.get("source_sha256") != self.content_hash(source):
                raise ValueError("built from another model")
            if meta.get("entry_identity") != identity and (str(entry), identity) not in self._verified:
                entry_sha = sha256_file(entry)
                if meta.get("entry_sha256") != entry_sha:
                    raise ValueError("its bytes changed since it was written")
                self._verified.add((str(entry), identity))
                with contextlib.suppress(OSError):  # recording the identity only saves the next process a hash
                    self._write_meta(entry, str(meta.get("source_sha256")), entry_sha, identity)
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("optimized-model cache entry %s fails its check (%s); rebuilding it", entry, exc)
            self._drop(entry)
            return False
        return True

    def _write_meta(self, entry: Path, source_sha: str, entry_sha: str, entry_identity: str) -> None:
        meta = entry.with_suffix(".json")
        temp = meta.with_name(f".{meta.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        temp.write_text(json.dumps({"source_sha256": source_sha, "entry_sha256": entry_sha,
                                    "entry_identity": entry_identity}), encoding="utf-8")
        os.replace(temp, meta)

    @staticmethod
    def _drop(entry: Path) -> None:
        entry.unlink(missing_ok=True)
        entry.with_suffix(".json").unlink(missing_ok=True)

    def _private_root(self) -> bool:
        """Create the cache directory private to this user, or refuse one that others can write."""
        if self._usable is not None:
            return self._usable
        try:
            self.root.mkdir(parents=True, mode=0o700, exist_ok=True)
            info = self.root.stat()
            owned = not hasattr(os, "getuid") or info.st_uid == os.getuid()
            shared = bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
            if not owned or shared or self.root.is_symlink():
                logger.warning("optimized-model cache %s is not private to this user (owner or mode); not using it",
                               self.root)
                self._usable = False
            else:
                self._usable = True
        except OSError as exc:
            logger.warning("optimized-model cache %s not writable (%s); loading without it", self.root, exc)
            self._usable = False
        return self._usable

    # -- the content index ----------------------------------------------------------------
    def _load_index_locked(self) -> dict[str, str]:
        if self._index is None:
            self._index = {}
            try:
                raw = json.loads((self.root / _INDEX_NAME).read_text(encoding="utf-8"))
                if isinstance(raw, dict):
                    self._index = {str(k): str(v) for k, v in raw.items() if isinstance(v, str) and len(v) == 64}
            except (OSError, ValueError):
                pass  # no index yet, or a broken one: files are hashed again
        return self._index

    def _save_index_locked(self, index: dict[str, str]) -> None:
        if not self._private_root():
            return
        path = self.root / _INDEX_NAME
        temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            temp.write_text(json.dumps(index), encoding="utf-8")
            os.replace(temp, path)
        except OSError as exc:
            logger.debug("content index %s not saved: %s", path, exc)
            temp.unlink(missing_ok=True)
