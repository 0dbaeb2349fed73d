"""Workloads: the JSONL trace format, reading it, generating it, and materialising inputs.

Trace format (one JSON object per line, UTF-8)::

    {"edgecoe_trace": 1, "package": "pcb", "generator": {...}}      optional header, first line only
    {"id": "r000000", "arrival_ms": 0.0,
     "metadata": {"component_type": "res-0402"},
     "inputs": {"image": {"seeded": {"seed": 7, "channel": 0, "channel_offset": 0.5}}}}
    {"id": "r000001", "arrival_ms": 3.9, "metadata": {...},
     "inputs": {"image": {"file": "inputs/board7.npy"}}}

- ``id``: unique string; ``arrival_ms``: offset from the start of the run (>= 0).
- ``metadata``: request metadata; the package's entry rule reads one key of it.
- ``inputs``: per package input the request carries (what its route reads),
  either ``{"file": PATH}`` — a ``.npy`` file, or a ``.npz`` file with ``key``
  naming the array (relative paths are relative to the trace file; never
  unpickled) holding one item (no batch dimension) — or ``{"seeded": {...}}``,
  standard-normal noise of the package input's shape from ``seed``, scaled by
  ``std`` (1), shifted by ``mean`` (0), and channel ``channel`` (axis 0)
  further by ``channel_offset``.
- ``stream``, ``stream_start``: for stateful packages, the stream the request
  continues and whether it starts it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from edgecoe.errors import WorkloadError
from edgecoe.package.manifest import Manifest, TensorSpec
from edgecoe.schema import DocumentError, StrictModel, parse_json, read_document

TRACE_VERSION: Literal[1] = 1
MAX_TRACE_BYTES = 1024 * 1024 * 1024  # about 4 million requests
_MAX_REPORTED = 20


class SeededInput(StrictModel):
    seed: int = Field(ge=0)
    mean: float = 0.0
    std: float = Field(default=1.0, ge=0.0)
    channel: int | None = Field(default=None, ge=0)
    channel_offset: float = 0.0


class InputSource(StrictModel):
    """Where one input tensor of a request comes from: a ``.npy`` file or a seeded recipe."""

    file: str | None = None
    key: str | None = Field(default=None, description="the array's name in a .npz file")
    seeded: SeededInput | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> InputSource:
        if (self.file is None) == (self.seeded is None):
            raise ValueError("give exactly one of `file` or `seeded`")
        if self.file is not None and self.file.endswith(".npz") != (self.key is not None):
            raise ValueError("a .npz file needs `key` (the array's name); `key` is for .npz files only")
        return self


class TraceRequest(StrictModel):
    """One request of a workload trace."""

    id: str = Field(min_length=1)
    arrival_ms: float = Field(ge=0.0)
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    inputs: dict[str, InputSource]
    stream: str | None = Field(default=None, min_length=1, max_length=256)
    stream_start: bool = False


class TraceHeader(StrictModel):
    edgecoe_trace: Literal[1]
    package: str | None = None
    generator: dict[str, object] = Field(default_factory=dict)


class Workload:
    """A trace in memory: requests sorted by arrival, plus the directory file inputs are relative to."""

    def __init__(self, requests: list[TraceRequest], *, base_dir: Path | None = None, header: TraceHeader | None = None) -> None:
        self.requests = sorted(requests, key=lambda r: r.arrival_ms)
        self.base_dir = base_dir or Path.cwd()
        self.header = header or TraceHeader(edgecoe_trace=TRACE_VERSION)
        seen: set[str] = set()
        dupes = [r.id for r in self.requests if r.id in seen or seen.add(r.id)]  # type: ignore[func-returns-value]
        if dupes:
            raise WorkloadError(f"request ids must be unique; repeated: {dupes[:5]}")

    def __len__(self) -> int:
        return len(self.requests)

    def write(self, path: str | Path) -> None:
        """Write as JSONL (header first)."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.header.model_dump(mode="json"), sort_keys=True) + "\n")
            fh.writelines(json.dumps(request.model_dump(mode="json", exclude_none=True), sort_keys=True) + "\n" for request in self.requests)


