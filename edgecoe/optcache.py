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

The key covers everything the optimized graph depends on: the model file
(declared sha256, and size and mtime so a file changed on disk misses), the
ONNX Runtime version, the providers and the CPU (model name and ISA flags).
Entries are written to a temp name and renamed, so a crash never leaves a
half-written model under a valid key; an entry that fails to load is deleted
and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import secrets
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import onnxruntime as ort

logger = logging.getLogger(__name__)

ENV_DIR = "EDGECOE_CACHE_DIR"


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


Create = Callable[[Path, Literal["none", "all"], "Path | None"], object]
"""``create(source, optimization, save_optimized_to)`` makes a session with the caller's providers and threads."""


class OptimizedModelCache:
    """Sessions through a level-"all" optimized-model cache in ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    def key(self, source: Path, declared_sha256: str, providers: list[str]) -> str:
        stat = source.stat()
        text = "|".join([declared_sha256, str(stat.st_size), str(stat.st_mtime_ns), ",".join(providers),
                         machine_signature()])
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def entry_path(self, source: Path, declared_sha256: str, providers: list[str]) -> Path:
        """Where ``source``'s optimized model lives in the cache (it may not exist yet)."""
        return self.root / f"{self.key(source, declared_sha256, providers)}.onnx"

    def ensure(self, source: Path, declared_sha256: str, providers: list[str], create: Create) -> bool:
        """Build the entry for ``source`` unless it exists; True when one was built."""
        if self.entry_path(source, declared_sha256, providers).exists():
            return False
        misses = self.misses
        self.session(source, declared_sha256, providers, create)
        return self.misses > misses

    def session(self, source: Path, declared_sha256: str, providers: list[str], create: Create) -> object:
        """A session for ``source``: from the cached optimized model, or made now and cached.

        Raises whatever ``create`` raises for ``source`` itself; problems with
        the cache (unwritable, a corrupt entry) only cost the speed-up.
        """
        cached = self.entry_path(source, declared_sha256, providers)
        if cached.exists():
            try:
                session = create(cached, "none", None)
                self.hits += 1
                return session
            except Exception as exc:
                logger.warning("optimized-model cache entry %s unusable (%s); rebuilding it", cached, exc)
                cached.unlink(missing_ok=True)
        self.misses += 1
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            temp = self.root / f".{cached.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        except OSError as exc:
            logger.warning("optimized-model cache %s not writable (%s); loading without it", self.root, exc)
            return create(source, "all", None)
        try:
            session = create(source, "all", temp)
            if temp.exists():
                os.replace(temp, cached)
            return session
        finally:
            temp.unlink(missing_ok=True)
