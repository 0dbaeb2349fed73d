"""The CoE package manifest: schema (pydantic models) and its JSON form.

A package is a directory::

    PKG/
      edgecoe.json              this manifest
      experts/NAME.onnx         one ONNX model per expert
      experts/NAME.onnx.data    optional external weights of that model
      experts/NAME.opt.onnx     optional ORT-optimized copy (loads without graph optimization)

The schema is checked field by field here; cross-field facts (expert names that
exist, an acyclic graph, files on disk, checksums, ONNX I/O) are checked by
:mod:`edgecoe.package.loader`, which gathers every problem before failing.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from edgecoe.schema import SAFE_NAME_PATTERN, SafeName, StrictModel, TensorName

MANIFEST_NAME = "edgecoe.json"
FORMAT: Literal["edgecoe.package"] = "edgecoe.package"
FORMAT_VERSION: Literal[1] = 1

Dim = int | str | None
"""One dimension: a fixed size, a symbolic name (``"batch"``), or unknown (``None``)."""

_SHA256 = r"^[0-9a-f]{64}$"


class TensorSpec(StrictModel):
    """Name, element type and shape of one model input or output."""

    name: TensorName
    dtype: str = Field(pattern=r"^[a-z0-9]{1,16}$", description="numpy dtype name, e.g. float32, int64")
    shape: list[Dim]

    def shape_str(self) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


class RequestInput(TensorSpec):
    """One input of a request (per item). ``allow_non_finite``: whether NaN/inf
    values are accepted at submit (default: rejected before scheduling)."""

    allow_non_finite: bool = False


class FileRecord(StrictModel):
    """A file inside the package, with the facts used to detect corruption."""

    path: str = Field(min_length=1, description="relative POSIX path inside the package")
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)


class StopRoute(StrictModel):
    """The expert is a leaf: its outputs are the request's result."""

    kind: Literal["stop"] = "stop"


class FanoutRoute(StrictModel):
    """Every item goes on to all of ``next``."""

    kind: Literal["fanout"]
    next: list[SafeName] = Field(min_length=1)


class ArgmaxRoute(StrictModel):
    """Argmax of output ``output`` (per item, flattened) picks the next experts.

    ``classes`` maps a class index to the experts it goes on to (an empty list
    stops there); indices not listed go to ``default``. ``class_fractions`` is
    the declared share of items landing in each class, used for usage
    probabilities until the profiler measures them.
    """

    kind: Literal["argmax"]
    output: TensorName
    classes: dict[int, list[SafeName]]
    default: list[SafeName] = Field(default_factory=list)
    class_fractions: dict[int, float] | None = None

    @model_validator(mode="after")
    def _fractions_are_shares(self) -> ArgmaxRoute:
        if self.class_fractions is not None:
            bad = {k: v for k, v in self.class_fractions.items() if not 0.0 <= v <= 1.0}
            if bad:
                raise ValueError(f"class_fractions must lie in [0, 1], got {bad}")
            total = sum(self.class_fractions.values())
            if total > 1.0 + 1e-6:
                raise ValueError(f"class_fractions sum to {total:.6f}, expected <= 1")
        return self


class ThresholdRoute(StrictModel):
    """Reduce output ``output`` per item (max/min/mean) and compare with ``threshold``."""

    kind: Literal["threshold"]
    output: TensorName
    reduce: Literal["max", "min", "mean"] = "max"
    threshold: float
    above: list[SafeName] = Field(default_factory=list)
    below: list[SafeName] = Field(default_factory=list)
    fraction_above: float | None = Field(default=None, ge=0.0, le=1.0)


Route = Annotated[
    StopRoute | FanoutRoute | ArgmaxRoute | ThresholdRoute, Field(discriminator="kind")
]


