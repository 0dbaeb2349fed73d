from __future__ import annotations

import numpy as np
import pytest

from edgecoe.package import load_package
from edgecoe.package.manifest import (
    ArgmaxRoute,
    EntryRule,
    FanoutRoute,
    StopRoute,
    ThresholdRoute,
)
from edgecoe.package.routing import (
    ExpertGraph,
    RoutingError,
    entry_expert,
    next_experts,
)


def test_entry_expert_maps_value_and_default():
    rule = EntryRule(key="t", experts={"a": "ea"}, default="fallback")
    assert entry_expert(rule, {"t": "a"}) == "ea"
    assert entry_expert(rule, {"t": "zzz"}) == "fallback"


def test_entry_expert_errors_name_the_key_and_value():
    rule = EntryRule(key="t", experts={"a": "ea"})
    with pytest.raises(RoutingError, match="lacks 't'"):
        entry_expert(rule, {})
    with pytest.raises(RoutingError, match="t='nope'"):
        entry_expert(rule, {"t": "nope"})


def test_argmax_route_per_item():
    route = ArgmaxRoute(kind="argmax", output="y", classes={1: ["d"], 2: ["d", "e"]}, default=[])
    out = {"y": np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])}
    assert next_experts(route, out, 0) == []
    assert next_experts(route, out, 1) == ["d"]
    assert next_experts(route, out, 2) == ["d", "e"]


def test_threshold_and_fanout_and_stop():
    route = ThresholdRoute(kind="threshold", output="s", reduce="max", threshold=0.5, above=["x"], below=["y"])
    out = {"s": np.array([[0.1, 0.7], [0.2, 0.3]])}
    assert next_experts(route, out, 0) == ["x"]
    assert next_experts(route, out, 1) == ["y"]
    assert next_experts(FanoutRoute(kind="fanout", next=["p", "q"]), out, 0) == ["p", "q"]
    assert next_experts(StopRoute(), out, 0) == []


def test_route_on_missing_output_or_item_is_an_error():
    route = ArgmaxRoute(kind="argmax", output="y", classes={})
    with pytest.raises(RoutingError, match="'y'"):
        next_experts(route, {"z": np.zeros((1, 2))}, 0)
    with pytest.raises(RoutingError, match="item 3"):
        next_experts(route, {"y": np.zeros((1, 2))}, 3)


def test_graph_cycle_and_topological_order():
    g = ExpertGraph(children={"a": ["b"], "b": ["c"], "c": []}, parents={"a": [], "b": ["a"], "c": ["b"]},
                    preliminary=frozenset({"a"}))
    assert g.find_cycle() is None
    assert g.topological_order() == ["a", "b", "c"]
    cyclic = ExpertGraph(children={"a": ["b"], "b": ["a"]}, parents={"a": ["b"], "b": ["a"]}, preliminary=frozenset())
    assert cyclic.find_cycle() == ["a", "b", "a"]


def test_declared_usage_probabilities_follow_distribution_and_fractions(chain_package):
    experts = load_package(chain_package).experts
    assert experts["cls_a"].usage_probability == pytest.approx(0.75)
    assert experts["cls_b"].usage_probability == pytest.approx(0.25)
    # 0.75 * 0.5 + 0.25 * 0.2
    assert experts["stage2"].usage_probability == pytest.approx(0.425)
