"""Routing: which expert a request visits first, and where each expert's outputs go.

Pure functions over the manifest's rules and numpy outputs; no ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecoe.errors import RoutingError
from edgecoe.package.manifest import (
    ArgmaxRoute,
    EntryRule,
    ExpertRecord,
    FanoutRoute,
    Manifest,
    Route,
    StopRoute,
    ThresholdRoute,
)


def route_targets(route: Route) -> list[str]:
    """Every expert a route can send to, in declaration order, without duplicates."""
    names: list[str] = []
    if isinstance(route, FanoutRoute):
        names = list(route.next)
    elif isinstance(route, ArgmaxRoute):
        for targets in route.classes.values():
            names.extend(targets)
        names.extend(route.default)
    elif isinstance(route, ThresholdRoute):
        names = [*route.above, *route.below]
    return list(dict.fromkeys(names))


def entry_expert(rule: EntryRule, metadata: Mapping[str, object]) -> str:
    """The preliminary expert for a request's metadata.

    Raises:
        RoutingError: the key is missing, or its value is unmapped and there is no default.
    """
    if rule.key not in metadata:
        raise RoutingError(f"request metadata lacks {rule.key!r}, which picks the first expert")
    value = str(metadata[rule.key])
    expert = rule.experts.get(value, rule.default)
    if expert is None:
        known = ", ".join(sorted(rule.experts)[:8])
        raise RoutingError(
            f"no expert for {rule.key}={value!r}; known values include: {known}"
        )
    return expert


def next_experts(route: Route, outputs: Mapping[str, np.ndarray], index: int) -> list[str]:
    """Experts item ``index`` of a batch goes on to, given the batch's outputs (leading batch axis).

    Returns an empty list when the item stops here.

    Raises:
        RoutingError: the rule's output is missing or has no item ``index``.
    """
    output = getattr(route, "output", None)
    if output is None:
        return route_item(route, {})
    if output not in outputs:
        raise RoutingError(f"route reads output {output!r}, expert produced {sorted(outputs)}")
    array = outputs[output]
    if array.ndim == 0 or index >= array.shape[0]:
        raise RoutingError(f"route reads item {index} of output {output!r} with shape {list(array.shape)}")
    return route_item(route, {output: array[index]})


def route_item(route: Route, item: Mapping[str, np.ndarray]) -> list[str]:
    """Experts one item goes on to, given its outputs (no batch axis); empty when it stops here.

    Raises:
        RoutingError: the rule's output is missing or not numeric.
    """
    if isinstance(route, StopRoute):
        return []
    if isinstance(route, FanoutRoute):
        return list(route.next)
    if route.output not in item:
        raise RoutingError(f"route reads output {route.output!r}, expert produced {sorted(item)}")
    values = np.asarray(item[route.output]).reshape(-1)
    if values.size == 0 or values.dtype.kind not in "biuf":
        raise RoutingError(f"route reads output {route.output!r}, which is empty or not numeric "
                           f"({values.dtype}, {values.size} values)")
    if isinstance(route, ArgmaxRoute):
        cls = int(np.argmax(values))
        return list(route.classes.get(cls, route.default))
    if isinstance(route, ThresholdRoute):
        reduces: dict[str, Callable[[np.ndarray], Any]] = {"max": np.max, "min": np.min, "mean": np.mean}
        score = float(reduces[route.reduce](values))
        return list(route.above if score > route.threshold else route.below)
    raise AssertionError(f"unhandled route {route!r}")


def edge_fractions(expert: ExpertRecord, num_classes: int | None) -> dict[str, float]:
    """Declared share of an expert's items that go on to each target expert.

    Undeclared argmax shares are spread evenly over the classes left (needs
    ``num_classes``, the static size of the routed output); an undeclared
    threshold share is one half.
    """
    route = expert.route
    out: dict[str, float] = {}

    def add(targets: list[str], share: float) -> None:
        for name in targets:
            out[name] = out.get(name, 0.0) + share

    if isinstance(route, FanoutRoute):
        add(route.next, 1.0)
    elif isinstance(route, ArgmaxRoute):
        declared = dict(route.class_fractions or {})
        listed = set(route.classes)
        classes = set(range(num_classes)) if num_classes else set(listed)
        rest = sorted((classes | listed) - set(declared))
        left = max(0.0, 1.0 - sum(declared.values()))
        shares = {**declared, **{c: left / len(rest) for c in rest}} if rest else declared
        for cls, share in shares.items():
            add(route.classes.get(cls, route.default), share)
    elif isinstance(route, ThresholdRoute):
        above = 0.5 if route.fraction_above is None else route.fraction_above
        add(route.above, above)
        add(route.below, 1.0 - above)
    return out


@dataclass(frozen=True, slots=True)
class ExpertGraph:
    """The dependency graph: ``parents[x]`` are the experts that can feed ``x``."""

    children: dict[str, list[str]]  # expert -> experts its outputs can go to
    parents: dict[str, list[str]]  # expert -> experts that can send to it
    preliminary: frozenset[str]  # experts the entry rule can pick

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ExpertGraph:
        children = {name: route_targets(e.route) for name, e in manifest.experts.items()}
        parents: dict[str, list[str]] = {name: [] for name in manifest.experts}
        for name, targets in children.items():
            for target in targets:
                parents.setdefault(target, []).append(name)
        entry = set(manifest.entry.experts.values())
        if manifest.entry.default is not None:
            entry.add(manifest.entry.default)
        return cls(children=children, parents=parents, preliminary=frozenset(entry))

    def find_cycle(self) -> list[str] | None:
        """One cycle as a path ``[a, b, ..., a]``, or None if the graph is acyclic."""
        state: dict[str, int] = {}  # expert -> 1 on the DFS stack, 2 finished
        stack: list[str] = []

        def visit(node: str) -> list[str] | None:
            state[node] = 1
            stack.append(node)
            for child in self.children.get(node, []):
                if state.get(child) == 1:
                    return [*stack[stack.index(child):], child]
                if child not in state:
                    found = visit(child)
                    if found:
                        return found
            stack.pop()
            state[node] = 2
            return None

        for node in sorted(self.children):
            if node not in state:
                found = visit(node)
                if found:
                    return found
        return None

    def topological_order(self) -> list[str]:
        """Experts with every parent before its children (graph must be acyclic)."""
        indegree = {name: len(ps) for name, ps in self.parents.items()}
        ready = sorted(name for name, d in indegree.items() if d == 0)
        order: list[str] = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for child in self.children.get(node, []):
                indegree[child] -= 1
                if indegree[child] == 0:
                    ready.append(child)
        if len(order) != len(indegree):
            raise ValueError("expert graph has a cycle")
        return order


def declared_usage_probabilities(manifest: Manifest) -> dict[str, float]:
    """Probability that a request visits each expert, from declared shares.

    Preliminary experts get the share of requests whose entry-key value maps to
    them (uniform over the key's values when no distribution is declared);
    each route passes its share on. Clipped to 1 (fan-out can revisit).
    """
    graph = ExpertGraph.from_manifest(manifest)
    prob = dict.fromkeys(manifest.experts, 0.0)
    rule = manifest.entry
    field = manifest.metadata.get(rule.key)
    shares: dict[str, float]
    if field is not None and field.distribution is not None:
        shares = dict(field.distribution)
    else:
        values = field.values if field is not None and field.values else list(rule.experts)
        shares = {v: 1.0 / len(values) for v in values}
    for value, share in shares.items():
        target = rule.experts.get(value, rule.default)
        if target in prob:
            prob[target] += share
    for name in graph.topological_order():
        expert = manifest.experts[name]
        num_classes = static_num_classes(expert)
        for target, share in edge_fractions(expert, num_classes).items():
            if target in prob:
                prob[target] += prob[name] * share
    return {name: min(1.0, p) for name, p in prob.items()}


def expected_uses(manifest: Manifest, requests_metadata: Iterable[Mapping[str, object]]) -> list[str]:
    """The order experts are likely used in, for look-ahead eviction (Belady): each
    request's preliminary expert and, where its route more likely goes on than not,
    the successor. Requests whose metadata matches no entry are left out."""
    uses: list[str] = []
    for metadata in requests_metadata:
        try:
            first = entry_expert(manifest.entry, metadata)
        except RoutingError:
            continue
        uses.append(first)
        shares = edge_fractions(manifest.experts[first], None)
        uses.extend(name for name, share in shares.items() if share >= 0.5)
    return uses


def static_num_classes(expert: ExpertRecord) -> int | None:
    """The static size of the output an argmax route reads (None: not argmax, or dynamic)."""
    route = expert.route
    if not isinstance(route, ArgmaxRoute):
        return None
    for spec in expert.outputs:
        if spec.name == route.output and spec.shape and isinstance(spec.shape[-1], int):
            return spec.shape[-1]
    return None
