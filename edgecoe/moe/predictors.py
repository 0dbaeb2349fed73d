"""Predicting the next layer's experts during decode, trained offline on routing traces.

Every predictor scores layer l+1's experts from what is known when layer l
routes: layer l's routed-expert input (the hidden state), the experts layer l
chose, and the experts layer l+1 chose for the previous token. Compared by
recall and precision of their top-n on the traces of held-out prompts:

- ``popularity``: how often each expert of layer l+1 was chosen in the trace;
- ``sticky``: layer l+1's previous-token experts first, then popularity;
- ``transition``: P(expert j at l+1 | expert i at l), summed over layer l's choices;
- ``speculative``: layer l+1's own router applied to layer l's hidden state (no training);
- ``learned``: per layer, a softmax regression from [hidden state, layer l's choices,
  layer l+1's previous-token choices] to layer l+1's choices (plain arrays, no pickles).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgecoe.moe.package import MoePackage
    from edgecoe.moe.trace import RoutingTrace


@dataclass(frozen=True)
class Pairs:
    """(layer l, layer l+1) rows of a trace: what was known at layer l and what layer l+1 chose."""

    layer: np.ndarray  # [n] layer l
    hidden: np.ndarray  # [n, H] layer l's routed-expert input
    chosen: np.ndarray  # [n, k] layer l's choices
    previous: np.ndarray  # [n, E] multi-hot: layer l+1's choices at the previous step (zeros at step 0)
    target: np.ndarray  # [n, k] layer l+1's choices


def pairs(trace: RoutingTrace) -> Pairs:
    """Every (step, l) with a layer l+1 in the same step, with layer l+1's previous-step choices."""
    index = {(int(p), int(s), int(la)): i for i, (p, s, la) in enumerate(zip(trace.prompt, trace.step, trace.layer,
                                                                                strict=True))}
    rows, nexts, prevs = [], [], []
    for i, (p, s, la) in enumerate(zip(trace.prompt, trace.step, trace.layer, strict=True)):
        nxt = index.get((int(p), int(s), int(la) + 1))
        if nxt is None:
            continue
        rows.append(i)
        nexts.append(nxt)
        prevs.append(index.get((int(p), int(s) - 1, int(la) + 1), -1))
    num_experts = trace.num_experts
    previous = np.zeros((len(rows), num_experts), np.float32)
    for r, prev in enumerate(prevs):
        if prev >= 0:
            previous[r, trace.chosen[prev]] = 1.0
    rows_a, nexts_a = np.array(rows, np.int64), np.array(nexts, np.int64)
    return Pairs(layer=trace.layer[rows_a], hidden=trace.hidden[rows_a].astype(np.float32),
                 chosen=trace.chosen[rows_a], previous=previous, target=trace.chosen[nexts_a])


Scorer = Callable[[Pairs], np.ndarray]
"""Scores ``[n, E]`` for layer l+1's experts, one row per pair."""


def _multi_hot(choices: np.ndarray, num_experts: int) -> np.ndarray:
    out = np.zeros((len(choices), num_experts), np.float32)
    np.put_along_axis(out, choices, 1.0, axis=1)
    return out


def layer_frequencies(train: Pairs, num_layers: int, num_experts: int) -> np.ndarray:
    """How often each expert of layer l+1 was chosen, ``[num_layers, num_experts]``, rows summing to 1
    (every count starts at one, so none is zero)."""
    counts = np.ones((num_layers, num_experts), np.float32)
    for la, target in zip(train.layer, train.target, strict=True):
        counts[la, target] += 1
    freq: np.ndarray = counts / counts.sum(axis=1, keepdims=True)
    return freq


def popularity(train: Pairs, num_layers: int, num_experts: int) -> Scorer:
    freq = layer_frequencies(train, num_layers, num_experts)
    return lambda p: freq[p.layer]


def sticky(train: Pairs, num_layers: int, num_experts: int) -> Scorer:
    base = popularity(train, num_layers, num_experts)
    return lambda p: p.previous + base(p)  # previous-token experts outrank any frequency (< 1)


def transition(train: Pairs, num_layers: int, num_experts: int) -> Scorer:
    table = np.ones((num_layers, num_experts, num_experts), np.float32)
    for la, chosen, target in zip(train.layer, train.chosen, train.target, strict=True):
        for i in chosen:
            table[la, i, target] += 1
    table /= table.sum(axis=2, keepdims=True)
    return lambda p: table[p.layer[:, None], p.chosen].sum(axis=1)


