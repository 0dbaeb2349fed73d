"""Expert weights as cache entries: the loader of weight tensors and the expert runner.

:class:`WeightLoader` is an :class:`~edgecoe.loaders.ExpertLoader` like the
session loader, so MoE experts live in the same :class:`~edgecoe.cache.ExpertCache`
(byte budget, counted pins, eviction policies, timed loads): a load reads the
expert's file into one buffer the size the budget counts, and wraps its
tensors as ONNX Runtime values where the expert graph runs. On CPU the values
point at that buffer (no copy); on CUDA they are copied into device memory and
the host buffer is dropped, so the budget counts device bytes. Nothing is
memory-mapped: a resident expert is exactly the bytes the cache accounts for.

:class:`ExpertRunner` is the one session per expert format that runs every
expert, its weights bound as inputs (IO binding: device-resident weights stay
where they are, activations go in and come back on the CPU).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecoe.cache.host import HostStore
from edgecoe.errors import InvalidInputError, PackageError, Problem, SessionError
from edgecoe.loaders import LoadedExpert
from edgecoe.moe.graphs import expert_graph
from edgecoe.moe.manifest import ExpertFormat, parse_expert_name
from edgecoe.moe.package import MoePackage
from edgecoe.providers import create_session

_NUMPY_DTYPES = {"float32": np.float32, "uint8": np.uint8}


@dataclass(frozen=True, slots=True)
class Placement:
    """Where resident expert weights live: ``cpu``, or a CUDA device (``cuda:N``).

    CoreML sessions read inputs from host memory, so a CoreML run places weights on ``cpu``.
    """

    device: str = "cpu"

    def __post_init__(self) -> None:
        kind, _, index = self.device.partition(":")
        if kind not in ("cpu", "cuda") or (kind == "cpu" and index) or (kind == "cuda" and not index.isdigit()):
            raise InvalidInputError(f"weight placement {self.device!r} is not 'cpu' or 'cuda:N'")

    @property
    def kind(self) -> str:
        return self.device.partition(":")[0]

    @property
    def index(self) -> int:
        return int(self.device.partition(":")[2] or 0)


OrtValueFactory = Callable[[np.ndarray, str, int], Any]
"""Makes an ORT value of an array on (device kind, index); tests pass a fake for CUDA."""


def _ort_value(array: np.ndarray, kind: str, index: int) -> Any:
    return ort.OrtValue.ortvalue_from_numpy(array, kind, index)


@dataclass(slots=True)
class ExpertWeights:
    """A resident expert: its tensors by expert-graph input name, as ORT values on the placement.

    ``buffer`` keeps the host bytes alive while CPU values point into them (None on CUDA).
    """

    values: dict[str, Any]
    buffer: np.ndarray | None
    num_bytes: int


class WeightLoader:
    """Reads expert weight files into budgeted buffers; see the module docstring.

    Args:
        package: the validated MoE package.
        placement: where resident weights live.
        host: a NUMA host-memory tier in front of the device (CUDA only): file bytes
            kept in RAM, so a reload copies from memory instead of reading storage.
        ort_value: how an array becomes an ORT value (injected for tests of the CUDA path).
    """

    def __init__(self, package: MoePackage, *, placement: Placement | None = None, host: HostStore | None = None,
                 ort_value: OrtValueFactory = _ort_value) -> None:
        self.package = package
        self.format: ExpertFormat = package.manifest.expert_format
        self.placement = placement or Placement()
        if host is not None and self.placement.kind == "cpu":
            raise InvalidInputError("a host-memory tier only makes sense in front of a device (placement cuda:N)")
        self._host = host
        self._ort_value = ort_value
        self._layers = package.manifest.layers

    @property
    def host(self) -> HostStore | None:
        return self._host

    def path_of(self, expert: str) -> Path:
        layer, index = parse_expert_name(expert)
        return self.package.path(self._layers[layer].experts[index])

    def footprint_bytes(self, expert: str) -> int:
        return self.format.file_bytes

    def load(self, expert: str, processor_id: str) -> LoadedExpert[ExpertWeights]:
        started = time.perf_counter()
        path = self.path_of(expert)
        source = "disk"
        if self._host is not None:
            hits = self._host.stats.num_hits
            data = self._host.get(expert, path)
            source = "host" if self._host.stats.num_hits > hits else "disk"
            buffer = np.frombuffer(data, dtype=np.uint8)
        else:
            buffer = read_exact(path, self.format.file_bytes)
        views: dict[str, np.ndarray] = {t.name: buffer[t.offset:t.offset + t.num_bytes].view(_NUMPY_DTYPES[t.dtype]).reshape(t.shape)
                 for t in self.format.tensors}
        kind, index = self.placement.kind, self.placement.index
        values: dict[str, Any] = {name: self._ort_value(view, kind, index) for name, view in views.items()}
        weights = ExpertWeights(values=values, buffer=buffer if kind == "cpu" else None,
                                num_bytes=self.format.file_bytes)
        return LoadedExpert(weights, weights.num_bytes, (time.perf_counter() - started) * 1e3, True, source)

    def unload(self, expert: str, loaded: LoadedExpert[ExpertWeights]) -> None:
        # Dropping the values (and the host buffer) frees the memory once no run holds them;
        # pins guarantee none does.
        loaded.handle.values.clear()
        loaded.handle.buffer = None

    def stage(self, expert: str) -> None:
        if self._host is not None:
            self._host.get(expert, self.path_of(expert))


def read_exact(path: Path, num_bytes: int) -> np.ndarray:
    """The ``num_bytes`` of regular file ``path``, read into a fresh buffer (never memory-mapped).

    Raises:
        PackageError: the file is not a regular file of that size (replaced since the package loaded).
    """
    buffer = np.empty(num_bytes, dtype=np.uint8)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != num_bytes:
            raise PackageError(path.parent, [Problem(path.name, f"is no longer a regular file of {num_bytes} bytes")])
        view = memoryview(buffer.data)
        done = 0
        while done < num_bytes:
            got = os.readv(fd, [view[done:]])
            if got == 0:
                raise PackageError(path.parent, [Problem(path.name, f"ended after {done} of {num_bytes} bytes")])
            done += got
    finally:
        os.close(fd)
    return buffer


class ExpertRunner:
    """Runs any routed expert of one format: one ONNX Runtime session, the weights bound per call.

    Args:
        fmt / hidden_size / intermediate_size: the package's expert shape.
        providers: execution providers for the session (CPU, CUDA or CoreML with CPU after).
        placement: where the weights are (activations always come back to the CPU).
    """

    def __init__(self, fmt: ExpertFormat, *, hidden_size: int, intermediate_size: int,
                 providers: list[tuple[str, dict[str, str]]] | None = None, placement: Placement | None = None,
                 intra_op_threads: int = 0, session_config: dict[str, str] | None = None) -> None:
        model = expert_graph(fmt, hidden_size=hidden_size, intermediate_size=intermediate_size)
        self.session = create_session(model.SerializeToString(), providers=providers,
                                      intra_op_threads=intra_op_threads, session_config=session_config)
        self.placement = placement or Placement()

    def run(self, weights: ExpertWeights, x: np.ndarray, routing_weight: np.ndarray) -> np.ndarray:
        """``routing_weight * expert(x)`` for rows ``x [N, hidden]`` and ``routing_weight [N, 1]``."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("x", np.ascontiguousarray(x, dtype=np.float32))
        binding.bind_cpu_input("weight", np.ascontiguousarray(routing_weight, dtype=np.float32))
        for name, value in weights.values.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("y", "cpu")
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # ORT raises its own exception types; wrap at the session boundary
            raise SessionError(f"running an expert failed: {exc}") from exc
        out: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return out