def read_workload(path: str | Path) -> Workload:
    """Read and validate a JSONL trace.

    Raises:
        WorkloadError: naming the file, line and field of each problem (up to 20).
    """
    path = Path(path)
    try:
        lines = read_document(path, max_bytes=MAX_TRACE_BYTES).splitlines()
    except DocumentError as exc:
        raise WorkloadError(f"workload trace {exc}") from None
    problems: list[str] = []
    requests: list[TraceRequest] = []
    header: TraceHeader | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = parse_json(line, f"{path}:{number}")
        except DocumentError as exc:
            problems.append(f"{path}:{number}: {exc.message}")
            continue
        try:
            if isinstance(obj, dict) and "edgecoe_trace" in obj:
                if requests or header is not None:
                    problems.append(f"{path}:{number}: a header line may only come first")
                header = TraceHeader.model_validate(obj)
            else:
                requests.append(TraceRequest.model_validate(obj))
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "(line)"
                problems.append(f"{path}:{number}: {loc}: {err['msg']}")
    if problems:
        if len(problems) == 1:  # one line, as a CLI error should be
            raise WorkloadError(f"workload {path} is invalid: {problems[0]}")
        more = f"\n  … and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        raise WorkloadError(f"workload {path} is invalid:\n  " + "\n  ".join(problems[:_MAX_REPORTED]) + more)
    if not requests:
        raise WorkloadError(f"workload {path} holds no requests")
    return Workload(requests, base_dir=path.parent, header=header)


def distribution_shares(spec: str, values: list[str]) -> dict[str, float]:
    """Shares per value for ``uniform`` or ``zipf:S`` (S > 0), ranked in ``values`` order.

    Raises:
        WorkloadError: unknown distribution or bad parameter.
    """
    if not values:
        raise WorkloadError("cannot spread requests over an empty set of metadata values")
    name, _, param = spec.partition(":")
    if name == "uniform" and not param:
        return {v: 1.0 / len(values) for v in values}
    if name == "zipf":
        try:
            skew = float(param)
        except ValueError:
            skew = math.nan
        if not skew > 0 or math.isinf(skew):
            raise WorkloadError(f"distribution {spec!r}: zipf needs a positive skew, e.g. zipf:1.1")
        weights = np.array([1.0 / (rank ** skew) for rank in range(1, len(values) + 1)])
        weights /= weights.sum()
        return {v: float(w) for v, w in zip(values, weights, strict=False)}
    raise WorkloadError(f"unknown distribution {spec!r}; expected 'uniform' or 'zipf:S' (e.g. zipf:1.1)")


def ranked_values(manifest: Manifest) -> list[str]:
    """The entry key's values, most likely first by the declared distribution."""
    key = manifest.entry.key
    field = manifest.metadata.get(key)
    values = list(field.values) if field and field.values else list(manifest.entry.experts)
    if field and field.distribution:
        dist = field.distribution
        values.sort(key=lambda v: -dist.get(v, 0.0))  # stable: ties keep declared order
    return values