def speculative(routers: list[np.ndarray]) -> Scorer:
    def score(p: Pairs) -> np.ndarray:
        out = np.zeros((len(p.layer), routers[0].shape[1]), np.float32)
        for la in np.unique(p.layer):
            rows = p.layer == la
            logits = p.hidden[rows] @ routers[la + 1]
            out[rows] = np.exp(logits - logits.max(axis=1, keepdims=True))
        return out / out.sum(axis=1, keepdims=True)
    return score


def features(p: Pairs, num_experts: int) -> np.ndarray:
    """[hidden, layer l's choices (multi-hot), layer l+1's previous choices, 1]."""
    return np.concatenate([p.hidden, _multi_hot(p.chosen, num_experts), p.previous,
                           np.ones((len(p.layer), 1), np.float32)], axis=1)


def train_linear(train: Pairs, num_layers: int, num_experts: int, *, steps: int = 300, lr: float = 0.05,
                 l2: float = 1e-4, use_hidden: bool = True) -> np.ndarray:
    """Per-layer softmax-regression weights ``[num_layers, features, E]`` (Adam, full batch, zero init).

    ``use_hidden=False`` keeps the hidden-state weights at zero: a model of choices alone (transitions,
    stickiness, popularity), which generalizes better where the traces are small next to the hidden size.
    """
    dim = train.hidden.shape[1] + 2 * num_experts + 1
    weights = np.zeros((num_layers, dim, num_experts), np.float32)
    for la in range(num_layers):
        rows = train.layer == la
        if not rows.any():
            continue
        subset = Pairs(train.layer[rows], train.hidden[rows], train.chosen[rows], train.previous[rows],
                       train.target[rows])
        x = features(subset, num_experts)
        if not use_hidden:
            x[:, :train.hidden.shape[1]] = 0.0
        scale = np.abs(x).max(axis=0) + 1e-6  # fold a per-feature scale into the weights afterwards
        x = x / scale
        y = _multi_hot(subset.target, num_experts)
        y /= y.sum(axis=1, keepdims=True)
        w = np.zeros((dim, num_experts), np.float32)
        m = np.zeros_like(w)
        v = np.zeros_like(w)
        for t in range(1, steps + 1):
            logits = x @ w
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            grad = x.T @ (probs - y) / len(x) + l2 * w
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            w -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        weights[la] = w / scale[:, None]
    return weights


def linear(weights: np.ndarray, num_experts: int) -> Scorer:
    def score(p: Pairs) -> np.ndarray:
        x = features(p, num_experts)
        logits = np.einsum("nf,nfe->ne", x, weights[p.layer])
        return np.exp(logits - logits.max(axis=1, keepdims=True))
    return score


@dataclass(frozen=True)
class Quality:
    recall: float  # share of layer l+1's chosen experts found in the top n
    precision: float  # share of the top n that layer l+1 chose


def evaluate(scorer: Scorer, test: Pairs, n: int) -> Quality:
    """Recall and precision of ``scorer``'s top ``n`` against what layer l+1 chose."""
    scores = scorer(test)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top, test.target, strict=True))
    return Quality(recall=hits / test.target.size, precision=hits / top.size)


PREDICTOR_PATH = "predictor/linear.bin"
ACTIVATIONS_PATH = "predictor/activations.bin"


def activation_matrices(trace: RoutingTrace, num_layers: int) -> np.ndarray:
    """Each traced request's expert activation matrix, ``[requests, num_layers, num_experts]``: how often
    each layer chose each expert over the request's decode steps, each layer's row summing to 1."""
    requests = np.unique(trace.prompt)
    out = np.zeros((len(requests), num_layers, trace.num_experts), np.float32)
    row_of = {int(p): i for i, p in enumerate(requests)}
    for p, layer, chosen in zip(trace.prompt, trace.layer, trace.chosen, strict=True):
        np.add.at(out[row_of[int(p)], int(layer)], chosen, 1.0)
    sums = out.sum(axis=2, keepdims=True)
    normalized: np.ndarray = np.where(sums > 0, out / np.maximum(sums, 1e-12), 1.0 / trace.num_experts)
    return normalized.astype(np.float32)


