"""Execution providers and the one place ONNX Runtime sessions are created.

Maps a profile's processors (``cpu``, ``cuda:N``, ``coreml``) to ORT execution
providers with their options, checks they are installed, and wraps ORT's
errors at the session boundary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from edgecoe.errors import InvalidInputError, ProviderUnavailableError, SessionError
from edgecoe.profile import ProcessorProfile

Optimization = Literal["none", "basic", "extended", "all"]

_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

PROVIDER_FOR_KIND = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}

# Provider option keys edgecoe knows each EP accepts. ORT ignores some unknown
# keys silently (docs/background.md), so a typo in a profile must fail here instead.
KNOWN_PROVIDER_OPTIONS = {
    "CPUExecutionProvider": frozenset(),
    "CUDAExecutionProvider": frozenset({
        "device_id", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search",
        "do_copy_in_default_stream", "cudnn_conv_use_max_workspace", "enable_cuda_graph",
        "tunable_op_enable", "use_tf32", "prefer_nhwc",
    }),
    "CoreMLExecutionProvider": frozenset({
        "ModelFormat", "MLComputeUnits", "ModelCacheDirectory", "RequireStaticInputShapes",
        "EnableOnSubgraphs", "SpecializationStrategy", "AllowLowPrecisionAccumulationOnGPU",
    }),
}

# Session config entries edgecoe sets (add_session_config_entry): checked likewise.
KNOWN_SESSION_CONFIG_KEYS = frozenset({
    "session.disable_prepacking",
    "session.use_env_allocators",
    "session.intra_op.allow_spinning",
    "session.inter_op.allow_spinning",
    "session.use_device_allocator_for_initializers",
})


def available_providers() -> list[str]:
    """Execution providers the installed onnxruntime offers, in its preference order."""
    return list(ort.get_available_providers())


@dataclass(frozen=True, slots=True)
class ProviderChoice:
    """The providers to create sessions with on one processor."""

    processor_id: str
    providers: list[tuple[str, dict[str, str]]]
    fell_back: bool  # the requested provider was missing and CPU is used instead


def default_provider_options(processor: ProcessorProfile) -> dict[str, str]:
    """Options edgecoe sets for a processor, merged with (and overridden by) the profile's."""
    kind = processor.kind
    options: dict[str, str] = {}
    if kind == "cuda":
        options = {
            "device_id": processor.id.split(":")[1],
            # gpu_mem_limit caps ORT's arena; experts' weights are budgeted by the cache.
            "gpu_mem_limit": str(processor.budget_bytes),
            # NOTE: kSameAsRequested avoids the arena's power-of-two growth,
            # which otherwise overshoots a tight budget.
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
        }
    elif kind == "coreml":
        options = {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL"}
    options.update({k: str(v) for k, v in processor.provider_options.items()})
    return options


def validate_provider_options(provider: str, options: dict[str, str], *, where: str) -> None:
    known = KNOWN_PROVIDER_OPTIONS.get(provider, frozenset())
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown {provider} option(s) {unknown}; known: {sorted(known) or 'none'}")


def validate_session_config(entries: dict[str, str]) -> None:
    unknown = sorted(set(entries) - KNOWN_SESSION_CONFIG_KEYS)
    if unknown:
        raise InvalidInputError(f"unknown ONNX Runtime session config key(s) {unknown}; known: {sorted(KNOWN_SESSION_CONFIG_KEYS)}")


def choose_providers(
    processor: ProcessorProfile, *, available: list[str] | None = None, allow_cpu_fallback: bool = False,
) -> ProviderChoice:
    """Providers for a processor, checking the installed onnxruntime offers them.

    Raises:
        ProviderUnavailableError: the provider is missing and fallback is not allowed.
    """
    available = available_providers() if available is None else available
    wanted = PROVIDER_FOR_KIND[processor.kind]
    options = default_provider_options(processor)
    validate_provider_options(wanted, options, where=f"processor {processor.id}")
    if wanted in available:
        providers = [(wanted, options)]
        if wanted != "CPUExecutionProvider":
            providers.append(("CPUExecutionProvider", {}))  # for nodes the EP does not take
        return ProviderChoice(processor.id, providers, fell_back=False)
    if not allow_cpu_fallback:
        hint = " (pip install 'edgecoe[cuda]')" if processor.kind == "cuda" else ""
        raise ProviderUnavailableError(
            f"processor {processor.id} needs {wanted}, but this onnxruntime offers {available}{hint}; "
            "allow CPU fallback to run there anyway")
    warnings.warn(f"processor {processor.id}: {wanted} unavailable, falling back to CPUExecutionProvider",
                  RuntimeWarning, stacklevel=2)
    return ProviderChoice(processor.id, [("CPUExecutionProvider", {})], fell_back=True)


def coreml_cache_options(options: dict[str, str], cache_root: Path, model_sha256: str) -> dict[str, str]:
    """CoreML compiled-model cache keyed by content hash (ORT does no staleness check)."""
    return {**options, "ModelCacheDirectory": str(cache_root / model_sha256[:32])}


def create_session(
    model_path: str | Path | bytes,
    *,
    providers: list[str] | list[tuple[str, dict[str, str]]] | None = None,
    optimization: Optimization = "all",
    save_optimized_to: str | Path | None = None,
    intra_op_threads: int = 0,
    session_config: dict[str, str] | None = None,
) -> ort.InferenceSession:
    """Create an inference session.

    Args:
        model_path: ONNX file (external data is found beside it), or the
            model's bytes (models without external data; ORT keeps them alive).
        providers: execution providers (names or (name, options)); default CPU only.
        optimization: graph optimization level.
        save_optimized_to: also write the optimized graph here (for loading
            later with ``optimization="none"``, which skips that work).
        intra_op_threads: ORT intra-op threads; 0 lets ORT decide.
        session_config: session config entries; keys are validated.

    Raises:
        SessionError: naming the model and ORT's reason.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.intra_op_num_threads = intra_op_threads
    if save_optimized_to is not None:
        options.optimized_model_filepath = str(save_optimized_to)
        if optimization == "all":
            # ORT warns that a level-"all" model is hardware specific: callers
            # (the optimized-model cache) key it by machine for that reason.
            options.log_severity_level = 3
    if session_config:
        validate_session_config(session_config)
        for key, value in session_config.items():
            options.add_session_config_entry(key, value)
    names = [p if isinstance(p, str) else p[0] for p in (providers or ["CPUExecutionProvider"])]
    provider_options = [{} if isinstance(p, str) else p[1] for p in (providers or ["CPUExecutionProvider"])]
    source = model_path if isinstance(model_path, bytes) else str(model_path)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=names,
                                    provider_options=provider_options)
    except Exception as exc:
        what = f"a {len(model_path)}-byte in-memory model" if isinstance(model_path, bytes) else model_path
        raise SessionError(f"onnxruntime cannot create a session for {what}: {exc}") from exc