def generate_workload(
    manifest: Manifest,
    *,
    num_requests: int,
    dist: str = "zipf:1.1",
    rate_rps: float | None = None,
    arrival: Literal["poisson", "uniform"] = "poisson",
    go_on: float | None = None,
    seed: int = 0,
) -> Workload:
    """Generate a trace for a package.

    Args:
        num_requests: how many requests (> 0).
        dist: how entry-key values are drawn: ``uniform`` or ``zipf:S``, ranked
            by the package's declared distribution.
        rate_rps: mean arrival rate; ``None`` makes every request arrive at 0.
        arrival: ``poisson`` (exponential gaps) or ``uniform`` (one every 1/rate s).
        go_on: share of items built so that the first expert passes them on
            (needs the package's ``workload_hints``; default: the hints' share).
        seed: makes the trace reproducible.

    Raises:
        WorkloadError: a parameter is out of range or the package lacks what it needs.
    """
    if num_requests <= 0:
        raise WorkloadError(f"--requests must be > 0, got {num_requests}")
    if rate_rps is not None and not rate_rps > 0:
        raise WorkloadError(f"--rate must be > 0 requests/s, got {rate_rps}")
    hints = manifest.workload_hints
    if go_on is not None:
        if not 0.0 <= go_on <= 1.0:
            raise WorkloadError(f"--go-on must be a share in [0, 1], got {go_on}")
        if hints is None:
            raise WorkloadError(f"package {manifest.name} declares no workload_hints, so --go-on cannot be honoured")
    elif hints is not None:
        go_on = hints.go_on_fraction
    values = ranked_values(manifest)
    shares = distribution_shares(dist, values)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(values), size=num_requests, p=np.array([shares[v] for v in values]))
    arrivals = _arrivals(rng, num_requests, rate_rps, arrival)
    passes = rng.random(num_requests) < (go_on if go_on is not None else 0.0)
    input_seeds = rng.integers(0, 2**31 - 1, size=num_requests)
    requests = []
    for i in range(num_requests):
        inputs = {}
        for spec in manifest.inputs:
            offset: dict[str, Any] = {}
            if hints is not None and go_on is not None and spec.name == hints.input:
                offset = {"channel": hints.channel,
                          "channel_offset": hints.go_on_offset if passes[i] else hints.stop_offset}
            inputs[spec.name] = InputSource(seeded=SeededInput(seed=int(input_seeds[i]) + hash_name(spec.name), **offset))
        requests.append(TraceRequest(
            id=f"r{i:06d}", arrival_ms=round(float(arrivals[i]), 3),
            metadata={manifest.entry.key: values[int(picks[i])]}, inputs=inputs,
        ))
    header = TraceHeader(edgecoe_trace=TRACE_VERSION, package=manifest.name, generator={
        "requests": num_requests, "dist": dist, "rate_rps": rate_rps, "arrival": arrival,
        "go_on": go_on, "seed": seed,
    })
    return Workload(requests, header=header)


def _arrivals(rng: np.random.Generator, count: int, rate_rps: float | None, arrival: str) -> np.ndarray:
    """Arrival offsets in ms: all at 0 without a rate, else Poisson (exponential gaps) or evenly spaced."""
    if rate_rps is None:
        return np.zeros(count)
    if arrival == "poisson":
        arrivals = np.cumsum(rng.exponential(1000.0 / rate_rps, size=count))
        return arrivals - arrivals[0]
    return np.arange(count) * (1000.0 / rate_rps)