def install_predictor(root: Path, weights: np.ndarray, *, trained_on: str, recall: dict[str, float],
                      precision: dict[str, float], activations: np.ndarray | None = None) -> MoePackage:
    """Write ``weights`` into the MoE package at ``root`` as its predictor (replacing any), then re-validate.

    ``activations``: the traced requests' expert activation matrices (:func:`activation_matrices`), shipped
    beside the weights for the moe-infinity schedule.

    The weights file is written first, the manifest last (to a temporary name, then renamed), so an
    interrupted install leaves the old manifest, which then fails validation on the stray file: never
    a manifest that points at missing weights.

    Raises:
        PackageError: the package is invalid, or the weights do not fit its shape.
    """
    from edgecoe.errors import PackageError, Problem
    from edgecoe.moe.manifest import MoeManifest, PredictorRecord
    from edgecoe.moe.package import load_moe_package
    from edgecoe.package.files import record_file, unsafe_path_reason
    from edgecoe.package.manifest import MANIFEST_NAME

    package = load_moe_package(root)
    if (root / "predictor").exists() and (root / "predictor").is_symlink():
        raise PackageError(root, [Problem("predictor", "is a symbolic link")])
    (root / "predictor").mkdir(exist_ok=True)
    reason = unsafe_path_reason(root, PREDICTOR_PATH)
    if reason is not None:
        raise PackageError(root, [Problem(PREDICTOR_PATH, reason)])
    (root / PREDICTOR_PATH).write_bytes(np.ascontiguousarray(weights, dtype="<f4").tobytes())
    activations_record = None
    if activations is not None:
        reason = unsafe_path_reason(root, ACTIVATIONS_PATH)
        if reason is not None:
            raise PackageError(root, [Problem(ACTIVATIONS_PATH, reason)])
        (root / ACTIVATIONS_PATH).write_bytes(np.ascontiguousarray(activations, dtype="<f4").tobytes())
        activations_record = record_file(root, ACTIVATIONS_PATH)
    elif (root / ACTIVATIONS_PATH).is_file() and not (root / ACTIVATIONS_PATH).is_symlink():
        (root / ACTIVATIONS_PATH).unlink()  # an older install's, which the new manifest no longer lists
    record = PredictorRecord(kind="linear", file=record_file(root, PREDICTOR_PATH), shape=list(weights.shape),
                             trained_on=trained_on, recall=recall, precision=precision,
                             activations=activations_record,
                             num_activation_requests=0 if activations is None else len(activations))
    manifest = MoeManifest.model_validate({**package.manifest.model_dump(), "predictor": record.model_dump()})
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)
    return load_moe_package(root, verify="full")


def package_predictor(package: MoePackage) -> np.ndarray | None:
    """The package's predictor weights ``[num_layers, features, num_experts]``, or None."""
    from edgecoe.moe.weights import read_exact

    record = package.manifest.predictor
    if record is None:
        return None
    return read_exact(package.path(record.file), record.file.bytes).view(np.float32).reshape(record.shape)


def package_activations(package: MoePackage) -> np.ndarray | None:
    """The package's traced expert activation matrices ``[requests, num_layers, num_experts]``, or None."""
    from edgecoe.moe.weights import read_exact

    record = package.manifest.predictor
    if record is None or record.activations is None:
        return None
    shape = (record.num_activation_requests, package.manifest.model.num_layers, package.manifest.moe.num_experts)
    return read_exact(package.path(record.activations), record.activations.bytes).view(np.float32).reshape(shape)


def predict_next(weights: np.ndarray, layer: int, hidden: np.ndarray, chosen: np.ndarray,
                 previous: frozenset[int]) -> np.ndarray:
    """Layer ``layer + 1``'s expert probabilities from the learned predictor, averaged over the rows."""
    num_experts = weights.shape[2]
    prev = np.zeros((len(hidden), num_experts), np.float32)
    prev[:, list(previous)] = 1.0
    p = Pairs(layer=np.full(len(hidden), layer), hidden=hidden.astype(np.float32), chosen=chosen, previous=prev,
              target=chosen)
    logits = features(p, num_experts) @ weights[layer]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = (probs / probs.sum(axis=1, keepdims=True)).mean(axis=0)
    return out


PREDICTORS = ("popularity", "sticky", "transition", "speculative", "learned")


@dataclass(frozen=True)
class Comparison:
    """Every predictor's quality on held-out traces, and the learned predictor's weights."""

    top_n: tuple[int, ...]
    quality: dict[str, dict[int, Quality]]  # predictor -> top-n -> quality
    weights: np.ndarray
    num_train_pairs: int
    num_eval_pairs: int

    def to_dict(self) -> dict[str, object]:
        return {"top_n": list(self.top_n), "num_train_pairs": self.num_train_pairs,
                "num_eval_pairs": self.num_eval_pairs,
                "quality": {name: {str(n): {"recall": q.recall, "precision": q.precision} for n, q in by_n.items()}
                            for name, by_n in self.quality.items()}}


