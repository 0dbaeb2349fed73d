"""Serving as if on a device whose memory is small: a memory limit that counts the page cache.

On a 24 GB development machine every expert file stays in the OS page cache,
so an expert "switch" never reads storage. On the devices this runtime is for,
memory that cannot hold the experts cannot cache their files either. This
module puts the serving process under a limit that counts the page cache, so
a switch reads from storage as it would there:

- ``cgroup-v1`` / ``cgroup-v2``: the process moves into a new memory cgroup
  (``memory.limit_in_bytes`` / ``memory.max``) below its own; its anonymous
  memory moves with it (v1: ``move_charge_at_immigrate``), and every file page
  it reads afterwards is charged there, so the kernel reclaims expert file
  pages as the limit is reached. It moves back, and the cgroup is removed, on
  exit.
- ``fadvise``: where no cgroup can be made (no permission, no memory
  controller, macOS), each expert file's pages are dropped after its load
  (``posix_fadvise(DONTNEED)``) — every load reads storage, which is the
  limit's effect when the budget leaves no room for a page cache.

Either way each expert file's cached pages are dropped on entry, so the run
starts cold and so do the entries of a bench after it. Bytes read from
storage come from the kernel's per-process I/O accounting (``/proc/self/io``).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgecoe.config import RuntimeConfig
from edgecoe.errors import InvalidInputError
from edgecoe.loaders import ExpertLoader, LoadedExpert, WrappedLoader
from edgecoe.memory import drop_page_cache, rss_bytes
from edgecoe.package import Package
from edgecoe.profile import DeviceProfile

Mechanism = Literal["cgroup-v1", "cgroup-v2", "fadvise"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def storage_read_bytes() -> int | None:
    """Bytes this process has read from storage (not the page cache), or None where the OS does not say."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "read_bytes":
            return int(value)
    return None


def drop_cached_pages(paths: Iterable[Path]) -> int:
    """Drop each existing file's cached pages; returns how many files were dropped."""
    dropped = 0
    for path in paths:
        try:
            drop_page_cache(path)
        except (OSError, AttributeError):  # gone meanwhile, or no posix_fadvise (macOS)
            continue
        dropped += 1
    return dropped


@dataclass(frozen=True)
class MemoryCgroup:
    """One memory cgroup directory (v1 or v2), driven through its control files."""

    path: Path
    version: Literal[1, 2]

    @property
    def _limit_file(self) -> str:
        return "memory.limit_in_bytes" if self.version == 1 else "memory.max"

    def set_limit(self, num_bytes: int) -> None:
        (self.path / self._limit_file).write_text(str(num_bytes))

    def limit(self) -> int | None:
        text = (self.path / self._limit_file).read_text().strip()
        return None if text == "max" else int(text)

    def add(self, pid: int) -> None:
        """Move ``pid``'s whole thread group here."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def peak(self) -> int | None:
        """The most memory the cgroup held (v1 ``memory.max_usage_in_bytes``; v2 ``memory.peak``)."""
        return self._read_int("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")

    def limit_hits(self) -> int | None:
        """How often usage reached the limit (v1 ``memory.failcnt``; v2 ``memory.events`` max)."""
        if self.version == 1:
            return self._read_int("memory.failcnt")
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            return None
        return None

    def _read_int(self, name: str) -> int | None:
        """A control file's number, or None where the kernel does not offer that file."""
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None


