"""Where each expert input comes from, checked once at load and resolved per item at run time.

An expert input is fed by (``ExpertRecord.feeds``, or by name when unlisted):
a request input, a package constant, an output of an expert earlier on the
item's path, a value the expert's ``prepare`` transform made, or, for a
stateful expert, the stream's state. Unlisted inputs keep the original rule:
the request input of that name, else the output of that name of the parent
that sent the item.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgecoe.errors import Problem
from edgecoe.package.manifest import MANIFEST_NAME, Dim, ExpertRecord, Feed, Manifest, TensorSpec
from edgecoe.package.routing import ExpertGraph

SourceKind = Literal["request", "const", "expert", "parent", "prepared", "state"]


@dataclass(frozen=True, slots=True)
class Source:
    """One input's resolved source. ``expert`` is set for kind ``expert`` only."""

    kind: SourceKind
    name: str
    expert: str | None = None

    def describe(self) -> str:
        return {
            "request": f"request input {self.name!r}",
            "const": f"constant {self.name!r}",
            "expert": f"output {self.name!r} of expert {self.expert!r}",
            "parent": f"the sending expert's output {self.name!r}",
            "prepared": f"prepared value {self.name!r}",
            "state": f"the stream's state {self.name!r}",
        }[self.kind]


class FeedError(Exception):
    """An item lacks a value one of its expert's inputs needs (the message names both)."""


def _from_feed(feed: Feed) -> Source:
    if feed.request is not None:
        return Source("request", feed.request)
    if feed.const is not None:
        return Source("const", feed.const)
    if feed.expert is not None:
        assert feed.output is not None  # the model validator pairs them
        return Source("expert", feed.output, feed.expert)
    assert feed.prepared is not None
    return Source("prepared", feed.prepared)


def expert_sources(manifest: Manifest, name: str) -> dict[str, Source]:
    """Input name -> source, for every model input of expert ``name``, in model order."""
    expert = manifest.experts[name]
    request = {spec.name for spec in manifest.inputs}
    state = {pair.input for pair in expert.state}
    out: dict[str, Source] = {}
    for spec in expert.inputs:
        if spec.name in state:
            out[spec.name] = Source("state", spec.name)
        elif spec.name in expert.feeds:
            out[spec.name] = _from_feed(expert.feeds[spec.name])
        elif spec.name in request:
            out[spec.name] = Source("request", spec.name)
        else:
            out[spec.name] = Source("parent", spec.name)
    return out


def item_shape(spec: TensorSpec, axis: int | None) -> list[Dim]:
    """The shape of one item of a model tensor: the batch axis removed (all of it when ``axis`` is None)."""
    if axis is None:
        return list(spec.shape)
    return [d for i, d in enumerate(spec.shape) if i != axis]


def entry_request_inputs(manifest: Manifest, name: str) -> list[str]:
    """Request inputs expert ``name`` and its prepare transform read (those a request routed to it
    first must carry)."""
    direct = [s.name for s in expert_sources(manifest, name).values() if s.kind == "request"]
    prepare = manifest.experts[name].prepare
    return list(dict.fromkeys([*direct, *(prepare.reads if prepare is not None else [])]))