class Feed(StrictModel):
    """Where one expert input comes from: exactly one of

    - ``request``: a request input of that name;
    - ``const``: a package constant (``Manifest.constants``);
    - ``expert`` + ``output``: an output of an expert earlier on the item's path;
    - ``prepared``: a value the expert's own ``prepare`` transform made.

    Specs may write the short form ``"request:NAME"``, ``"const:NAME"``,
    ``"prepared:NAME"`` or ``"EXPERT:OUTPUT"``.
    """

    request: TensorName | None = None
    const: SafeName | None = None
    expert: SafeName | None = None
    output: TensorName | None = None
    prepared: TensorName | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        kind, sep, rest = value.partition(":")
        if not sep or not rest:
            raise ValueError(f"feed {value!r}: expected request:NAME, const:NAME, prepared:NAME or EXPERT:OUTPUT")
        if kind in ("request", "const", "prepared"):
            return {kind: rest}
        return {"expert": kind, "output": rest}

    @model_validator(mode="after")
    def _exactly_one(self) -> Feed:
        given = [k for k in ("request", "const", "expert", "prepared") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a feed names exactly one of request, const, expert, prepared; got {given or 'none'}")
        if (self.expert is None) != (self.output is None):
            raise ValueError("`expert` and `output` go together (an output of an earlier expert)")
        return self

    def describe(self) -> str:
        if self.expert is not None:
            return f"output {self.output!r} of expert {self.expert!r}"
        if self.request is not None:
            return f"request input {self.request!r}"
        if self.const is not None:
            return f"constant {self.const!r}"
        return f"prepared value {self.prepared!r}"


MAX_CONSTANT_VALUES = 65536
MAX_MODEL_METADATA_CHARS = 4 * 1024 * 1024
MAX_ITEM_ELEMENTS = 1 << 28  # one item of 256 M elements (1 GiB of float32) at most


class Constant(StrictModel):
    """A value stored in the manifest (a sample rate, a threshold, an initial state), any rank including 0:
    its ``values`` (row-major, flattened) or one ``fill`` value for every element."""

    dtype: str = Field(pattern=r"^(float16|float32|float64|int8|int16|int32|int64|uint8|uint16|uint32|uint64|bool)$")
    shape: list[int] = Field(default_factory=list, max_length=8)
    values: list[float | int | bool] | None = Field(default=None, max_length=MAX_CONSTANT_VALUES)
    fill: float | int | bool | None = None

    @model_validator(mode="after")
    def _fits_shape(self) -> Constant:
        if any(d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a negative dimension")
        size = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        if (self.values is None) == (self.fill is None):
            raise ValueError("give exactly one of `values` and `fill`")
        if self.fill is not None and size > 64 * MAX_CONSTANT_VALUES:
            raise ValueError(f"shape {self.shape} holds {size} values, more than {64 * MAX_CONSTANT_VALUES}")
        if self.values is not None and size != len(self.values):
            raise ValueError(f"shape {self.shape} holds {size} value(s), `values` has {len(self.values)}")
        given = self.values if self.values is not None else [self.fill]
        if any(isinstance(v, float) and not np.isfinite(v) for v in given):
            raise ValueError("values must be finite")
        return self

    def array(self) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        if self.fill is not None:
            out = np.full(self.shape, self.fill, dtype=dtype)
        else:
            out = np.asarray(self.values, dtype=dtype).reshape(self.shape)
        out.setflags(write=False)
        return out


JsonArg = float | int | bool | str | None
"""One argument of a transform: a plain JSON value (lists of them are allowed too)."""


class TransformStep(StrictModel):
    """A named transform the application provides (packages hold no code), with its arguments."""

    transform: SafeName
    args: dict[str, JsonArg | list[JsonArg]] = Field(default_factory=dict)
    reads: list[TensorName] = Field(
        default_factory=list, description="request inputs the transform reads: checked at submit like model inputs")


class StatePair(StrictModel):
    """A stateful expert's state: ``output`` of one call is ``input`` of the stream's next call.

    A stream's first call gets ``initial`` (a constant name) or zeros of the input's shape.
    """

    input: TensorName
    output: TensorName
    initial: SafeName | None = None


class BatchSpec(StrictModel):
    """How items of a batch meet the model.

    ``max``: the largest batch the model takes (1 for a model exported with a
    fixed batch of one; None: as the profile says). ``axes``: input or output
    name -> its batch axis when not 0, or None when the tensor has no batch
    axis (an input then is shared by the whole batch: items are grouped by
    its value; an output is given whole to every item).
    """

    max: int | None = Field(default=None, ge=1)
    axes: dict[TensorName, int | None] = Field(default_factory=dict)

    def axis(self, name: str) -> int | None:
        return self.axes.get(name, 0)


class ExpertRecord(StrictModel):
    """One expert: its model files, I/O, architecture and where its outputs go."""

    architecture: SafeName = Field(description="experts sharing a tag share one architecture and one profile")
    model: FileRecord
    external_data: list[FileRecord] = Field(default_factory=list)
    optimized: FileRecord | None = Field(
        default=None, description="ORT-optimized copy, loadable with graph optimization off"
    )
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    route: Route = Field(default_factory=StopRoute)
    usage_probability: float = Field(ge=0.0, le=1.0)
    usage_source: Literal["declared", "measured"] = "declared"
    source: str = Field(default="", description="where the expert came from (informational)")
    feeds: dict[TensorName, Feed] = Field(
        default_factory=dict, description="input -> where it comes from; unlisted inputs match by name")
    prepare: TransformStep | None = Field(
        default=None, description="runs on each arriving item before the expert; may fan out to N items")
    finish: TransformStep | None = Field(
        default=None, description="runs on each item's outputs; what it returns joins the outputs")
    state: list[StatePair] = Field(default_factory=list)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    dropped_outputs: list[TensorName] = Field(
        default_factory=list, description="model outputs not computed nor kept (non-tensor ones included)")
    model_metadata: dict[str, str] = Field(
        default_factory=dict, description="the ONNX file's metadata_props (a label list, a vocabulary), "
                                          "for transforms to read")
    item_shapes: dict[TensorName, list[int]] = Field(
        default_factory=dict, description="input -> the shape of one item export verified the model with "
                                          "(the profiler measures with it)")
    value_ranges: dict[TensorName, tuple[float, float]] = Field(
        default_factory=dict, description="input -> [low, high] of values the model expects, from the spec")

    @field_validator("item_shapes")
    @classmethod
    def _item_shapes_are_bounded(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        # NOTE: the profiler allocates these: a hostile manifest must not make it allocate terabytes
        for name, shape in value.items():
            if len(shape) > 8 or any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_ITEM_ELEMENTS:
                raise ValueError(f"item_shapes.{name} = {shape}: at most 8 dims >= 0 and {MAX_ITEM_ELEMENTS} elements")
        return value

    @field_validator("model_metadata")
    @classmethod
    def _metadata_is_bounded(cls, value: dict[str, str]) -> dict[str, str]:
        size = sum(len(k) + len(v) for k, v in value.items())
        if size > MAX_MODEL_METADATA_CHARS:
            raise ValueError(f"holds {size} characters, more than {MAX_MODEL_METADATA_CHARS}")
        return value

    def files(self) -> list[FileRecord]:
        """Every file of this expert, model first."""
        out = [self.model, *self.external_data]
        if self.optimized is not None:
            out.append(self.optimized)
        return out

    @property
    def total_bytes(self) -> int:
        """Bytes of the model and its external data (the optimized copy excluded)."""
        return self.model.bytes + sum(f.bytes for f in self.external_data)


class MetadataField(StrictModel):
    """A request metadata key the package understands.

    ``values`` lists the accepted values (``None``: any string). ``distribution``
    is the declared share of requests per value, used for usage probabilities.
    """

    values: list[str] | None = None
    distribution: dict[str, float] | None = None

    @model_validator(mode="after")
    def _distribution_is_consistent(self) -> MetadataField:
        if self.distribution is None:
            return self
        negative = {k: v for k, v in self.distribution.items() if v < 0}
        if negative:
            raise ValueError(f"distribution shares must be >= 0, got {negative}")
        total = sum(self.distribution.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"distribution sums to {total:.6f}, expected 1")
        if self.values is not None:
            unknown = sorted(set(self.distribution) - set(self.values))
            if unknown:
                raise ValueError(f"distribution names values not in `values`: {unknown}")
        return self


class EntryRule(StrictModel):
    """Picks a request's preliminary expert from one metadata key."""

    key: str
    experts: dict[str, SafeName] = Field(min_length=1, description="metadata value -> expert name")
    default: SafeName | None = Field(default=None, description="expert for unlisted values; None rejects")


class WorkloadHints(StrictModel):
    """How a generator makes inputs that a classifier passes on or stops (demo packages).

    A generated item is standard-normal noise; channel ``channel`` of input
    ``input`` is offset by ``go_on_offset`` for an item the preliminary expert
    should send on, by ``stop_offset`` for one it should stop.
    """

    input: str
    channel: int = Field(ge=0)
    go_on_offset: float
    stop_offset: float
    go_on_fraction: float = Field(ge=0.0, le=1.0, description="default share of items sent on")


class Manifest(StrictModel):
    """The whole ``edgecoe.json``."""

    format: Literal["edgecoe.package"] = FORMAT
    version: Literal[1] = FORMAT_VERSION
    name: str = Field(pattern=SAFE_NAME_PATTERN)
    description: str = ""
    created_by: str = ""
    inputs: list[RequestInput] = Field(
        min_length=1, description="one request's inputs, per item (no batch dimension)"
    )
    metadata: dict[str, MetadataField] = Field(default_factory=dict)
    entry: EntryRule
    experts: dict[SafeName, ExpertRecord] = Field(min_length=1)
    constants: dict[SafeName, Constant] = Field(default_factory=dict)
    workload_hints: WorkloadHints | None = None

    def transforms(self) -> list[str]:
        """Every transform name the experts use, sorted."""
        names = {step.transform for e in self.experts.values() for step in (e.prepare, e.finish) if step}
        return sorted(names)

    @field_validator("inputs", mode="before")
    @classmethod
    def _plain_specs_are_request_inputs(cls, value: object) -> object:
        # Builders derive request inputs from experts' TensorSpecs: take those as-is.
        if isinstance(value, list):
            return [v.model_dump() if isinstance(v, TensorSpec) and not isinstance(v, RequestInput) else v
                    for v in value]
        return value

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, so identical packages have identical bytes."""
        import json

        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
