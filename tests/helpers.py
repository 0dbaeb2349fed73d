"""Tiny ONNX models and packages for tests (built in milliseconds, deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecoe.loaders import WrappedLoader


def linear_model(
    *, in_name: str = "x", out_name: str = "y", in_dim: int = 4, out_dim: int = 3, seed: int = 0,
    batch: str | int = "batch", opset: int = 17,
) -> onnx.ModelProto:
    """y = x @ W + b with a symbolic batch axis."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((in_dim, out_dim)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(out_dim).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", [in_name, "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], [out_name])]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, in_dim])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, out_dim])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def two_in_two_out_model(*, seed: int = 1) -> onnx.ModelProto:
    """Inputs a [batch, seq, 4] and b [batch, seq, 4] (two symbolic axes); outputs sum and max."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("MatMul", ["s", "W"], ["sum"]),
        helper.make_node("ReduceMax", ["s"], ["max"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "seq", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", "seq", 4]),
         helper.make_tensor_value_info("max", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def save_external(model: onnx.ModelProto, path: Path) -> None:
    """Save with every weight in ``path.name + '.bin'`` beside it."""
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".bin", size_threshold=0)


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec, indent=2))
    return path


def chain_spec(model_dir: Path, *, optimize: bool = False) -> dict:
    """A 3-expert spec: two classifiers picked by metadata, one shared second stage."""
    onnx.save_model(linear_model(in_dim=4, out_dim=2, seed=1), str(model_dir / "cls_a.onnx"))
    onnx.save_model(linear_model(in_dim=4, out_dim=2, seed=2), str(model_dir / "cls_b.onnx"))
    onnx.save_model(linear_model(in_dim=4, out_dim=3, seed=3), str(model_dir / "stage2.onnx"))
    return {
        "name": "chain",
        "metadata": {"kind": {"values": ["a", "b"], "distribution": {"a": 0.75, "b": 0.25}}},
        "entry": {"key": "kind", "experts": {"a": "cls_a", "b": "cls_b"}},
        "optimize": optimize,
        "experts": {
            "cls_a": {"source": {"onnx": "cls_a.onnx"}, "architecture": "lin2",
                      "route": {"kind": "argmax", "output": "y", "classes": {"1": ["stage2"]},
                                "class_fractions": {"1": 0.5}}},
            "cls_b": {"source": {"onnx": "cls_b.onnx"}, "architecture": "lin2",
                      "route": {"kind": "argmax", "output": "y", "classes": {"1": ["stage2"]},
                                "class_fractions": {"1": 0.2}}},
            "stage2": {"source": {"onnx": "stage2.onnx"}, "architecture": "lin3"},
        },
    }


def wide_package(
    dest: Path, *, num_first: int = 12, num_second: int = 4, routes: list[str] | None = None,
    width: int = 8, hidden: int = 16, seed: int = 0,
) -> Path:
    """A two-stage package of tiny experts, written directly (no export verification: fast).

    ``num_first`` preliminary experts ``f0..`` picked by metadata ``kind``
    (values ``k0..``), each routing by ``routes[i]`` (cycled): "argmax" (class 1
    goes on), "threshold", "fanout" (to two second-stage experts) or "stop";
    ``num_second`` subsequent experts ``s0..`` (of a second architecture) take
    the request input ``x`` again. Usage probabilities are the declared ones.
    """
    from edgecoe.package.manifest import (
        EntryRule,
        ExpertRecord,
        Manifest,
        MetadataField,
        TensorSpec,
    )
    from edgecoe.package.routing import declared_usage_probabilities
    from edgecoe.package.writer import PackageWriter

    routes = routes or ["argmax"]
    kinds = [f"k{i}" for i in range(num_first)]
    x = TensorSpec(name="x", dtype="float32", shape=["batch", width])
    experts: dict[str, ExpertRecord] = {}
    with PackageWriter(dest, overwrite=True) as writer:
        for j in range(num_second):
            model = _mlp(width, hidden, 3, seed=seed * 1000 + 500 + j)
            record, _ = writer.write_model(f"experts/s{j}.onnx", model)
            experts[f"s{j}"] = ExpertRecord(
                architecture="second", model=record, inputs=[x],
                outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 3])], usage_probability=0.0)
        for i in range(num_first):
            model = _mlp(width, hidden, 2, seed=seed * 1000 + i)
            record, _ = writer.write_model(f"experts/f{i}.onnx", model)
            kind = routes[i % len(routes)] if num_second else "stop"
            nxt = [f"s{i % num_second}"] if num_second else []
            route: dict = {"kind": "stop"}
            if kind == "argmax":
                route = {"kind": "argmax", "output": "y", "classes": {1: nxt}, "class_fractions": {1: 0.5}}
            elif kind == "threshold":
                route = {"kind": "threshold", "output": "y", "threshold": 0.0, "above": nxt, "fraction_above": 0.5}
            elif kind == "fanout":
                route = {"kind": "fanout", "next": sorted({nxt[0], f"s{(i + 1) % num_second}"})}
            experts[f"f{i}"] = ExpertRecord.model_validate({
                "architecture": "first", "model": record, "inputs": [x],
                "outputs": [TensorSpec(name="y", dtype="float32", shape=["batch", 2])], "usage_probability": 0.0,
                "route": route})
        manifest = Manifest(
            name="wide", inputs=[TensorSpec(name="x", dtype="float32", shape=[width])],
            metadata={"kind": MetadataField(values=kinds)},
            entry=EntryRule(key="kind", experts={k: f"f{i}" for i, k in enumerate(kinds)}), experts=experts)
        probabilities = declared_usage_probabilities(manifest)
        manifest = manifest.model_copy(update={"experts": {
            n: e.model_copy(update={"usage_probability": min(1.0, round(probabilities[n], 9))})
            for n, e in experts.items()}})
        writer.commit(manifest)
    return dest


def _mlp(width: int, hidden: int, out: int, *, seed: int) -> onnx.ModelProto:
    """y = relu(x W1 + b1) W2 + b2, batch axis symbolic."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("W1", (width, hidden)), ("B1", (hidden,)), ("W2", (hidden, out)), ("B2", (out,)))]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "B1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "W2"], ["o0"]),
             helper.make_node("Add", ["o0", "B2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def wait_idle(runtime, timeout_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the runtime is idle; fail the test if it never gets there."""
    assert runtime.wait_idle(timeout_s), f"runtime not idle after {timeout_s} s"


class FlakySession:
    """A real session whose ``run`` first calls ``before_run(feeds)``, then raises when ``fail(feeds)`` says so."""

    def __init__(self, session, fail, before_run) -> None:  # type: ignore[no-untyped-def]
        self._session = session
        self._fail = fail
        self._before_run = before_run

    def run(self, names, feeds):  # type: ignore[no-untyped-def]
        if self._before_run is not None:
            self._before_run(feeds)
        if self._fail is not None and self._fail(feeds):
            raise RuntimeError("injected run failure")
        return self._session.run(names, feeds)


class FaultyLoader(WrappedLoader):
    """The real session loader, with faults injected on cue (:meth:`inject`).

    Until :meth:`inject` is called it changes nothing (preloads stay clean).
    """

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        from collections import Counter

        super().__init__(inner)
        self.created: Counter = Counter()
        self.create_fails = None
        self.run_fails = None
        self.before_run = None

    @classmethod
    def around(cls, package, config, profile=None):  # type: ignore[no-untyped-def]
        from edgecoe.loaders.session import SessionLoader
        from edgecoe.profile import default_profile

        return cls(SessionLoader(package, profile or default_profile(), config))

    def load(self, expert: str, processor_id: str):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        self.created[expert] += 1
        error = self.create_fails(expert) if self.create_fails else None
        if error is not None:
            raise error
        loaded = self.inner.load(expert, processor_id)
        if self.run_fails is None and self.before_run is None:
            return loaded
        run_fails, before_run = self.run_fails, self.before_run
        fail = (lambda feeds: run_fails(expert, feeds)) if run_fails else None
        before = (lambda feeds: before_run(expert, feeds)) if before_run else None
        return replace(loaded, handle=FlakySession(loaded.handle, fail, before))

    def inject(self, *, create_fails=None, run_fails=None, before_run=None):  # type: ignore[no-untyped-def]
        """From now on: ``create_fails(expert)`` -> an exception to raise instead of loading
        (or None); ``run_fails(expert, feeds)`` -> whether a run raises; ``before_run(expert,
        feeds)`` is called before each run (a gate, a delay). Returns the per-expert load counter."""
        self.create_fails, self.run_fails, self.before_run = create_fails, run_fails, before_run
        self.created.clear()
        return self.created


def faulty_runtime(package, config, profile=None, transforms=None):  # type: ignore[no-untyped-def]
    """A runtime serving through a :class:`FaultyLoader` (reach it as ``runtime.loader``)."""
    from edgecoe.runtime import Runtime

    return Runtime(package, config=config, profile=profile,
                   loader=FaultyLoader.around(package, config, profile), transforms=transforms)


def inject(runtime, **faults):  # type: ignore[no-untyped-def]
    """Inject faults into a :func:`faulty_runtime`; experts preloaded before are unloaded
    first, so every later load goes through the faults. Returns the load counter."""
    created = runtime.loader.inject(**faults)
    for cache in runtime.caches.values():
        cache.clear()
    return created