def own_memory_cgroup(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> MemoryCgroup:
    """The memory cgroup this process is in.

    Raises:
        OSError: no memory controller is mounted, or this process's cgroup is unknown.
    """
    lines = proc_cgroup.read_text().splitlines()
    for line in lines:  # v1: "4:memory:/some/path"
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(",") and (root / "memory").is_dir():
            return MemoryCgroup(root / "memory" / path.lstrip("/"), 1)
    for line in lines:  # v2: "0::/some/path", with the memory controller available there
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            here = root / path.lstrip("/")
            if "memory" in (root / "cgroup.controllers").read_text().split():
                return MemoryCgroup(here, 2)
    raise OSError(errno.ENOENT, "no memory cgroup controller for this process")


@dataclass
class DeviceMemory:
    """The memory limit a run is under, and what it did (for the report)."""

    limit_bytes: int
    mechanism: Mechanism
    note: str = ""
    files: tuple[Path, ...] = ()
    cgroup: MemoryCgroup | None = None
    baseline_bytes: int = 0
    _start_hits: int | None = field(default=None, repr=False)

    def wrap(self, loader: ExpertLoader[Any], files_of: Callable[[str], list[Path]]) -> ExpertLoader[Any]:
        """The loader to serve with: under ``fadvise``, one that drops an expert's file pages after each load."""
        if self.mechanism != "fadvise":
            return loader
        return PageDroppingLoader(loader, files_of)

    def drop_cache(self) -> None:
        """Drop every expert file's cached pages (each bench entry starts cold)."""
        drop_cached_pages(self.files)

    def describe(self) -> dict[str, object]:
        hits = self.cgroup.limit_hits() if self.cgroup else None
        return {"limit_bytes": self.limit_bytes, "mechanism": self.mechanism, "note": self.note,
                "process_bytes_at_entry": self.baseline_bytes,
                "peak_bytes": self.cgroup.peak() if self.cgroup else None,
                "limit_hits": None if hits is None or self._start_hits is None else hits - self._start_hits}


class PageDroppingLoader(WrappedLoader[Any]):
    """Drops the cached pages of every file an expert's load may have read, right after the load."""

    def __init__(self, inner: ExpertLoader[Any], files_of: Callable[[str], list[Path]]) -> None:
        super().__init__(inner)
        self._files_of = files_of

    def load(self, expert: str, processor_id: str) -> LoadedExpert[Any]:
        loaded = self.inner.load(expert, processor_id)
        drop_cached_pages(self._files_of(expert))
        return loaded


@contextmanager
def limit_device_memory(limit_bytes: int, files: Iterable[Path], *, allow_cgroup: bool = True,
                        root: Path = CGROUP_ROOT,
                        proc_cgroup: Path = Path("/proc/self/cgroup")) -> Iterator[DeviceMemory]:
    """Run the body under a memory limit of ``limit_bytes`` that counts the page cache.

    Args:
        files: every file serving may read (expert models, optimized-cache entries):
            their cached pages are dropped first.
        allow_cgroup: False forces the ``fadvise`` fallback (tests, comparisons).

    Raises:
        InvalidInputError: the limit is below what this process already holds.
    """
    held = rss_bytes()
    if limit_bytes <= held:
        raise InvalidInputError(
            f"--device-memory {limit_bytes} bytes is below what this process already holds ({held} bytes: "
            "Python, ONNX Runtime and the package's metadata); give the expert budget plus at least that")
    device = DeviceMemory(limit_bytes, "fadvise", files=tuple(files), baseline_bytes=held)
    device.drop_cache()
    parent: MemoryCgroup | None = None
    if allow_cgroup:
        try:
            parent = own_memory_cgroup(root, proc_cgroup)
            device.cgroup, carried = _make_child(parent, limit_bytes)
            device.mechanism = "cgroup-v1" if parent.version == 1 else "cgroup-v2"
            if not carried:
                device.note = (f"memory held before the limit ({held} bytes) is not counted against it: "
                               "the limit applies to memory allocated and files read from then on")
        except OSError as exc:
            device.note = f"no memory cgroup could be made ({exc.strerror or exc}): expert file pages dropped after each load"
    else:
        device.note = "cgroup not requested: expert file pages dropped after each load"
    if device.cgroup is not None:
        device._start_hits = device.cgroup.limit_hits()
    try:
        yield device
    finally:
        if device.cgroup is not None and parent is not None:
            _leave(device.cgroup, parent)


IN_FLIGHT_ALLOWANCE_BYTES = 256 << 20
"""Device-memory ``auto``: room for queued requests' inputs and allocator slack beside the experts."""


def auto_device_memory(pkg: Package, profile: DeviceProfile, config: RuntimeConfig,
                       footprint_bytes: Callable[[str], int]) -> int:
    """The expert budget plus the runtime's fixed overhead: what this process holds now (Python,
    ONNX Runtime, the package's metadata), every executor's batch memory, and an in-flight allowance."""
    from edgecoe.engine import apply_budget, cost_model, plan_executors, working_bytes_per_executor

    budgeted = apply_budget(profile, config.budget, total_bytes=sum(footprint_bytes(n) for n in pkg.experts))
    per_executor = working_bytes_per_executor(pkg.manifest, budgeted,
                                              cost_model(pkg.manifest, budgeted, config.resolved_preset()))
    working = sum(per_executor[e.processor_id] for e in plan_executors(budgeted, config))
    budgets = sum(p.budget_bytes for p in budgeted.processors)
    return budgets + working + rss_bytes() + IN_FLIGHT_ALLOWANCE_BYTES


@contextmanager
def sessions_under_device_memory(pkg: Package, profile: DeviceProfile, config: RuntimeConfig,
                                 device_memory: int | Literal["auto"]) -> Iterator[tuple[ExpertLoader[Any],
                                                                                         DeviceMemory]]:
    """ONNX Runtime sessions for ``pkg``, served under a device memory limit (bytes or ``auto``).

    Yields:
        (the loader to give the runtime, the limit as entered: for the report).
    """
    from edgecoe.loaders.session import SessionLoader

    loader = SessionLoader(pkg, profile, config)
    limit = (device_memory if isinstance(device_memory, int)
             else auto_device_memory(pkg, profile, config, loader.footprint_bytes))
    with limit_device_memory(limit, loader.all_files()) as device:
        yield device.wrap(loader, loader.files_of), device


def _make_child(parent: MemoryCgroup, limit_bytes: int) -> tuple[MemoryCgroup, bool]:
    """A new cgroup below ``parent`` with the limit, this process moved into it; and whether
    the memory the process already held moved with it (counts against the limit)."""
    _remove_abandoned(parent)
    child = MemoryCgroup(parent.path / f"edgecoe-{os.getpid()}-{time.monotonic_ns()}", parent.version)
    child.path.mkdir()
    carried = False  # v2 never moves charges: there only memory allocated from now on counts
    try:
        if parent.version == 1:
            try:  # carry the process's anonymous memory along, so the limit counts all of it
                (child.path / "memory.move_charge_at_immigrate").write_text("1")
                carried = True
            except OSError:
                carried = False  # deprecated on newer kernels: only memory allocated from now on counts
        else:
            # NOTE: v2 only limits a child whose parent delegates the memory controller.
            subtree = parent.path / "cgroup.subtree_control"
            if "memory" not in subtree.read_text().split():
                subtree.write_text("+memory")
        child.set_limit(limit_bytes)
        child.add(os.getpid())
    except OSError:
        _remove(child)
        raise
    return child, carried


def _remove_abandoned(parent: MemoryCgroup) -> None:
    """Remove cgroups an earlier run left behind (killed inside its limit): ours, and empty."""
    for path in parent.path.glob("edgecoe-*-*"):
        try:
            if path.is_dir() and not (path / "cgroup.procs").read_text().strip():
                _remove(MemoryCgroup(path, parent.version))
        except OSError:
            continue


def _leave(child: MemoryCgroup, parent: MemoryCgroup) -> None:
    try:
        parent.add(os.getpid())
    finally:
        _remove(child)


def _remove(cgroup: MemoryCgroup) -> None:
    # NOTE: the kernel may take a moment to let go of a cgroup its last task just left.
    for _ in range(20):
        try:
            cgroup.path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
