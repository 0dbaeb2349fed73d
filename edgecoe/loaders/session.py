"""The ONNX Runtime session loader: an expert is resident when it has a live session.

Where a session's model comes from, cheapest first:

- CPU: the per-machine optimized-model cache (:mod:`edgecoe.optcache`), a
  level-"all" graph saved on the expert's first load and read back with graph
  optimization off (4-7x faster switches on the demo);
- NUMA devices: the host-memory tier keeps model bytes in RAM, so a switch
  reads disk only when the tier missed (disk -> host -> device);
- otherwise the package's optimized copy, or its portable model.

Footprints are measured once per architecture (PSS growth over live
sessions) unless the device profile already states them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

from onnxruntime import InferenceSession as Session

from edgecoe.cache.host import HostStore
from edgecoe.config import RuntimeConfig
from edgecoe.loaders import LoadedExpert
from edgecoe.memory import measure_footprint
from edgecoe.optcache import Create, OptimizedModelCache, default_cache_dir
from edgecoe.package import Package
from edgecoe.profile import DeviceProfile
from edgecoe.providers import Optimization, ProviderChoice, choose_providers, create_session
from edgecoe.sched.types import build_executors


class SessionLoader:
    """Loads a package's experts as ONNX Runtime sessions on a device profile's processors.

    Args:
        package: the package whose experts it loads.
        profile: processors (providers, options, threads) and, where known, footprints.
        config: optimized-copy and optimized-cache switches, threads, CPU fallback.

    Raises:
        ProviderUnavailableError: a processor's provider is missing and fallback is off.
    """

    def __init__(self, package: Package, profile: DeviceProfile, config: RuntimeConfig) -> None:
        self.package = package
        self.profile = profile
        self.config = config
        self.optcache = (OptimizedModelCache(Path(config.cache_dir) if config.cache_dir else default_cache_dir())
                         if config.optimized_cache else None)
        self.choices: dict[str, ProviderChoice] = {
            p.id: choose_providers(p, allow_cpu_fallback=config.allow_cpu_fallback) for p in profile.processors}
        executors = build_executors(((p.id, p.kind, p.num_executors) for p in profile.processors),
                                    parallel=config.resolved_preset().parallel, num_executors=config.num_executors)
        self._threads = {
            p.id: (p.intra_op_threads or config.threads_per_executor(
                sum(1 for e in executors if e.processor_id == p.id)))
            for p in profile.processors}
        # NUMA: a host-memory tier of model bytes in front of the device sessions.
        self._host = (HostStore(profile.host_budget_bytes)
                      if profile.memory == "numa" and profile.host_budget_bytes else None)
        self._footprints = self._measure_footprints()  # architecture -> bytes

    @property
    def host(self) -> HostStore | None:
        return self._host

    # -- the loader protocol --------------------------------------------------
    def footprint_bytes(self, expert: str) -> int:
        """Bytes an expert occupies once resident (measured per architecture)."""
        return self._footprints[self.package.experts[expert].architecture]

    def load(self, expert: str, processor_id: str) -> LoadedExpert[Session]:
        started = time.perf_counter()
        session = self.create(expert, processor_id)
        return LoadedExpert(session, self.footprint_bytes(expert), (time.perf_counter() - started) * 1e3,
                            measured=True)

    def unload(self, expert: str, loaded: LoadedExpert[Session]) -> None:
        del loaded  # dropping the last reference frees the session

    def stage(self, expert: str) -> None:
        """Read the model a session on the device (the profile's first processor) would be made
        from into the host tier (NUMA start-up)."""
        if self._host is not None and not self.package.experts[expert].external_data:
            self._host_bytes(self._source(expert, self.profile.processors[0].id)[0])

    def files_of(self, expert: str) -> list[Path]:
        """Every file a load of ``expert`` may read: its package files and its optimized-cache entries."""
        record = self.package.experts[expert]
        files = [self.package.root / f.path for f in record.files()]
        for processor_id in self.choices:
            cached = self._cached_create(expert, processor_id)
            if cached is not None and self.optcache is not None:
                files.append(self.optcache.entry_path(cached[0], cached[1]))
        return files

    def all_files(self) -> list[Path]:
        """Every file a load of any of the package's experts may read."""
        return [path for expert in self.package.experts for path in self.files_of(expert)]

    # -- sessions ---------------------------------------------------------------
    def create(self, expert: str, processor_id: str) -> Session:
        """A new session for ``expert`` on ``processor_id``, from the cheapest source.

        Raises:
            SessionError: ONNX Runtime refused the model.
        """
        cached = self._cached_create(expert, processor_id)
        if cached is not None and self._host is None:
            assert self.optcache is not None
            return cast(Session, self.optcache.session(*cached))
        path, level = self._source(expert, processor_id)
        if self._host is not None and not self.package.experts[expert].external_data:
            return self._session(self._host_bytes(path), processor_id, level)  # NUMA: disk -> host -> device
        return self._session(path, processor_id, level)

    def _source(self, expert: str, processor_id: str) -> tuple[Path, Optimization]:
        """The file a session for ``expert`` on ``processor_id`` is made from, and at which optimization
        level: the optimized-cache entry (built now if missing) where it applies, else the package's model."""
        cached = self._cached_create(expert, processor_id)
        if cached is not None:
            assert self.optcache is not None
            self.optcache.ensure(*cached)
            entry = self.optcache.entry_path(cached[0], cached[1])
            if entry.exists():
                return entry, "none"
        path, optimized = self._model_path(expert)
        return path, "none" if optimized else "all"

    def _host_bytes(self, path: Path) -> bytes:
        """A model file's bytes through the host tier.

        NOTE: keyed by the file, not the expert: an expert's package model and its
        optimized-cache entry are different bytes; keyed by expert, a load that wanted the
        entry could be handed the model, and run it with graph optimization off.
        """
        assert self._host is not None
        return self._host.get(str(path), path)

    def warm_optimized_cache(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Build every missing optimized-model cache entry now (benchmarks: every
        policy then starts from the same, warm, cache).

        Args:
            progress: called with (experts done, experts in all) after each expert.

        Returns:
            How many entries were built.
        """
        built = 0
        total = len(self.package.experts)
        for done, expert in enumerate(self.package.experts, start=1):
            if progress:
                progress(done - 1, total)
            for processor_id in self.choices:
                args = self._cached_create(expert, processor_id)
                if args is not None and self.optcache is not None:
                    built += self.optcache.ensure(*args)
        if progress:
            progress(total, total)
        return built

    def _session(self, source: Path | bytes, processor_id: str, level: Optimization,
                 save: Path | None = None) -> Session:
        return create_session(source, providers=self.choices[processor_id].providers, optimization=level,
                              save_optimized_to=save, intra_op_threads=self._threads[processor_id])

    def _model_path(self, expert: str) -> tuple[Path, bool]:
        record = self.package.experts[expert]
        optimized = self.config.use_optimized and record.optimized is not None
        return self.package.model_path(expert, optimized=optimized), optimized

    def _cached_create(self, expert: str, processor_id: str) -> tuple[Path, list[str], Create] | None:
        """The optimized-model cache's arguments for ``expert``, or None where it does not apply.

        NOTE: CPU only: a level-"all" graph for CUDA or CoreML has not been run
        on such a machine here; those load the package's portable copies.
        """
        record = self.package.experts[expert]
        names = [p[0] for p in self.choices[processor_id].providers]
        if self.optcache is None or names != ["CPUExecutionProvider"] or record.external_data:
            return None
        path, _ = self._model_path(expert)

        def create(source: Path, level: Literal["none", "all"], save: Path | None) -> object:
            return self._session(source, processor_id, level, save)

        return path, names, create

    def _measure_footprints(self) -> dict[str, int]:
        """Resident memory per architecture, measured by loading one expert of each.

        NOTE: measured here, before executors start, because process-wide
        memory deltas are only meaningful when nothing else allocates.
        Never below the file's bytes (shared, mmapped pages would read lower).
        """
        footprints: dict[str, int] = {}
        first_of: dict[str, str] = {}
        for name, record in self.package.experts.items():
            first_of.setdefault(record.architecture, name)
        processor = self.profile.processors[0]
        for arch, expert in first_of.items():
            cost = self.profile.cost(arch, processor.kind)
            if cost is not None and cost.footprint_bytes:
                footprints[arch] = cost.footprint_bytes
                continue
            measured = measure_footprint(lambda: self.create(expert, processor.id))  # noqa: B023 - called at once
            file_bytes = self.package.experts[expert].total_bytes
            footprints[arch] = file_bytes if measured is None else max(measured, file_bytes)
        return footprints
