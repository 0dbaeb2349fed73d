"""Routing traces: which experts each layer chose at each decode step, and what it saw.

``edgecoe trace PKG --prompts FILE -o TRACE.npz`` generates greedily over a
calibration set and records, per (decode step, layer): the prompt index, the
layer, the chosen experts, and the routed-expert input (the hidden state the
router read, float16). Predictors are trained on traces and evaluated on the
traces of other prompts. A trace is a plain ``.npz`` of numeric arrays, read
with pickles refused and every array's shape and range checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecoe.errors import InvalidInputError
from edgecoe.moe.generate import Generator, SamplingParams
from edgecoe.moe.model import MoeModel, Phase

MAX_TRACE_BYTES = 2 << 30


@dataclass(frozen=True)
class RoutingTrace:
    """Decode-step routing records, one row per (step, layer), in generation order.

    Attributes:
        prompt: prompt index of each row.
        step: decode step of each row (0 = the first generated token's step).
        layer: layer of each row.
        chosen: ``[rows, top_k]`` experts chosen.
        hidden: ``[rows, hidden]`` the routed-expert input (float16).
        num_experts: experts per layer.
    """

    prompt: np.ndarray
    step: np.ndarray
    layer: np.ndarray
    chosen: np.ndarray
    hidden: np.ndarray
    num_experts: int

    @property
    def num_layers(self) -> int:
        return int(self.layer.max()) + 1 if len(self.layer) else 0

    def save(self, path: Path) -> None:
        np.savez_compressed(path, prompt=self.prompt, step=self.step, layer=self.layer, chosen=self.chosen,
                            hidden=self.hidden, num_experts=np.array(self.num_experts))

    @classmethod
    def load(cls, path: Path) -> RoutingTrace:
        """Read a trace file (no pickles), checking every array.

        Raises:
            InvalidInputError: unreadable, too large, or inconsistent (naming the field).
        """
        if not path.is_file() or path.stat().st_size > MAX_TRACE_BYTES:
            raise InvalidInputError(f"{path}: not a trace file of at most {MAX_TRACE_BYTES} bytes")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ("prompt", "step", "layer", "chosen", "hidden", "num_experts")}
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInputError(f"{path}: not a routing trace ({exc})") from None
        rows = len(arrays["layer"])
        num_experts = int(arrays["num_experts"])
        checks = {
            "prompt": arrays["prompt"].shape == (rows,), "step": arrays["step"].shape == (rows,),
            "chosen": arrays["chosen"].ndim == 2 and arrays["chosen"].shape[0] == rows,
            "hidden": arrays["hidden"].ndim == 2 and arrays["hidden"].shape[0] == rows,
            "num_experts": 1 <= num_experts <= 999,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if not bad and rows and (arrays["chosen"].min() < 0 or arrays["chosen"].max() >= num_experts):
            bad.append("chosen")
        if not bad and rows and (arrays["layer"].min() < 0 or arrays["layer"].max() > 998):
            bad.append("layer")
        if not bad and not np.isfinite(arrays["hidden"]).all():
            bad.append("hidden")
        if bad:
            raise InvalidInputError(f"{path}: inconsistent trace fields {bad}")
        return cls(prompt=arrays["prompt"].astype(np.int64), step=arrays["step"].astype(np.int64),
                   layer=arrays["layer"].astype(np.int64), chosen=arrays["chosen"].astype(np.int64),
                   hidden=arrays["hidden"].astype(np.float16), num_experts=num_experts)


def record_trace(model: MoeModel, prompts: list[str], *, max_new_tokens: int = 32) -> RoutingTrace:
    """Generate greedily for each prompt (one at a time) and record every decode-step routing."""
    rows: dict[str, list[object]] = {k: [] for k in ("prompt", "step", "layer", "chosen", "hidden")}
    state = {"prompt": 0, "step": -1, "last_layer": 10**9}

    def observe(layer: int, phase: Phase, moe_input: np.ndarray, chosen: np.ndarray) -> None:
        if phase != "decode":
            return
        if layer <= int(state["last_layer"]):
            state["step"] += 1
        state["last_layer"] = layer
        rows["prompt"].append(state["prompt"])
        rows["step"].append(state["step"])
        rows["layer"].append(layer)
        rows["chosen"].append(chosen[0].copy())
        rows["hidden"].append(moe_input[0].astype(np.float16))

    generator = Generator(model)
    model.observer = observe
    try:
        for index, prompt in enumerate(prompts):
            state.update(prompt=index, step=-1, last_layer=10**9)
            generator.generate([prompt], SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True))
    finally:
        model.observer = None
    top_k = model.manifest.moe.top_k
    return RoutingTrace(
        prompt=np.array(rows["prompt"], np.int64), step=np.array(rows["step"], np.int64),
        layer=np.array(rows["layer"], np.int64),
        chosen=np.array(rows["chosen"], np.int64).reshape(-1, top_k),
        hidden=np.array(rows["hidden"], np.float16).reshape(-1, model.shape.hidden_size),
        num_experts=model.manifest.moe.num_experts)
