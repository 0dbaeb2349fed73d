"""Expert schedules for MoE generation: which experts to fetch ahead, keep and drop, per phase.

Policy only: a schedule sees where the model is (layer, phase, the hidden state
entering the routed experts) and answers with expert names; the model carries
them out through the prefetcher and the cache. Each schedule comes with the
eviction policy it ranks residents by. Chosen by name (:func:`create_schedule`):

- ``on-demand``: load an expert when the router picks it; least recently used out.
- ``mixtral-offload`` (Eliseev & Mazur's Mixtral offloading): the budget split
  evenly across layers, least recently used out within a layer; speculative
  prefetch: layer l+1's router applied to layer l's routed-expert input guesses
  its top-k, loaded while layer l finishes.
- ``edgecoe`` (phase-aware, after DuoServe-MoE): in prefill, each layer's
  experts stream in while the previous layer's experts run, and each is dropped
  once it has run, so about a layer and a half is resident; in decode, the
  budget is split across layers and each layer's residents are ranked by a
  prediction for the next token: the package's trained predictor
  (:mod:`edgecoe.moe.predictors`) where it ships one, else the speculative
  router's probability plus a bonus for the experts the layer used last token (routing is sticky: on the
  demo models the last token's experts recall 54-88 % of the next token's, the
  speculative router's top-k 70-72 %: ``benchmarks/moe_predictors.py``). The next layer's predicted experts are
  fetched only where they outrank a resident, so a guess never displaces a
  likelier expert. A prefill starts by dropping every resident but the first
  layers' experts (up to the prefill window), so the prefill's footprint is the
  window, not the decode budget.
- ``moe-infinity`` (Xue et al.'s activation-aware offloading): the package ships
  the expert activation matrices (EAMs, per-layer expert usage of each traced
  calibration request); the current request's EAM so far is matched to the
  nearest traced one (cosine), whose activation ratios rank the cache (lowest
  out, then least recently used) and pick the prefetches of the next layers,
  discounted by how many layers ahead they are.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

import numpy as np

from edgecoe.cache.policies import CandidateView, EvictionPolicy, LruPolicy
from edgecoe.moe.manifest import SlotNames, parse_expert_name

Phase = Literal["prefill", "decode"]


@dataclass(frozen=True)
class ScheduleContext:
    """What schedules may know of the model.

    Attributes:
        num_layers / num_experts / top_k: the MoE shape.
        budget_experts: how many routed experts the budget holds.
        load_routers: reads each layer's router weights, ``[hidden, num_experts]`` (logits = x @ router);
            called on first use of :attr:`routers` only, since on-demand never reads them.
        predictor: the package's trained next-layer predictor weights, if it ships one.
        activations: the package's traced expert activation matrices ``[requests, layers, experts]``
            (each layer's row sums to 1), if it ships them.
        name: the cache name of (layer, slot) for the variant being served (schedules name experts
            only through it).
        decode_prefetch: whether the ``edgecoe`` schedule fetches predicted experts ahead in decode
            (:func:`decode_prefetch_for` decides it per device); without it the prediction only ranks
            residents for eviction.
    """

    num_layers: int
    num_experts: int
    top_k: int
    budget_experts: int
    load_routers: Callable[[], list[np.ndarray]] = field(repr=False)
    predictor: np.ndarray | None = field(default=None, repr=False)
    activations: np.ndarray | None = field(default=None, repr=False)
    decode_prefetch: bool = True
    name: SlotNames = field(default_factory=SlotNames, repr=False)

    def forget_routers(self) -> None:
        """Drop the parsed router weights (after a variant switch: the next use reads the new ones)."""
        self.__dict__.pop("routers", None)  # the cached_property's slot; the dataclass is frozen

    @cached_property
    def routers(self) -> list[np.ndarray]:
        """Each layer's router weights (parsed from the dense models on first use)."""
        return self.load_routers()


class ExpertSchedule(Protocol):
    name: str
    eviction: EvictionPolicy

    def layer_start(self, layer: int, phase: Phase) -> list[str]:
        """Experts to fetch while layer ``layer``'s dense part computes."""
        ...

    def routed(self, layer: int, phase: Phase, moe_input: np.ndarray, chosen: np.ndarray,
               resident: Container[str] = frozenset()) -> list[str]:
        """Experts to fetch while layer ``layer``'s chosen experts run (``chosen`` ``[N, top_k]``);
        ``resident``: the experts resident (or being loaded) now."""
        ...

    def ran(self, layer: int, phase: Phase, expert: str) -> bool:
        """Whether to drop ``expert`` now that it has run."""
        ...

    def prefill_start(self, resident: Iterable[str]) -> list[str]:
        """Called as a prefill begins, with the experts resident: those to drop first."""
        ...

    def unchosen(self, layer: int, phase: Phase, chosen: np.ndarray) -> list[str]:
        """Once layer ``layer`` has routed: experts to drop (or stop fetching) since no row chose them."""
        ...


class _Passive:
    """Every hook answers "nothing to fetch, nothing to drop"; a schedule overrides the hooks it acts on."""

    def layer_start(self, layer: int, phase: Phase) -> list[str]:
        return []

    def routed(self, layer: int, phase: Phase, moe_input: np.ndarray, chosen: np.ndarray,
               resident: Container[str] = frozenset()) -> list[str]:
        return []

    def ran(self, layer: int, phase: Phase, expert: str) -> bool:
        return False

    def prefill_start(self, resident: Iterable[str]) -> list[str]:
        return []

    def unchosen(self, layer: int, phase: Phase, chosen: np.ndarray) -> list[str]:
        return []


class OnDemand(_Passive):
    """Load when the router picks; least recently used out; nothing fetched ahead."""

    name = "on-demand"

    def __init__(self, context: ScheduleContext) -> None:
        self.eviction: EvictionPolicy = LruPolicy()


def _layer_of(name: str) -> int:
    """An expert's layer; -1 for other cache entries (a variant's non-expert parts), which no quota bounds."""
    try:
        return parse_expert_name(name)[0]
    except ValueError:
        return -1


class LayerQuotaPolicy:
    """Each layer may hold ``quota`` experts; a layer over its quota (or at it, when room is being
    made for one of its own) gives up an expert first. Within that: lowest ``value`` (how often
    the run used the expert; constant for pure LRU), then least recently used.
    """

    name = "layer-quota"

    def __init__(self, quota: int, *, count_uses: bool) -> None:
        self.quota = max(1, quota)
        self.count_uses = count_uses
        self.uses: dict[str, int] = {}  # expert -> acquisitions (when counted)
        self.scores: dict[str, float] = {}  # expert -> predicted value set by a schedule (ranks first)
        self._incoming_layer: int | None = None
        self._counts_for: frozenset[str] | None = None
        self._counts: dict[int, int] = {}  # layer -> resident experts (for _counts_for)

    def on_use(self, expert: str) -> None:
        if self.count_uses:
            self.uses[expert] = self.uses.get(expert, 0) + 1

    def set_future(self, future_uses: Iterable[str]) -> None:
        pass

    def incoming(self, expert: str | None) -> None:
        self._incoming_layer = _layer_of(expert) if expert is not None else None

    def priority(self, entry: CandidateView, resident: frozenset[str]) -> tuple[float, ...]:
        if resident is not self._counts_for:  # once per eviction, not once per candidate
            self._counts = {}
            for name in resident:
                layer = _layer_of(name)
                self._counts[layer] = self._counts.get(layer, 0) + 1
            self._counts_for = resident
        layer = _layer_of(entry.expert)
        held = self._counts.get(layer, 0)
        over = layer >= 0 and (held > self.quota or (layer == self._incoming_layer and held >= self.quota))
        return (0 if over else 1, self.scores.get(entry.expert, 0.0), self.uses.get(entry.expert, 0),
                entry.last_used_seq)


def speculative_probs(context: ScheduleContext, layer: int, moe_input: np.ndarray) -> np.ndarray:
    """Layer ``layer + 1``'s router applied to layer ``layer``'s routed-expert input: the routing
    probabilities averaged over the rows, ``[num_experts]``."""
    logits = moe_input @ context.routers[layer + 1]
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs: np.ndarray = (shifted / shifted.sum(axis=-1, keepdims=True)).mean(axis=0)
    return probs


def speculate(context: ScheduleContext, layer: int, moe_input: np.ndarray, count: int) -> list[str]:
    """Layer ``layer + 1``'s ``count`` likeliest experts by :func:`speculative_probs`; none after the last layer."""
    nxt = layer + 1
    if nxt >= context.num_layers or count <= 0:
        return []
    best = np.argsort(-speculative_probs(context, layer, moe_input), kind="stable")[:count]
    return [context.name(nxt, int(e)) for e in best]


class MixtralOffload(_Passive):
    """Per-layer LRU with speculative next-layer prefetch of top-k (see the module docstring)."""

    name = "mixtral-offload"

    def __init__(self, context: ScheduleContext) -> None:
        self.context = context
        self.quota = max(1, context.budget_experts // context.num_layers)
        self.eviction: EvictionPolicy = LayerQuotaPolicy(self.quota, count_uses=False)

    def routed(self, layer: int, phase: Phase, moe_input: np.ndarray, chosen: np.ndarray,
               resident: Container[str] = frozenset()) -> list[str]:
        return speculate(self.context, layer, moe_input, min(self.context.top_k, self.quota))


class PhaseAware:
    """edgecoe's schedule: layer streaming in prefill, predicted prefetch in decode."""

    name = "edgecoe"

    def __init__(self, context: ScheduleContext) -> None:
        self.context = context
        self.quota = max(1, context.budget_experts // context.num_layers)
        # NOTE: a layer and a half: the running layer's experts plus half of the next layer's
        # coming in. Two whole layers would be 17 % of moe-large's experts; DuoServe-MoE's
        # peak is about 15 %.
        self.prefill_window = min(context.budget_experts, context.num_experts + context.num_experts // 2)
        # NOTE: no use counts within a layer (predicted score, then recency): counting uses kept
        # experts popular early in a prompt past their time and cost about 15 % of decode speed on
        # moe-large while tuning.
        self.policy = LayerQuotaPolicy(self.quota, count_uses=False)
        self.eviction: EvictionPolicy = self.policy
        self.last_used: dict[int, frozenset[int]] = {}  # layer -> experts it used at the last decode step

    def layer_start(self, layer: int, phase: Phase) -> list[str]:
        if phase != "prefill":
            return []
        return [self.context.name(layer, e) for e in range(self.context.num_experts)]

    def routed(self, layer: int, phase: Phase, moe_input: np.ndarray, chosen: np.ndarray,
               resident: Container[str] = frozenset()) -> list[str]:
        if phase == "prefill":
            # this layer's chosen experts not loaded yet come first; the next layer streams in
            # behind them as this layer's experts are dropped once run (see ran)
            used = [self.context.name(layer, int(e)) for e in np.unique(chosen)]
            nxt = layer + 1
            if nxt >= self.context.num_layers:
                return used
            room = max(self.prefill_window - len(used), 0)
            return used + [self.context.name(nxt, e) for e in range(self.context.num_experts)][:room]
        self.last_used[layer] = frozenset(int(e) for e in np.unique(chosen))
        nxt = layer + 1
        if nxt >= self.context.num_layers:
            return []
        previous = self.last_used.get(nxt, frozenset())
        if self.context.predictor is not None:
            from edgecoe.moe.predictors import predict_next

            value = predict_next(self.context.predictor, layer, moe_input, chosen, previous)
        else:
            value = speculative_probs(self.context, layer, moe_input)
            for e in previous:
                value[e] += STICKY_BONUS
        names = [self.context.name(nxt, e) for e in range(self.context.num_experts)]
        self.policy.scores.update(zip(names, value.tolist(), strict=True))
        if not self.context.decode_prefetch:
            return []  # the prediction still ranks the layer's residents for eviction
        # Fetch among the layer's best `quota` only what is clearly likelier than the resident it
        # would displace (a load then evicts the lowest-valued resident of this layer): a wrong
        # guess costs two loads, the guess and the reload of what it displaced.
        held = [e for e, name in enumerate(names) if name in resident]
        floor = min((value[e] for e in held), default=-np.inf) if len(held) >= self.quota else -np.inf
        picks: list[str] = []
        for e in np.argsort(-value, kind="stable")[:self.quota]:
            if names[int(e)] in resident:
                continue
            if len(held) + len(picks) < self.quota or value[int(e)] >= floor + FETCH_MARGIN:
                picks.append(names[int(e)])
        return picks

    def ran(self, layer: int, phase: Phase, expert: str) -> bool:
        return phase == "prefill"

    def prefill_start(self, resident: Iterable[str]) -> list[str]:
        # Keep what the prefill's first layers stream in anyway (layer 0, then layer 1, up to the
        # window); everything else goes, so the prefill peak is the window, not the decode budget.
        keep = {self.context.name(layer, e) for layer in range(min(2, self.context.num_layers))
                for e in range(self.context.num_experts)}
        kept: list[str] = sorted(name for name in resident if name in keep)[:self.prefill_window]
        return [name for name in resident if name not in kept and _layer_of(name) >= 0]  # experts only

    def unchosen(self, layer: int, phase: Phase, chosen: np.ndarray) -> list[str]:
        # the layer's whole expert set streamed in ahead of routing; what no token chose goes at once
        if phase != "prefill":
            return []
        used = set(np.unique(chosen).tolist())
        return [self.context.name(layer, e) for e in range(self.context.num_experts) if e not in used]


class ActivationPolicy:
    """Evicts the resident with the lowest predicted activation ratio (``scores``), then the least
    recently used."""

    name = "activation-aware"

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def on_use(self, expert: str) -> None:
        pass

    def set_future(self, future_uses: Iterable[str]) -> None:
        pass

    def incoming(self, expert: str | None) -> None:
        pass

    def priority(self, entry: CandidateView, resident: frozenset[str]) -> tuple[float, ...]:
        return (self.scores.get(entry.expert, 0.0), entry.last_used_seq)


class MoeInfinity(_Passive):
    """Activation-aware caching and prefetch from traced EAMs (see the module docstring).

    Raises:
        ValueError: the package ships no activation matrices (``edgecoe predictor train`` writes them).
    """

    name = "moe-infinity"

    def __init__(self, context: ScheduleContext) -> None:
        if context.activations is None:
            raise ValueError("the moe-infinity schedule needs the package's traced expert activation matrices; "
                             "run `edgecoe predictor train` on the package first")
        self.context = context
        # rows normalized once, so matching is one matrix-vector product
        flat = context.activations.reshape(len(context.activations), -1).astype(np.float32)
        self.library = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        self.current = np.zeros((context.num_layers, context.num_experts), np.float32)
        self.policy = ActivationPolicy()
        self.eviction: EvictionPolicy = self.policy
        self.lookahead = max(1, min(LOOKAHEAD_LAYERS, context.num_layers - 1))

    def prefill_start(self, resident: Iterable[str]) -> list[str]:
        self.current[:] = 0.0  # a new request: its EAM starts empty
        return []

    def matched(self) -> np.ndarray:
        """The traced EAM nearest to the current request's, ``[layers, experts]``."""
        best = int(np.argmax(self.library @ self.current.reshape(-1)))
        activations = self.context.activations
        assert activations is not None
        matched: np.ndarray = activations[best]
        return matched

    def routed(self, layer: int, phase: Phase, moe_input: np.ndarray, chosen: np.ndarray,
               resident: Container[str] = frozenset()) -> list[str]:
        np.add.at(self.current[layer], chosen.reshape(-1), 1.0)
        matched = self.matched()
        num_layers, num_experts = self.context.num_layers, self.context.num_experts
        ranked: list[tuple[float, str]] = []
        for later in range(num_layers):
            # distance ahead in decode order: the layers after this one come next, then (next token) the first
            ahead = (later - layer) % num_layers
            discount = 1.0 - ahead / num_layers
            for e in range(num_experts):
                name = self.context.name(later, e)
                value = float(matched[later, e]) * discount
                self.policy.scores[name] = value
                if 1 <= ahead <= self.lookahead:
                    ranked.append((value, name))
        ranked.sort(key=lambda item: -item[0])
        # as many prefetches as the budget holds per layer, for the layers looked ahead at
        count = max(1, self.context.budget_experts // num_layers) * self.lookahead
        return [name for _value, name in ranked[:count] if name not in resident]


LOOKAHEAD_LAYERS = 2
"""How many layers ahead moe-infinity prefetches."""

STICKY_BONUS = 0.25
"""Added to a next-layer expert's predicted probability when that layer used it last token."""

FETCH_MARGIN = 0.25
"""How much likelier (in predicted probability) a guess must be than the resident it displaces."""


DecodePrefetch = Literal["auto", "on", "off"]
DECODE_PREFETCH: tuple[DecodePrefetch, ...] = ("auto", "on", "off")


def decode_prefetch_for(setting: DecodePrefetch, device: str) -> bool:
    """Whether the ``edgecoe`` schedule prefetches in decode on ``device``.

    ``auto`` turns it on only for CUDA devices: there a host-to-device copy runs on the
    copy engine beside the layer's kernels, so a load ahead is hidden. On a CPU (or a
    unified-memory device) the load is a memory copy on the cores and the memory bus the
    layer's compute uses, and a decode layer runs in a few milliseconds: on moe-large
    with 2 cores the prefetches slowed every load (5.6 to 8 ms, copies contending with
    compute) and each wrong guess cost a full load, so decode was slower with prefetch
    in page-cache and device-memory mode alike (``benchmarks/moe_schedules.py`` measures
    both as ``edgecoe`` and ``edgecoe+prefetch``).

    Raises:
        ValueError: a setting other than auto, on or off.
    """
    if setting not in DECODE_PREFETCH:
        raise ValueError(f"decode prefetch {setting!r}: choose auto, on or off")
    if setting == "auto":
        return device.startswith("cuda")
    return setting == "on"


ScheduleFactory = Callable[[ScheduleContext], ExpertSchedule]

_REGISTRY: dict[str, ScheduleFactory] = {
    "on-demand": OnDemand,
    "mixtral-offload": MixtralOffload,
    "moe-infinity": MoeInfinity,
    "edgecoe": PhaseAware,
}

SCHEDULES = tuple(_REGISTRY)


def create_schedule(name: str, context: ScheduleContext) -> ExpertSchedule:
    """Build a schedule by name.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown MoE schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return factory(context)
