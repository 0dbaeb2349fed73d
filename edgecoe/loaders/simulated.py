"""The simulator's loader: nothing is loaded; a load costs what the device profile says.

A switch takes the profiled load latency of the expert's architecture on the
processor's kind; on a NUMA profile, when the host tier already holds the
expert's bytes, the (faster) host load latency instead. The host tier is the
same mechanism the session loader uses, holding sizes instead of bytes.

Each load also says which shared links it crosses and for how long
(:meth:`CostModelLoader.stages`): the storage link (``ssd``), and on NUMA
devices the host-to-device link of the processor's kind. The simulator
queues loads on those links, so concurrent loads share the bandwidth
instead of each getting all of it.
"""

from __future__ import annotations

from edgecoe.cache.host import HostStore
from edgecoe.errors import InvalidInputError
from edgecoe.loaders import LoadedExpert
from edgecoe.package.manifest import Manifest
from edgecoe.profile import ArchitectureCost, DeviceProfile


class CostModelLoader:
    """Loads by the profile's numbers; every handle is None.

    Raises:
        InvalidInputError: the profile lacks a cost for some (architecture,
            processor kind) pair the manifest needs.
    """

    def __init__(self, manifest: Manifest, profile: DeviceProfile) -> None:
        missing = sorted({(e.architecture, p.kind) for e in manifest.experts.values() for p in profile.processors
                          if profile.cost(e.architecture, p.kind) is None})
        if missing:
            raise InvalidInputError(
                f"profile {profile.name} has no costs for (architecture, processor): {missing[:5]}")
        self.manifest = manifest
        self.profile = profile
        self._kind = {p.id: p.kind for p in profile.processors}
        self._host = (HostStore(profile.host_budget_bytes)
                      if profile.memory == "numa" and profile.host_budget_bytes else None)
        # (processor, expert) -> the links its latest load crossed, with the time on each
        self.last_stages: dict[tuple[str, str], list[tuple[str, float]]] = {}

    @property
    def host(self) -> HostStore | None:
        return self._host

    def _cost(self, expert: str, kind: str) -> ArchitectureCost:
        cost = self.profile.cost(self.manifest.experts[expert].architecture, kind)
        assert cost is not None  # checked for every pair at construction
        return cost

    def footprint_bytes(self, expert: str) -> int:
        """The profile's footprint for the expert's architecture (first processor), else its file bytes."""
        cost = self._cost(expert, self.profile.processors[0].kind)
        return cost.footprint_bytes or self.manifest.experts[expert].total_bytes

    def load(self, expert: str, processor_id: str) -> LoadedExpert[None]:
        cost = self._cost(expert, self._kind[processor_id])
        from_host = (self._host is not None
                     and self._host.touch(expert, self.manifest.experts[expert].total_bytes)
                     and cost.host_load_ms is not None)
        load_ms = cost.host_load_ms if from_host and cost.host_load_ms is not None else cost.load_ms
        self.last_stages[(processor_id, expert)] = self.stages(cost, self._kind[processor_id], from_host=from_host)
        return LoadedExpert(None, self.footprint_bytes(expert), load_ms, measured=False,
                            source="host" if from_host else "disk")

    def stage(self, expert: str) -> None:
        if self._host is not None:
            self._host.touch(expert, self.manifest.experts[expert].total_bytes)

    def stages(self, cost: ArchitectureCost, kind: str, *, from_host: bool) -> list[tuple[str, float]]:
        """The shared links one load crosses, in order, with the time it holds each.

        NOTE: a load from storage keeps its profiled total (``load_ms``); on a NUMA
        accelerator its last ``host_load_ms`` of that is the copy over the host-to-device
        link, so storage reads and device copies contend where they really do.
        """
        link = f"host->{kind}"
        if from_host and cost.host_load_ms is not None:
            return [(link, cost.host_load_ms)]
        if self._host is None or kind == "cpu" or cost.host_load_ms is None:
            return [("ssd", cost.load_ms)]
        copy_ms = min(cost.host_load_ms, cost.load_ms)
        return [("ssd", cost.load_ms - copy_ms), (link, copy_ms)]

    def unload(self, expert: str, loaded: LoadedExpert[None]) -> None:
        pass  # nothing is held