def compare_predictors(package: MoePackage, train_trace: RoutingTrace, eval_trace: RoutingTrace) -> Comparison:
    """Train every predictor on ``train_trace`` and measure each on ``eval_trace`` at top-k and 2 x top-k.

    Raises:
        InvalidInputError: a trace does not match the package's shape, or has no layer pairs.
    """
    from edgecoe.errors import InvalidInputError
    from edgecoe.moe.model import router_weights

    manifest = package.manifest
    layers, experts, top_k = manifest.model.num_layers, manifest.moe.num_experts, manifest.moe.top_k
    for name, t in (("trace", train_trace), ("eval trace", eval_trace)):
        if (t.num_experts != experts or t.hidden.shape[1] != manifest.model.hidden_size
                or t.chosen.shape[1] != top_k or t.num_layers > layers):
            raise InvalidInputError(f"the {name} was not recorded on a package of this shape ({layers} layers x "
                                    f"{experts} experts, top-{top_k}, hidden {manifest.model.hidden_size})")
    train, test = pairs(train_trace), pairs(eval_trace)
    if not len(train.layer) or not len(test.layer):
        raise InvalidInputError("a trace holds no consecutive layers to learn or measure from")
    weights = choose_linear(train_trace, layers, experts, 2 * top_k)
    routers = [router_weights(package.path(layer.dense)) for layer in manifest.layers]
    scorers: dict[str, Scorer] = {
        "popularity": popularity(train, layers, experts), "sticky": sticky(train, layers, experts),
        "transition": transition(train, layers, experts), "speculative": speculative(routers),
        "learned": linear(weights, experts)}
    top_n = (top_k, 2 * top_k)
    quality = {name: {n: evaluate(scorer, test, n) for n in top_n} for name, scorer in scorers.items()}
    return Comparison(top_n=top_n, quality=quality, weights=weights, num_train_pairs=len(train.layer),
                      num_eval_pairs=len(test.layer))


def sticky_linear(train: Pairs, num_layers: int, num_experts: int, hidden_size: int) -> np.ndarray:
    """The sticky predictor as linear weights: the previous token's experts first, then popularity."""
    freq = layer_frequencies(train, num_layers, num_experts)
    weights = np.zeros((num_layers, hidden_size + 2 * num_experts + 1, num_experts), np.float32)
    previous = hidden_size + num_experts
    for la in range(num_layers):
        weights[la, previous:previous + num_experts] = 10.0 * np.eye(num_experts, dtype=np.float32)
        weights[la, -1] = np.log(freq[la])
    return weights


Fitter = Callable[[Pairs], np.ndarray]


def choose_linear(trace: RoutingTrace, num_layers: int, num_experts: int, n: int) -> np.ndarray:
    """The learned predictor: a softmax regression with hidden-state features, one without, or the
    sticky rule in the same linear form, whichever recalls most of a validation split of ``trace``
    (its last fifth of prompts); then fitted on all of it."""
    hidden_size = trace.hidden.shape[1]
    fitters: dict[str, Fitter] = {
        "hidden": lambda p: train_linear(p, num_layers, num_experts, use_hidden=True),
        "choices": lambda p: train_linear(p, num_layers, num_experts, use_hidden=False),
        "sticky": lambda p: sticky_linear(p, num_layers, num_experts, hidden_size),
    }
    prompts = np.unique(trace.prompt)
    best = "hidden"
    if len(prompts) >= 5:
        cut = prompts[int(len(prompts) * 0.8)]
        fit = pairs(_subset(trace, trace.prompt < cut))
        check = pairs(_subset(trace, trace.prompt >= cut))
        if len(fit.layer) and len(check.layer):
            recall = {name: evaluate(linear(fitter(fit), num_experts), check, n).recall
                      for name, fitter in fitters.items()}
            best = max(recall, key=lambda name: recall[name])
    return fitters[best](pairs(trace))


def _subset(trace: RoutingTrace, rows: np.ndarray) -> RoutingTrace:
    from edgecoe.moe.trace import RoutingTrace as Trace

    return Trace(prompt=trace.prompt[rows], step=trace.step[rows], layer=trace.layer[rows],
                 chosen=trace.chosen[rows], hidden=trace.hidden[rows], num_experts=trace.num_experts)