def hash_name(name: str) -> int:
    """A small stable integer per input name (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 9973


def _input_file(request_id: str, name: str, base_dir: Path, rel: str) -> Path:
    """A trace's input file: relative to the trace, inside its directory, a regular file.

    NOTE: traces are untrusted like packages: an absolute path, ``..`` or a link out of
    the directory would read any file the user can; a FIFO or device would hang the run.
    """
    root = base_dir.resolve()
    path = (base_dir / rel).resolve()
    if Path(rel).is_absolute() or not path.is_relative_to(root):
        raise WorkloadError(f"request {request_id}: input {name!r} file {rel!r} is outside the trace's directory "
                            f"{base_dir}; give a path relative to the trace, inside its directory")
    if not path.is_file():
        raise WorkloadError(f"request {request_id}: input {name!r} file {rel!r} is not a regular file")
    return path


def materialize(request: TraceRequest, specs: Iterable[TensorSpec], base_dir: Path) -> dict[str, np.ndarray]:
    """The request's input arrays (one item each, no batch dimension).

    Raises:
        WorkloadError: an input is missing, a file is unreadable, or a seeded
            input's package shape is not fully static.
    """
    out: dict[str, np.ndarray] = {}
    known = {spec.name for spec in specs}
    unknown = sorted(set(request.inputs) - known)
    if unknown:
        raise WorkloadError(f"request {request.id}: inputs {unknown} are not package inputs ({sorted(known)})")
    for spec in specs:
        source = request.inputs.get(spec.name)
        if source is None:
            continue  # a request carries what its route reads; admission names what is missing
        if source.file is not None:
            path = _input_file(request.id, spec.name, base_dir, source.file)
            try:
                if source.key is not None:
                    with np.load(path, allow_pickle=False) as archive:
                        if source.key not in archive.files:
                            raise WorkloadError(f"request {request.id}: input {spec.name!r}: {source.file} has no "
                                                f"array {source.key!r} (it has {archive.files})")
                        out[spec.name] = archive[source.key]
                else:
                    out[spec.name] = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise WorkloadError(f"request {request.id}: cannot load input {spec.name!r} from {path}: {exc}") from exc
            continue
        seeded = source.seeded
        assert seeded is not None  # the model validator guarantees one source
        if not all(isinstance(d, int) for d in spec.shape):
            raise WorkloadError(
                f"request {request.id}: seeded input {spec.name!r} needs a static package shape, got {spec.shape_str()}"
            )
        shape = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
        rng = np.random.default_rng(seeded.seed)
        array = rng.standard_normal(shape, dtype=np.float64) * seeded.std + seeded.mean
        if seeded.channel is not None:
            if not shape or seeded.channel >= shape[0]:
                raise WorkloadError(f"request {request.id}: channel {seeded.channel} out of range for shape {list(shape)}")
            array[seeded.channel] += seeded.channel_offset
        out[spec.name] = array.astype(spec.dtype)
    return out


def generate_from_samples(
    manifest: Manifest, samples_dir: Path, *, num_requests: int, dist: str = "zipf:1.1",
    rate_rps: float | None = None, arrival: Literal["poisson", "uniform"] = "poisson", seed: int = 0,
    streams: int = 4, relative_to: Path | None = None,
) -> Workload:
    """A trace whose requests carry real inputs: ``samples_dir/VALUE/*.npz`` holds sample requests for each
    value of the entry key (one ``.npz`` per request, its arrays named by package input), so each request
    takes the route real data takes. Requests to a stateful first expert are spread over ``streams``
    streams, each started by its first request.

    Args:
        relative_to: the directory the trace will be read from (file paths are written relative
            to it and must lie inside it; default: ``samples_dir``).

    Raises:
        WorkloadError: no samples for a value that is drawn, or samples outside ``relative_to``.
    """
    if num_requests <= 0:
        raise WorkloadError(f"--requests must be > 0, got {num_requests}")
    if rate_rps is not None and not rate_rps > 0:
        raise WorkloadError(f"--rate must be > 0 requests/s, got {rate_rps}")
    base = (relative_to or samples_dir).resolve()
    values = ranked_values(manifest)
    found = {v: sorted((samples_dir / v).glob("*.npz")) for v in values if (samples_dir / v).is_dir()}
    usable = [v for v in values if found.get(v)]
    if not usable:
        raise WorkloadError(f"{samples_dir} holds no samples: expected {samples_dir}/VALUE/*.npz for values of "
                            f"{manifest.entry.key!r} ({', '.join(values[:8])})")
    for files in found.values():
        for file in files:
            if not file.resolve().is_relative_to(base):
                raise WorkloadError(f"sample {file} is outside {base}, where the trace is read from; write the "
                                    "trace into a directory that holds the samples")
    shares = distribution_shares(dist, usable)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(usable), size=num_requests, p=np.array([shares[v] for v in usable]))
    arrivals = _arrivals(rng, num_requests, rate_rps, arrival)
    stateful = {name for name, expert in manifest.experts.items() if expert.state}
    from edgecoe.package.routing import entry_expert

    started: set[str] = set()
    counters: dict[str, int] = {}
    requests = []
    for i in range(num_requests):
        value = usable[int(picks[i])]
        files = found[value]
        file = files[counters.get(value, 0) % len(files)]
        counters[value] = counters.get(value, 0) + 1
        with np.load(file, allow_pickle=False) as archive:
            keys = list(archive.files)
        rel = file.resolve().relative_to(base).as_posix()
        stream = None
        if entry_expert(manifest.entry, {manifest.entry.key: value}) in stateful:
            stream = f"{value}-{counters[value] % streams}"
        requests.append(TraceRequest(
            id=f"r{i:06d}", arrival_ms=round(float(arrivals[i]), 3), metadata={manifest.entry.key: value},
            inputs={k: InputSource(file=rel, key=k) for k in keys}, stream=stream,
            stream_start=stream is not None and stream not in started))
        if stream is not None:
            started.add(stream)
    header = TraceHeader(edgecoe_trace=TRACE_VERSION, package=manifest.name, generator={
        "requests": num_requests, "dist": dist, "rate_rps": rate_rps, "arrival": arrival, "seed": seed,
        "samples": samples_dir.name, "streams": streams})
    return Workload(requests, base_dir=base, header=header)