def resolve(sources: Mapping[str, Source], *, expert: str, request: Mapping[str, np.ndarray],
            constants: Mapping[str, np.ndarray], lineage: Mapping[str, Mapping[str, np.ndarray]],
            parent: str | None, prepared: Mapping[str, np.ndarray],
            state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One item's inputs for ``expert``.

    Args:
        lineage: expert -> its outputs for this item's ancestors (the request's path to here).
        parent: the expert that sent the item (None for the first expert).

    Raises:
        FeedError: naming the expert, the input and the source that has no value.
    """
    out: dict[str, np.ndarray] = {}
    for input_name, source in sources.items():
        value: np.ndarray | None
        if source.kind == "request":
            value = request.get(source.name)
        elif source.kind == "const":
            value = constants.get(source.name)
        elif source.kind == "expert":
            assert source.expert is not None
            value = lineage.get(source.expert, {}).get(source.name)
        elif source.kind == "parent":
            value = None if parent is None else lineage.get(parent, {}).get(source.name)
        elif source.kind == "prepared":
            value = prepared.get(source.name)
        else:
            value = state.get(source.name)
        if value is None:
            why = {"request": "the request did not carry it",
                   "expert": "that expert is not on this item's path",
                   "parent": "the sending expert has no such output",
                   "prepared": "the prepare transform did not return it"}.get(source.kind, "it has no value")
            raise FeedError(f"expert {expert!r} input {input_name!r} comes from {source.describe()}, but {why}")
        out[input_name] = value
    return out


def _ancestors(graph: ExpertGraph, name: str) -> set[str]:
    seen: set[str] = set()
    stack = list(graph.parents.get(name, []))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(graph.parents.get(node, []))
    return seen


def _compatible(declared: list[Dim], given: list[Dim]) -> bool:
    return len(declared) == len(given) and all(
        not (isinstance(a, int) and isinstance(b, int) and a != b) for a, b in zip(declared, given, strict=True))


def _shape_str(shape: list[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_feeds(manifest: Manifest, graph: ExpertGraph) -> list[Problem]:
    """Every expert input has a source that can exist on every path to it, with a fitting dtype and shape."""
    problems: list[Problem] = []
    request = {spec.name: spec for spec in manifest.inputs}
    for name, expert in manifest.experts.items():
        where = f"{MANIFEST_NAME}: experts.{name}"
        problems += _check_expert_io(manifest, name, expert, where)
        ancestors = _ancestors(graph, name)
        parents = [p for p in graph.parents.get(name, []) if p in manifest.experts]
        specs = {s.name: s for s in expert.inputs}
        for input_name, source in expert_sources(manifest, name).items():
            spec = specs[input_name]
            item = item_shape(spec, expert.batch.axis(input_name))
            at = f"{where}.feeds.{input_name}" if input_name in expert.feeds else f"{where}.inputs.{input_name}"
            if source.kind == "request":
                if source.name not in request:
                    problems.append(Problem(at, f"{source.name!r} is not a package input ({sorted(request)})"))
                    continue
                given = request[source.name]
                if given.dtype != spec.dtype or not _compatible(item, given.shape):
                    problems.append(Problem(at, f"package input {source.name!r} is {given.dtype}{given.shape_str()}; "
                                                f"the model takes items of {spec.dtype}{_shape_str(item)}"))
            elif source.kind == "const":
                const = manifest.constants.get(source.name)
                if const is None:
                    problems.append(Problem(at, f"{source.name!r} is not a package constant "
                                                f"({sorted(manifest.constants)})"))
                elif const.dtype != spec.dtype or not _compatible(item, list(const.shape)):
                    problems.append(Problem(at, f"constant {source.name!r} is {const.dtype}{const.shape}; the model "
                                                f"takes {spec.dtype}{_shape_str(item)} per item"))
            elif source.kind == "expert":
                assert source.expert is not None
                if source.expert not in ancestors:
                    problems.append(Problem(at, f"expert {source.expert!r} never runs before {name!r} "
                                                f"(its ancestors: {sorted(ancestors)})"))
                elif not _produces(manifest.experts[source.expert], source.name):
                    problems.append(Problem(at, f"{source.name!r} is not a kept output of expert {source.expert!r}"))
            elif source.kind == "parent":
                if not parents:
                    problems.append(Problem(at, f"not a package input ({sorted(request)}), so a request cannot "
                                                "provide it; give it a feed"))
                for parent in parents:
                    if not _produces(manifest.experts[parent], source.name):
                        problems.append(Problem(at, f"neither a package input nor an output of parent expert "
                                                    f"{parent!r}; give it a feed"))
            elif source.kind == "prepared" and expert.prepare is None:
                problems.append(Problem(at, "reads a prepared value but the expert has no `prepare` transform"))
        if name in graph.preliminary and not parents:
            for input_name, source in expert_sources(manifest, name).items():
                if source.kind in ("expert", "parent"):
                    problems.append(Problem(f"{where}.feeds.{input_name}", "a first expert has no earlier expert "
                                                                           "to read from"))
    return problems


def _produces(expert: ExpertRecord, output: str) -> bool:
    """Whether ``output`` is among the expert's kept outputs (a ``finish`` transform may add any name)."""
    return output in {o.name for o in expert.outputs} or expert.finish is not None


def _check_expert_io(manifest: Manifest, name: str, expert: ExpertRecord, where: str) -> list[Problem]:
    """Feeds name model inputs; state pairs, batch axes and dropped outputs name real tensors."""
    problems: list[Problem] = []
    inputs = {s.name: s for s in expert.inputs}
    outputs = {s.name: s for s in expert.outputs}
    request = {spec.name for spec in manifest.inputs}
    for kind, step in (("prepare", expert.prepare), ("finish", expert.finish)):
        for read in step.reads if step is not None else []:
            if read not in request:
                problems.append(Problem(f"{where}.{kind}.reads", f"{read!r} is not a package input ({sorted(request)})"))
    for input_name in expert.feeds:
        if input_name not in inputs:
            problems.append(Problem(f"{where}.feeds.{input_name}", f"not an input of the model ({sorted(inputs)})"))
    for i, pair in enumerate(expert.state):
        at = f"{where}.state[{i}]"
        if pair.input not in inputs:
            problems.append(Problem(at, f"input {pair.input!r} is not an input of the model"))
        elif pair.input in expert.feeds:
            problems.append(Problem(at, f"input {pair.input!r} is state; it cannot also have a feed"))
        if pair.output not in outputs:
            problems.append(Problem(at, f"output {pair.output!r} is not a kept output of the model"))
        if pair.initial is not None and pair.initial not in manifest.constants:
            problems.append(Problem(at, f"initial {pair.initial!r} is not a package constant"))
        elif pair.initial is not None and pair.input in inputs:
            const, state_spec = manifest.constants[pair.initial], inputs[pair.input]
            item = item_shape(state_spec, expert.batch.axis(pair.input))
            if const.dtype != state_spec.dtype or not _compatible(item, list(const.shape)):
                problems.append(Problem(at, f"initial {pair.initial!r} is {const.dtype}{const.shape}; the state "
                                            f"input takes {state_spec.dtype}{_shape_str(item)} per stream"))
        if pair.input in inputs and pair.initial is None and any(
                not isinstance(d, int) for d in item_shape(inputs[pair.input], expert.batch.axis(pair.input))):
            problems.append(Problem(at, f"input {pair.input!r} has no static shape per item, so its first state "
                                        "cannot be zeros; give an `initial` constant"))
    for tensor, axis in expert.batch.axes.items():
        spec = inputs.get(tensor) or outputs.get(tensor)
        if spec is None:
            problems.append(Problem(f"{where}.batch.axes.{tensor}", "not an input or kept output of the model"))
        elif axis is not None and not 0 <= axis < len(spec.shape):
            problems.append(Problem(f"{where}.batch.axes.{tensor}", f"axis {axis} is outside its rank "
                                                                    f"{len(spec.shape)} {spec.shape_str()}"))
    for tensor in expert.dropped_outputs:
        if tensor in outputs:
            problems.append(Problem(f"{where}.dropped_outputs", f"{tensor!r} is also a kept output"))
    return problems
