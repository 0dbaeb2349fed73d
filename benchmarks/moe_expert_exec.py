"""How to run a routed expert on ONNX Runtime: three ways measured side by side.

    python benchmarks/moe_expert_exec.py --hidden 1024 --intermediate 2048 --experts 8 --repeat 5 \\
        --json benchmarks/results/moe/expert_exec_large.json

(a) ``session``: one session per expert, its weights inside the model (load = create the session);
(b) ``bound``: one session per expert shape, the expert's weights bound as inputs (load = read the
    file into a buffer; what edgecoe does);
(c) ``moe-op``: ONNX Runtime's ``com.microsoft.MoE`` operator, which takes a layer's experts as one
    tensor: with offloading, the chosen experts are gathered into it per call (a copy), or, with every
    expert resident, the whole layer is one input.

For each: load time per expert (file in page cache), latency of one call for 1 and 32 rows, and resident
memory per expert (RSS growth over ``--experts`` resident experts). Medians over ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgecoe.memory import rss_bytes, trim_heap
from edgecoe.moe.export import float32_format
from edgecoe.moe.weights import ExpertRunner, ExpertWeights, read_exact
from edgecoe.results import machine_info

NO_SPIN = "session.intra_op.allow_spinning"


def _session_model(w13: np.ndarray, w2: np.ndarray) -> bytes:
    inter = w2.shape[1]
    nodes = [
        helper.make_node("Gemm", ["x", "w13"], ["h"], transB=1),
        helper.make_node("Split", ["h", "halves"], ["a", "b"], axis=1),
        helper.make_node("Sigmoid", ["a"], ["s"]), helper.make_node("Mul", ["a", "s"], ["g"]),
        helper.make_node("Mul", ["g", "b"], ["m"]), helper.make_node("Gemm", ["m", "w2"], ["o"], transB=1),
        helper.make_node("Mul", ["o", "weight"], ["y"])]
    graph = helper.make_graph(nodes, "expert", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w13.shape[1]]),
        helper.make_tensor_value_info("weight", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w13.shape[1]])],
        [numpy_helper.from_array(w13, "w13"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array([inter, inter], np.int64), "halves")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _moe_op_session(num_experts: int, top_k: int) -> ort.InferenceSession:
    node = helper.make_node("MoE", ["x", "router", "w1", "", "w2"], ["y"], domain="com.microsoft", k=top_k,
                            activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=1)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "router", "w1", "w2")]
    graph = helper.make_graph([node], "moe", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.add_session_config_entry(NO_SPIN, "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _time_ms(fn, repeat: int = 20) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    h, inter, count = args.hidden, args.intermediate, args.experts
    fmt = float32_format(h, inter)
    weights = []
    for e in range(count):
        w13 = (rng.standard_normal((2 * inter, h), dtype=np.float32) * 0.02).astype(np.float32)
        w2 = (rng.standard_normal((h, inter), dtype=np.float32) * 0.02).astype(np.float32)
        weights.append((w13, w2))
        (tmp / f"e{e}.bin").write_bytes(w13.tobytes() + w2.tobytes())
        (tmp / f"e{e}.onnx").write_bytes(_session_model(w13, w2))
    rows = {n: rng.standard_normal((n, h), dtype=np.float32) for n in (1, 32)}
    scale = {n: np.ones((n, 1), np.float32) for n in (1, 32)}
    out: dict[str, dict[str, float]] = {}
    options = ort.SessionOptions()
    options.add_session_config_entry(NO_SPIN, "0")  # as edgecoe's own sessions run

    # (a) one session per expert
    trim_heap()
    before = rss_bytes()
    started = time.perf_counter()
    sessions = [ort.InferenceSession(str(tmp / f"e{e}.onnx"), options, providers=["CPUExecutionProvider"])
                for e in range(count)]
    load_ms = (time.perf_counter() - started) * 1e3 / count
    out["session"] = {"load_ms": load_ms, "resident_bytes": (rss_bytes() - before) / count, **{
        f"run_{n}_rows_ms": _time_ms(lambda n=n: sessions[0].run(None, {"x": rows[n], "weight": scale[n]}))
        for n in rows}}
    sessions = []  # release them (not del: the lambdas above close over the name)
    trim_heap()

    # (b) one session per shape, weights bound (edgecoe)
    runner = ExpertRunner(fmt, hidden_size=h, intermediate_size=inter, session_config={NO_SPIN: "0"})
    before = rss_bytes()
    started = time.perf_counter()
    resident = []
    for e in range(count):
        buffer = read_exact(tmp / f"e{e}.bin", fmt.file_bytes)
        views = {t.name: buffer[t.offset:t.offset + t.num_bytes].view(np.float32).reshape(t.shape)
                 for t in fmt.tensors}
        resident.append(ExpertWeights({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in views.items()}, buffer,
                                      fmt.file_bytes))
    load_ms = (time.perf_counter() - started) * 1e3 / count
    out["bound"] = {"load_ms": load_ms, "resident_bytes": (rss_bytes() - before) / count, **{
        f"run_{n}_rows_ms": _time_ms(lambda n=n: runner.run(resident[0], rows[n], scale[n])) for n in rows}}
    resident = []  # release them
    trim_heap()

    # (c) ORT's MoE operator: gather the top-k experts' weights per call, or all experts resident
    session = _moe_op_session(count, args.top_k)
    interleaved = [np.stack([w13[:inter], w13[inter:]], axis=1).reshape(2 * inter, h) for w13, _ in weights]
    all_w1 = np.stack(interleaved)
    all_w2 = np.stack([w2 for _, w2 in weights])
    router = {n: rng.standard_normal((n, count)).astype(np.float32) for n in rows}

    def gathered(n: int) -> None:
        chosen = [0, 1]  # the copy an offloading runtime pays per call: the chosen experts into one tensor
        w1 = np.stack([interleaved[c] for c in chosen])
        w2 = np.stack([weights[c][1] for c in chosen])
        session.run(None, {"x": rows[n], "router": router[n][:, chosen], "w1": w1, "w2": w2})

    out["moe-op gathered"] = {"load_ms": out["bound"]["load_ms"], "resident_bytes": out["bound"]["resident_bytes"],
                              **{f"run_{n}_rows_ms": _time_ms(lambda n=n: gathered(n)) for n in rows}}
    out["moe-op all resident"] = {
        "load_ms": float("nan"), "resident_bytes": float(all_w1.nbytes + all_w2.nbytes) / count,
        **{f"run_{n}_rows_ms": _time_ms(lambda n=n: session.run(
            None, {"x": rows[n], "router": router[n], "w1": all_w1, "w2": all_w2})) / args.top_k for n in rows}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            rounds.append(measure(args, Path(tmp)))
            print(f"round {i + 1}/{args.repeat}", flush=True)
    summary = {way: {key: statistics.median(r[way][key] for r in rounds) for key in rounds[0][way]}
               for way in rounds[0]}
    print(f"{'way':22} {'load ms':>9} {'MB/expert':>10} {'1 row ms':>9} {'32 rows ms':>11}")
    for way, row in summary.items():
        print(f"{way:22} {row['load_ms']:9.2f} {row['resident_bytes'] / 1e6:10.1f} {row['run_1_rows_ms']:9.3f} "
              f"{row['run_32_rows_ms']:11.3f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info(),
                                         "summary": summary, "rounds": rounds}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
