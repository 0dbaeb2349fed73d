"""Admission: what a request must be before anything is queued.

Inputs are checked against the package's declared request inputs (names,
dtype, shape of one item, NaN/inf unless allowed), metadata against its
declared keys and values, and the entry rule must pick a preliminary expert.
A request that fails here raises :class:`InvalidInputError` and leaves no
trace in the runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from edgecoe.errors import InvalidInputError, QueueFullError, RoutingError, WorkloadError
from edgecoe.package.feeds import entry_request_inputs
from edgecoe.package.manifest import Manifest
from edgecoe.package.routing import entry_expert
from edgecoe.workload import Workload, materialize


class Admission:
    """Validates requests for one manifest; stateless after construction, so thread-safe."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._input_specs = {s.name: s for s in manifest.inputs}
        self._known_metadata = set(manifest.metadata) | {manifest.entry.key}
        # A request carries what its route needs; at submit only its first expert's reads are known.
        firsts = {*manifest.entry.experts.values(), *([manifest.entry.default] if manifest.entry.default else [])}
        self._needs = {name: entry_request_inputs(manifest, name) for name in firsts if name in manifest.experts}

    def admit(self, inputs: Mapping[str, np.ndarray],
              metadata: Mapping[str, object] | None) -> tuple[dict[str, np.ndarray], str]:
        """Check one request.

        Returns:
            (its inputs as arrays, the preliminary expert it goes to first).

        Raises:
            InvalidInputError: naming the input, key or value at fault.
        """
        metadata = {} if metadata is None else metadata
        self.metadata(metadata)
        try:
            first = entry_expert(self.manifest.entry, metadata)
        except RoutingError as exc:
            raise InvalidInputError(str(exc)) from None
        return self.inputs(inputs, first=first), first

    def inputs(self, inputs: Mapping[str, np.ndarray], *, first: str | None = None) -> dict[str, np.ndarray]:
        """The request's inputs, checked and copied (read-only): a caller changing its arrays
        after submit cannot change what the model sees, nor bypass the checks.

        A request carries the package inputs its route reads: those its first expert
        reads must be there (``first``; None: every package input); any other it carries
        is checked the same way, and an expert later on its path that needs one it
        lacks fails the request, naming the expert and the input.
        """
        if not isinstance(inputs, Mapping) or not all(isinstance(k, str) for k in inputs):
            raise InvalidInputError(f"request inputs must be a mapping of input name to array, got "
                                    f"{type(inputs).__name__}")
        needed = self._needs.get(first, list(self._input_specs)) if first is not None else list(self._input_specs)
        missing = sorted(set(needed) - set(inputs))
        extra = sorted(set(inputs) - set(self._input_specs))
        if missing or extra:
            at = f" (expert {first!r}, where this request starts, reads {sorted(needed)})" if first else ""
            raise InvalidInputError(f"request inputs {sorted(inputs)}: missing {missing}, unexpected {extra}{at}")
        out = {}
        for name, spec in self._input_specs.items():
            if name not in inputs:
                continue
            if not isinstance(inputs[name], (np.ndarray, np.generic, list, tuple, int, float, bool)):
                raise InvalidInputError(f"input {name!r} is a {type(inputs[name]).__name__}, expected a numpy array")
            array = np.array(inputs[name], copy=True)
            array.setflags(write=False)
            if array.dtype != np.dtype(spec.dtype):
                raise InvalidInputError(f"input {name!r} has dtype {array.dtype}, expected {spec.dtype}")
            if len(array.shape) != len(spec.shape) or any(
                    isinstance(d, int) and d != s for d, s in zip(spec.shape, array.shape, strict=False)):
                raise InvalidInputError(f"input {name!r} has shape {list(array.shape)}, expected {spec.shape_str()} "
                                        "(one item, no batch axis)")
            if not spec.allow_non_finite and array.dtype.kind in "fc" and not np.isfinite(array).all():
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                raise InvalidInputError(f"input {name!r} has {bad} NaN/inf value(s); the package expects finite "
                                        "values (its manifest input sets allow_non_finite: false)")
            out[name] = array
        return out

    def metadata(self, metadata: Mapping[str, object]) -> None:
        """Keys the package declares (or its entry key), scalar values, declared values only."""
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise InvalidInputError(f"request metadata must be a mapping of string keys to values, got "
                                    f"{type(metadata).__name__}")
        unknown = sorted(set(metadata) - self._known_metadata)
        if unknown:
            raise InvalidInputError(f"request metadata has unknown key(s) {unknown}; the package knows "
                                    f"{sorted(self._known_metadata)}")
        for key, value in metadata.items():
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not np.isfinite(value)):
                raise InvalidInputError(f"request metadata {key}={value!r}: expected a string, integer, "
                                        "finite number or boolean")
            declared = self.manifest.metadata.get(key)
            if declared is not None and declared.values is not None and str(value) not in declared.values:
                shown = ", ".join(declared.values[:8]) + (", ..." if len(declared.values) > 8 else "")
                raise InvalidInputError(f"request metadata {key}={value!r} is not one of the package's "
                                        f"values ({shown})")


