"""The MoE engine: resident dense parts, one expert cache, and a forward step over a KV cache.

Built once from (package, config, loader) — the generator, the bench and the
tests drive it. Dense parts (embeddings, each layer's attention and router,
the LM head) are held for the whole run; routed experts go through the same
:class:`~edgecoe.cache.ExpertCache` CoE experts use, loaded by a
:class:`~edgecoe.moe.weights.WeightLoader` within the expert budget.

One step, per layer::

    dense layer (ONNX)  -> residual, moe_input, router_logits, present K/V
    route (numpy)       -> each token's top-k experts and weights
    for each chosen expert, in ascending index (as transformers adds them):
        acquire (pin; load on a miss) -> run on its rows -> release
    hidden = residual + sum of weighted expert outputs
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgecoe.cache import ExpertCache
from edgecoe.config import parse_budget
from edgecoe.errors import InvalidInputError, PackageError, Problem, ProviderUnavailableError, SessionError
from edgecoe.loaders import ExpertLoader, LoadedExpert
from edgecoe.moe.manifest import MoeManifest, SlotNames
from edgecoe.moe.package import MoePackage
from edgecoe.moe.predictors import package_activations, package_predictor
from edgecoe.moe.prefetch import Prefetcher
from edgecoe.moe.schedules import (
    DECODE_PREFETCH,
    SCHEDULES,
    DecodePrefetch,
    Phase,
    ScheduleContext,
    create_schedule,
    decode_prefetch_for,
)
from edgecoe.moe.timeline import Timeline
from edgecoe.moe.weights import ExpertRunner, ExpertWeights, Placement, WeightLoader, read_exact
from edgecoe.package.manifest import FileRecord
from edgecoe.providers import available_providers, create_session

if TYPE_CHECKING:
    from edgecoe.devicemem import DeviceMemory

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class MoeConfig:
    """How an MoE package runs. CLI flags become this in one place.

    Attributes:
        budget: bytes the resident routed experts may use: bytes, a size (``"800MB"``)
            or a share of all experts (``"25%"``); None holds every expert.
        policy: expert schedule (:data:`~edgecoe.moe.schedules.SCHEDULES`): what is fetched ahead,
            kept and dropped, and the eviction order.
        device: ``cpu``, ``cuda:N`` or ``coreml``; where the graphs run (and expert weights live).
        intra_op_threads: ONNX Runtime threads per session; 0 lets ORT decide.
        preload: fill the budget with experts at start (layer by layer, never evicting), so
            the first tokens do not wait for loads; with a 100 % budget every expert is resident.
        variant: which fine-tuned variant of a consolidated package to serve first (None: its first);
            :meth:`MoeModel.use_variant` switches later.
        decode_prefetch: whether the ``edgecoe`` schedule fetches predicted experts ahead in decode:
            ``auto`` (on CUDA devices only; :func:`~edgecoe.moe.schedules.decode_prefetch_for` says why),
            ``on`` or ``off``.
    """

    budget: str | int | None = None
    policy: str = "on-demand"
    device: str = "cpu"
    intra_op_threads: int = 0
    preload: bool = True
    decode_prefetch: DecodePrefetch = "auto"
    variant: str | None = None

    def validate(self) -> None:
        if self.policy not in SCHEDULES:
            raise InvalidInputError(f"policy {self.policy!r}: MoE packages take {', '.join(SCHEDULES)}")
        if self.device != "coreml":
            Placement(self.device)  # raises on a malformed device
        if self.intra_op_threads < 0:
            raise InvalidInputError(f"intra_op_threads={self.intra_op_threads} must be >= 0")
        if self.decode_prefetch not in DECODE_PREFETCH:
            raise InvalidInputError(f"decode_prefetch={self.decode_prefetch!r}: choose {', '.join(DECODE_PREFETCH)}")


def providers_for(device: str, *, available: list[str] | None = None) -> list[tuple[str, dict[str, str]]]:
    """ONNX Runtime providers for ``device`` (CPU after any accelerator, for nodes it does not take).

    Raises:
        ProviderUnavailableError: the installed onnxruntime lacks the device's provider.
    """
    available = available_providers() if available is None else available
    kind, _, index = device.partition(":")
    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "coreml": "CoreMLExecutionProvider"}
    provider = wanted.get(kind)
    if provider is None:
        raise InvalidInputError(f"device {device!r} is not cpu, cuda:N or coreml")
    if provider not in available:
        raise ProviderUnavailableError(f"device {device} needs {provider}, but this onnxruntime offers {available}")
    if kind == "cpu":
        return [(provider, {})]
    options = {"device_id": index or "0"} if kind == "cuda" else {}
    return [(provider, options), ("CPUExecutionProvider", {})]


def placement_for(device: str) -> Placement:
    """Where expert weights live for ``device``: on a CUDA device, else in host memory."""
    return Placement(device) if device.startswith("cuda") else Placement("cpu")


Observer = Callable[[int, Phase, np.ndarray, np.ndarray], None]
"""Called with (layer, phase, routed-expert input ``[N, H]``, chosen experts ``[N, top_k]``) at each routing."""


@dataclass
class LayerCache:
    """One layer's keys and values, ``[B, KV, T, D]`` each."""

    key: np.ndarray
    value: np.ndarray