def check_trace(workload: Workload, manifest: Manifest, *, limit: int = 20) -> list[str]:
    """Every problem a run of ``workload`` on ``manifest`` would meet at submit, found before anything runs.

    The same checks ``submit`` makes (metadata, entry rule, inputs) on each request's
    materialised inputs. Returns up to ``limit`` problems, each naming its request.
    """
    admission = Admission(manifest)
    stateful = {name for name, expert in manifest.experts.items() if expert.state}
    problems: list[str] = []
    for request in workload.requests:
        try:
            _, first = admission.admit(materialize(request, manifest.inputs, workload.base_dir), request.metadata)
            if first in stateful and request.stream is None:
                raise InvalidInputError(f"expert {first!r} is stateful: the request needs a `stream`")
        except (InvalidInputError, WorkloadError) as exc:
            text = str(exc)
            problems.append(text if text.startswith(f"request {request.id}") else f"request {request.id}: {text}")
            if len(problems) >= limit:
                break
    return problems


def refuse_bad_requests(workload: Workload, manifest: Manifest) -> None:
    """Raise one error naming every request (up to 20) that ``submit`` would refuse.

    Raises:
        WorkloadError: a single problem on one line, several one per line.
    """
    problems = check_trace(workload, manifest)
    if len(problems) == 1:
        raise WorkloadError(f"workload has a request this package refuses: {problems[0]}")
    if problems:
        raise WorkloadError(f"workload has requests this package refuses ({len(problems)} shown):\n  "
                            + "\n  ".join(problems))


REQUEST_OVERHEAD_BYTES = 8 * 1024
"""What a request in flight holds besides its inputs (future, records, task; measured about
7 kB on CPython 3.11), counted with them against the byte limit."""


class InFlightLimit:
    """Requests in flight and the bytes they hold, bounded; thread-safe.

    Invariant: ``num_requests <= max_requests`` and ``num_bytes <= max_bytes`` at all times.
    """

    def __init__(self, *, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.num_requests = 0
        self.num_bytes = 0
        self._room = threading.Condition()

    def acquire(self, num_bytes: int, *, wait_s: float | None = 0.0) -> None:
        """Take room for one request of ``num_bytes``, waiting up to ``wait_s`` (None: no limit).

        Raises:
            QueueFullError: no room in time, or one request larger than the byte limit.
        """
        if num_bytes > self.max_bytes:
            raise QueueFullError(f"one request holds {num_bytes} bytes (its inputs and {REQUEST_OVERHEAD_BYTES} of "
                                 f"bookkeeping), more than max_queued_input_bytes={self.max_bytes}")
        with self._room:
            fits = (lambda: self.num_requests < self.max_requests  # noqa: E731 - read at every wake-up
                    and self.num_bytes + num_bytes <= self.max_bytes)
            if not self._room.wait_for(fits, wait_s):
                raise QueueFullError(
                    f"{self.num_requests} requests ({self.num_bytes} bytes) in flight: the limits are "
                    f"max_queued_requests={self.max_requests}, max_queued_input_bytes={self.max_bytes}; "
                    "retry later or submit with wait_s")
            self.num_requests += 1
            self.num_bytes += num_bytes

    def release(self, num_bytes: int) -> None:
        """Give back what one request took."""
        with self._room:
            self.num_requests -= 1
            self.num_bytes -= num_bytes
            assert self.num_requests >= 0 and self.num_bytes >= 0, "released more than was acquired"
            self._room.notify_all()