@dataclass
class StepStats:
    """What the expert path did, summed over steps (the generator reports it)."""

    num_expert_runs: int = 0
    expert_ms: float = 0.0
    dense_ms: float = 0.0
    experts_used: dict[str, int] = field(default_factory=dict)  # expert -> tokens routed to it


def route(logits: np.ndarray, *, top_k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``top_k`` experts (best first) and their routing weights, as transformers computes them.

    Softmax over all experts in float32, the top ``top_k`` probabilities, then
    (``normalize``) divided by their sum.

    Returns:
        (experts ``[N, top_k]`` int64, weights ``[N, top_k]`` float32)
    """
    shifted = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=-1, keepdims=True)
    # stable sort of -p: equal probabilities keep the lower index first, as torch.topk does on CPU
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(probs, order, axis=-1)
    if normalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return order.astype(np.int64), weights.astype(np.float32)


PART_PREFIX = "part:"
"""Cache name prefix of a variant's non-expert files (``part:variants/code/layer_000.onnx``): one entry per
file, so a file several variants share (embeddings and head of fine-tunes that froze them) is held once."""


class MoeModel:
    """The serving parts of one MoE package; see the module docstring.

    Args:
        package: a validated MoE package.
        config: budget, policy, device, threads.
        loader: makes experts resident (default: a :class:`WeightLoader` for the device).

    Raises:
        InvalidInputError: a bad budget (or one below a single expert), policy or device.
        SessionError: ONNX Runtime refused a dense model.
    """

    def __init__(self, package: MoePackage, config: MoeConfig | None = None, *,
                 loader: ExpertLoader[ExpertWeights] | None = None) -> None:
        self.config = config or MoeConfig()
        self.config.validate()
        self.package = package
        manifest: MoeManifest = package.manifest
        self.manifest = manifest
        self.shape = manifest.model
        providers = providers_for(self.config.device)
        placement = placement_for(self.config.device)
        self.loader: ExpertLoader[ExpertWeights] = loader or WeightLoader(package, placement=placement)
        threads = self.config.intra_op_threads
        # NOTE: spinning off. Every layer has a session and each session its own thread pool; a pool
        # that spins after its run steals the cores the next layer's pool needs. On moe-large
        # (2 cores, measured while tuning) decode went from 11 to 25 tokens/s with spinning off, and
        # was 3 with it on and 2 threads per session.
        session_config = {"session.intra_op.allow_spinning": "0"}
        self._providers, self._threads, self._session_config = providers, threads, session_config
        try:
            variant = manifest.variant(self.config.variant)
        except KeyError as exc:
            raise InvalidInputError(str(exc.args[0])) from None
        self.variant: str | None = variant.name if variant is not None else None
        self.names = SlotNames(variant.experts if variant is not None else None)
        self.variant_switches = 0
        self.variant_switch_ms = 0.0
        # A single model's non-expert parts load once, outside the budget. A variant package's are
        # cache entries, one per file (PART_PREFIX + path), under the same budget as the experts: a
        # variant switch loads only the files the new variant does not share with what is resident,
        # and a variant not served lately can be evicted.
        self._parts = {v.name: [v.embed.file, *v.dense, v.head] for v in manifest.variants}
        self._part_records = {f.path: f for files in self._parts.values() for f in files}
        self._dense_bytes = {v: sum(f.bytes for f in files) for v, files in self._parts.items()}
        self._pinned: list[str] = []
        if variant is None:
            self.embed = self._open_part(manifest.embed.file)
            self.dense = [self._open_part(layer.dense) for layer in manifest.layers]
            self.head = self._open_part(manifest.head)
        self.runner = ExpertRunner(manifest.expert_format, hidden_size=self.shape.hidden_size,
                                   intermediate_size=manifest.moe.intermediate_size, providers=providers,
                                   placement=placement, intra_op_threads=threads, session_config=session_config)
        # a variant package's budget also holds its non-expert files: a share is of both together
        total = manifest.total_expert_bytes + sum(f.bytes for f in self._part_records.values())
        budget = total if self.config.budget is None else parse_budget(self.config.budget, total_bytes=total)
        least = manifest.expert_bytes + max(self._dense_bytes.values(), default=0)
        if budget < least:
            raise InvalidInputError(f"expert budget {budget} bytes is below one expert"
                                    f"{' and one variant' if self._dense_bytes else ''} ({least} bytes); raise --budget")
        try:
            self.schedule_context = ScheduleContext(
                num_layers=len(manifest.layers), num_experts=manifest.moe.num_experts, top_k=manifest.moe.top_k,
                budget_experts=(budget - max(self._dense_bytes.values(), default=0)) // manifest.expert_bytes,
                load_routers=self._routers, predictor=package_predictor(package),
                activations=package_activations(package), name=self.names,
                decode_prefetch=decode_prefetch_for(self.config.decode_prefetch, self.config.device))
            self.schedule = create_schedule(self.config.policy, self.schedule_context)
        except ValueError as exc:
            raise InvalidInputError(f"{package.root}: {exc}") from None
        self.cache: ExpertCache[LoadedExpert[Any]] = ExpertCache(
            budget_bytes=budget, loader=self._load, unloader=self._unload, size_of=self._size_of,
            policy=self.schedule.eviction)
        self.prefetcher = Prefetcher(self.cache)
        self.stats = StepStats()
        self.observer: Observer | None = None  # sees every routing decision (traces)
        self.timeline: Timeline | None = None  # records loads and compute when set
        self.last_prefill_peak_bytes = 0  # resident expert bytes at most during the last prefill
        if variant is not None:
            self._serve(variant.name)
        if self.config.preload:
            self.preload()
        self._inv_freq = 1.0 / (np.float32(self.shape.rope_theta) ** (
            np.arange(0, self.shape.head_dim, 2, dtype=np.float32) / np.float32(self.shape.head_dim)))

    def _open_part(self, record: FileRecord) -> Any:
        """One non-expert file ready to run: the embedding table (raw float32) or an ONNX Runtime session."""
        path = self.package.path(record)
        if record.path.endswith(".onnx"):
            return create_session(path, providers=self._providers, intra_op_threads=self._threads,
                                  session_config=self._session_config)
        return read_exact(path, record.bytes).view(np.float32).reshape(self.manifest.embed.shape)

    def _load(self, name: str) -> tuple[LoadedExpert[Any], int]:
        started = time.perf_counter()
        if name.startswith(PART_PREFIX):
            record = self._part_records[name[len(PART_PREFIX):]]
            loaded: LoadedExpert[Any] = LoadedExpert(self._open_part(record), record.bytes,
                                                     (time.perf_counter() - started) * 1e3, True, "disk")
        else:
            loaded = self.loader.load(name, self.config.device)
        if self.timeline is not None:
            self.timeline.add(f"load {name}", "load", started, time.perf_counter())
        return loaded, loaded.num_bytes

    def _unload(self, name: str, loaded: LoadedExpert[Any]) -> None:
        if not name.startswith(PART_PREFIX):  # a part's table or session goes with the last reference
            self.loader.unload(name, loaded)

    def _size_of(self, name: str) -> int:
        if name.startswith(PART_PREFIX):
            return self._part_records[name[len(PART_PREFIX):]].bytes
        return self.loader.footprint_bytes(name)

    def _serve(self, variant: str) -> None:
        """Pin ``variant``'s non-expert parts in the cache (loading them if evicted) and run with them."""
        names = [PART_PREFIX + f.path for f in self._parts[variant]]
        handles = []
        for name in names:
            acquired = self.cache.acquire(name, protect=frozenset(names))
            assert acquired is not None, "acquire with wait=True always returns the entry"
            handles.append(acquired.handle.handle)
        for name in self._pinned:
            self.cache.release(name)
        self._pinned = names
        self.embed, self.dense, self.head = handles[0], handles[1:-1], handles[-1]

    def _routers(self) -> list[np.ndarray]:
        variant = self.manifest.variant(self.variant) if self.manifest.variants else None
        files = variant.dense if variant is not None else [layer.dense for layer in self.manifest.layers]
        return [router_weights(self.package.path(f)) for f in files]

    def use_variant(self, name: str) -> float:
        """Serve variant ``name`` of a consolidated package from now on; returns the milliseconds the switch took.

        Its non-expert parts (embeddings, attention, norms, routers, head) replace the current
        ones; its routed experts are looked up through its own map, so the experts it shares with
        the previous variant stay resident and only the ones it does not share load when routed.

        Raises:
            InvalidInputError: the package has no such variant.
        """
        if name == self.variant:
            return 0.0
        try:
            variant = self.manifest.variant(name)
        except KeyError as exc:
            raise InvalidInputError(str(exc.args[0])) from None
        assert variant is not None
        started = time.perf_counter()
        self.prefetcher.cancel()
        self.prefetcher.wait_idle()  # the last variant's guesses are no use to this one
        self._serve(variant.name)
        self.variant = variant.name
        self.names.maps = variant.experts
        self.schedule_context.forget_routers()
        ended = time.perf_counter()
        elapsed = (ended - started) * 1e3
        self.variant_switches += 1
        self.variant_switch_ms += elapsed
        return elapsed

    def preload(self) -> list[str]:
        """Load the served variant's experts into free room, layer by layer, never evicting; returns those loaded.

        NOTE: layer-major order, not by usage: a package carries no routing statistics yet.
        """
        return self.cache.preload([self.names(layer, e) for layer in range(len(self.manifest.layers))
                                   for e in range(self.manifest.moe.num_experts)])

    # -- sequences ------------------------------------------------------------------
    def empty_cache(self, batch: int) -> list[LayerCache]:
        """A KV cache holding nothing, for ``batch`` sequences."""
        s = self.shape
        empty = np.zeros((batch, s.num_kv_heads, 0, s.head_dim), np.float32)
        return [LayerCache(empty, empty) for _ in range(s.num_layers)]

    def rotary(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin tables ``[B, S, D]`` for ``positions [B, S]`` (float32, as transformers computes them)."""
        freqs = positions.astype(np.float32)[..., None] * self._inv_freq
        angles = np.concatenate([freqs, freqs], axis=-1)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

    def attention_bias(self, mask: np.ndarray, num_new: int) -> np.ndarray:
        """The additive mask ``[B, 1, S, T]`` for the last ``num_new`` of ``mask [B, T]``'s slots.

        A query may see earlier slots holding real tokens (``mask`` 1), within the sliding window.
        """
        total = mask.shape[1]
        query = np.arange(total - num_new, total)[:, None]
        key = np.arange(total)[None, :]
        allowed = (key <= query)[None] & (mask[:, None, :] > 0)
        window = self.shape.sliding_window
        if window is not None:
            allowed &= (query - key < window)[None]
        bias = np.where(allowed, np.float32(0.0), np.finfo(np.float32).min).astype(np.float32)
        return bias[:, None]

    def forward(self, tokens: np.ndarray, positions: np.ndarray, mask: np.ndarray, kv: list[LayerCache], *,
                all_logits: bool = False) -> np.ndarray:
        """Run ``tokens [B, S]`` at ``positions`` through the model, appending to ``kv`` in place.

        Args:
            mask: ``[B, T]``, 1 for slots holding real tokens, for everything in ``kv`` plus these tokens.
            all_logits: return logits for every position (``[B, S, V]``), not only the last (``[B, V]``).
        """
        hidden = self.embed[tokens]
        cos, sin = self.rotary(positions)
        bias = self.attention_bias(mask, tokens.shape[1])
        phase: Phase = "prefill" if tokens.shape[1] > 1 else "decode"
        if phase == "prefill":
            earlier_peak = self._start_prefill()
        for layer, session in enumerate(self.dense):
            ahead = self.schedule.layer_start(layer, phase)
            if ahead:
                self.prefetcher.submit(ahead)
            started = time.perf_counter()
            try:
                residual, moe_input, logits, key, value = session.run(None, {
                    "hidden": hidden, "cos": cos, "sin": sin, "attn_bias": bias,
                    "past_key": kv[layer].key, "past_value": kv[layer].value})
            except Exception as exc:  # ORT's own exception types: wrap at the session boundary
                raise SessionError(f"dense layer {layer} failed: {exc}") from exc
            ended = time.perf_counter()
            self.stats.dense_ms += (ended - started) * 1e3
            if self.timeline is not None:
                self.timeline.add(f"dense L{layer:03d} ({phase})", "dense", started, ended)
            kv[layer] = LayerCache(key, value)
            batch, seq, width = moe_input.shape
            routed = self.experts(layer, moe_input.reshape(-1, width), logits.reshape(batch * seq, -1), phase=phase)
            hidden = residual + routed.reshape(batch, seq, width)
        if phase == "prefill":
            self.last_prefill_peak_bytes = self.cache.stats.peak_bytes
            self.cache.stats.peak_bytes = max(earlier_peak, self.last_prefill_peak_bytes)
        last = hidden if all_logits else hidden[:, -1:]
        started = time.perf_counter()
        try:
            out: np.ndarray = self.head.run(None, {"hidden": np.ascontiguousarray(last)})[0]
        except Exception as exc:
            raise SessionError(f"LM head failed: {exc}") from exc
        if self.timeline is not None:
            self.timeline.add("head", "head", started, time.perf_counter())
        return out if all_logits else out[:, -1]

    def _start_prefill(self) -> int:
        """Drop what the schedule wants gone before a prefill; start counting the prefill's peak.

        Returns the cache's peak so far (the prefill's peak is measured from here, then folded back in).
        """
        drop = self.schedule.prefill_start(self.cache.resident())
        if drop:
            self.prefetcher.cancel()
            self.prefetcher.wait_idle()  # a load in flight would land after the drop
            self.cache.drop(drop)
        earlier = self.cache.stats.peak_bytes
        self.cache.stats.peak_bytes = self.cache.used_bytes
        return earlier

    def experts(self, layer: int, x: np.ndarray, logits: np.ndarray, *, phase: Phase = "decode") -> np.ndarray:
        """The routed experts' weighted sum for rows ``x [N, H]`` with router ``logits [N, E]``.

        The schedule's prefetch for what comes next is submitted first, protecting this
        layer's chosen experts; each chosen expert is then pinned, run, unpinned, and dropped
        if the schedule says so.
        """
        moe = self.manifest.moe
        chosen, weights = route(logits, top_k=moe.top_k, normalize=moe.norm_topk_prob)
        out = np.zeros_like(x)
        indices = np.unique(chosen)
        names = [self.names(layer, int(i)) for i in indices]
        if self.observer is not None:
            self.observer(layer, phase, x, chosen)
        ahead = self.schedule.routed(layer, phase, x, chosen, self.cache)
        if ahead:
            self.prefetcher.submit(ahead, protect=frozenset(names))
        unchosen = self.schedule.unchosen(layer, phase, chosen)
        if unchosen:
            self.prefetcher.discard(set(unchosen))
            self.cache.drop(unchosen)
        for index, name in zip(indices, names, strict=True):
            rows, slot = np.nonzero(chosen == index)
            started = time.perf_counter()
            acquired = self.cache.acquire(name)
            assert acquired is not None, "acquire with wait=True always returns the expert"
            computing = time.perf_counter()  # the timeline shows the run apart from any wait for its load
            try:
                y = self.runner.run(acquired.handle.handle, x[rows], weights[rows, slot][:, None])
            finally:
                self.cache.release(name)
            # rows are unique per expert (a token picks an expert once), so plain indexing adds exactly
            out[rows] += y
            ended = time.perf_counter()
            self.stats.expert_ms += (ended - started) * 1e3
            if self.timeline is not None:
                self.timeline.add(f"expert {name} ({len(rows)} rows)", "expert", computing, ended)
            self.stats.num_expert_runs += 1
            self.stats.experts_used[name] = self.stats.experts_used.get(name, 0) + len(rows)
            if self.schedule.ran(layer, phase, name):
                self.prefetcher.discard({name})  # still queued if this demand load overtook the loader thread
                self.cache.drop([name])
        return out

    def close(self) -> None:
        """Stop the prefetcher and unload every resident expert (and variant)."""
        self.prefetcher.close()
        for name in self._pinned:
            self.cache.release(name)
        self._pinned = []
        self.cache.clear()


ROUTER_INITIALIZER = "router.weight_t"


def router_weights(path: Path) -> np.ndarray:
    """A dense layer's router weights ``[hidden, num_experts]``, from its ONNX model's
    ``router.weight_t`` initializer (schedules apply them to guess the next layer's experts).

    Raises:
        PackageError: the model has no such initializer.
    """
    from onnx import numpy_helper

    from edgecoe.package.onnxmodel import read_model

    for tensor in read_model(path).graph.initializer:
        if tensor.name == ROUTER_INITIALIZER:
            return np.ascontiguousarray(numpy_helper.to_array(tensor), dtype=np.float32)
    raise PackageError(path.parent, [Problem(path.name, f"has no {ROUTER_INITIALIZER!r} initializer (the router)")])


@contextmanager
def moe_under_device_memory(package: MoePackage, config: MoeConfig,
                            device_memory: int | Literal["auto"]) -> Iterator[tuple[MoeModel, DeviceMemory]]:
    """An :class:`MoeModel` serving under a device memory limit that counts the page cache.

    The model (dense parts, sessions) is built first; then every expert file's cached pages are
    dropped and the process moves under the limit (see :func:`edgecoe.devicemem.limit_device_memory`),
    so each expert load reads storage as on a device whose memory holds only the budget. ``auto``:
    the expert budget plus what the process holds once the dense parts are loaded, plus
    :data:`~edgecoe.devicemem.IN_FLIGHT_ALLOWANCE_BYTES`. Preloading happens under the limit.

    Raises:
        InvalidInputError: the limit is below what the process already holds.
    """
    from edgecoe.devicemem import IN_FLIGHT_ALLOWANCE_BYTES, limit_device_memory
    from edgecoe.memory import rss_bytes

    model = MoeModel(package, replace(config, preload=False))
    try:
        limit = (device_memory if isinstance(device_memory, int)
                 else model.cache.budget_bytes + rss_bytes() + IN_FLIGHT_ALLOWANCE_BYTES)
        weights = model.loader
        paths = [package.path(f) for layer in package.manifest.layers for f in layer.experts]
        path_of = weights.path_of if isinstance(weights, WeightLoader) else None
        with limit_device_memory(limit, paths) as device:
            if path_of is not None:
                model.loader = device.wrap(weights, lambda expert: [path_of(expert)])
            if config.preload:
                model.preload()
            yield model, device
    finally:
        model.close()
