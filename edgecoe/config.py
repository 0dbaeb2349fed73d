"""Runtime configuration: one frozen object, validated, built from CLI flags in one place."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from edgecoe.errors import InvalidInputError

if TYPE_CHECKING:
    from edgecoe.sched.presets import Preset


@dataclass(frozen=True)
class RuntimeConfig:
    """How a runtime serves a package.

    Attributes:
        policy: preset name (samba, samba-fifo, samba-parallel, coserve, edgecoe).
        budget: memory for resident experts on every processor: bytes (int or
            "800000000"), or a share of all experts' measured resident footprint ("25%").
            None: the device profile's budgets.
        num_executors: executors per processor; None: the profile's (presets
            that are not parallel use 1).
        max_delay_ms: the edgecoe scheduler's starvation bound: a group whose
            oldest task waited past it, and past twice the mean wait of the
            queue's oldest tasks, runs before the others; past four times it,
            next outright. None: no bound.
            NOTE: 5 s by default. Simulated on pcb (3,000 requests, seeds 22
            and 23 held out): from 30 s to 5 s p99 at 90 req/s fell from
            11-14 s to 6.2-6.5 s (coserve: 7.2-7.8 s) at the same throughput;
            under overload (250 req/s) nothing changed. At 2 s the bound
            turns group order into oldest-first under load and costs
            throughput (-25 % at 250 req/s): it guards against starvation, it
            is not a latency target.
        slo_ms: a latency objective the report measures goodput against
            (requests finished within it per second); None: not measured.
        allow_cpu_fallback: run a processor's experts on CPU when its provider
            is missing (with a warning) instead of failing.
        use_optimized: load ORT-optimized copies where the package has them.
        intra_op_threads: ORT threads per executor; None: cores / executors.
        verify: package verification at load: "full" (checksums, ONNX I/O) or "quick".
        eviction: override the preset's eviction policy (lru, fifo, coserve, belady).
        scheduler: override the preset's scheduler (fcfs, round-robin, coserve, edgecoe).
        prefetch: override whether the preset prefetches subsequent experts
            (default for edgecoe: on GPU/CoreML processors only, see Preset).
        preload: override whether the preset preloads by usage probability.
        optimized_cache: on CPU, keep a per-machine cache of fully optimized
            models so a switch skips graph optimization (see
            :mod:`edgecoe.optcache`; 4-7x faster loads on pcb).
        cache_dir: where that cache lives; None: ``$EDGECOE_CACHE_DIR`` or
            ``~/.cache/edgecoe``.
        quarantine_after: consecutive failures (load or run) after which an
            expert is quarantined: its requests fail at once, naming the cause,
            instead of paying a load that fails again. 0: never quarantine.
        quarantine_s: how long a quarantine lasts; then one attempt is let
            through, and a failure quarantines the expert again at once.
        max_queued_requests: requests in flight (submitted, not yet ended) at
            most; ``submit`` beyond it raises :class:`QueueFullError` (or waits,
            with ``wait_s``). Bounds what a burst of requests can hold.
        max_queued_input_bytes: bytes the requests in flight hold at most: their
            inputs (copied at submit) plus 8 KiB each of bookkeeping. None: 5 %
            of the device's host memory (the profile's, else this machine's),
            between 64 MiB and 1 GiB.
        max_streams: streams of a stateful package whose state is held at most;
            beyond it the least recently used stream's state is dropped (its
            next request without ``stream_start`` is refused, naming it).
        max_state_bytes: bytes of stream state held at most (same rule).
        max_fanout: items one ``prepare`` transform may make from one item
            (more fails the request): bounds what one request can queue.
    """

    policy: str = "edgecoe"
    budget: str | int | None = None
    num_executors: int | None = None
    max_delay_ms: float | None = 5000.0
    slo_ms: float | None = None
    allow_cpu_fallback: bool = False
    use_optimized: bool = True
    intra_op_threads: int | None = None
    verify: Literal["full", "quick"] = "quick"
    eviction: str | None = None
    scheduler: str | None = None
    prefetch: bool | None = None
    preload: bool | None = None
    optimized_cache: bool = True
    cache_dir: str | None = None
    quarantine_after: int = 3
    quarantine_s: float = 60.0
    max_queued_requests: int = 10_000
    max_queued_input_bytes: int | None = None
    max_streams: int = 1024
    max_state_bytes: int = 64 * 1024 * 1024
    max_fanout: int = 1024

    def validate(self) -> None:
        from edgecoe.cache import EVICTION_POLICIES
        from edgecoe.sched import get_preset

        try:
            get_preset(self.policy)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        if self.num_executors is not None and not 1 <= self.num_executors <= 64:
            raise InvalidInputError(f"num_executors={self.num_executors} must be in 1..64")
        if self.max_delay_ms is not None and not self.max_delay_ms > 0:
            raise InvalidInputError(f"max_delay_ms={self.max_delay_ms} must be > 0")
        if self.slo_ms is not None and not (self.slo_ms > 0 and math.isfinite(self.slo_ms)):
            raise InvalidInputError(f"slo_ms={self.slo_ms} must be a finite number > 0")
        if self.intra_op_threads is not None and self.intra_op_threads < 0:
            raise InvalidInputError(f"intra_op_threads={self.intra_op_threads} must be >= 0")
        if self.verify not in ("full", "quick"):
            raise InvalidInputError(f"verify={self.verify!r}; expected 'full' or 'quick'")
        if self.eviction is not None and self.eviction not in EVICTION_POLICIES:
            raise InvalidInputError(f"eviction={self.eviction!r}; valid: {', '.join(EVICTION_POLICIES)}")
        from edgecoe.sched import SCHEDULERS

        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InvalidInputError(f"scheduler={self.scheduler!r}; valid: {', '.join(SCHEDULERS)}")
        if self.quarantine_after < 0:
            raise InvalidInputError(f"quarantine_after={self.quarantine_after} must be >= 0 (0: never)")
        if not self.quarantine_s > 0:
            raise InvalidInputError(f"quarantine_s={self.quarantine_s} must be > 0")
        if not 1 <= self.max_queued_requests <= 10_000_000:
            raise InvalidInputError(f"max_queued_requests={self.max_queued_requests} must be in 1..10000000")
        if self.max_queued_input_bytes is not None and not self.max_queued_input_bytes > 0:
            raise InvalidInputError(f"max_queued_input_bytes={self.max_queued_input_bytes} must be > 0")
        for name in ("max_streams", "max_state_bytes", "max_fanout"):
            if not 1 <= getattr(self, name) <= 1 << 40:
                raise InvalidInputError(f"{name}={getattr(self, name)} must be >= 1")
        if self.budget is not None:
            parse_budget(self.budget, total_bytes=1 << 40)  # syntax check; the share is resolved later

    def resolved_preset(self) -> Preset:
        """The preset with this config's overrides applied."""
        from dataclasses import replace

        from edgecoe.sched import get_preset

        preset = get_preset(self.policy)
        changes: dict[str, Any] = {k: v for k, v in (("scheduler", self.scheduler), ("eviction", self.eviction),
                                     ("prefetch", self.prefetch), ("preload", self.preload)) if v is not None}
        return replace(preset, **changes) if changes else preset

    def threads_per_executor(self, num_executors: int) -> int:
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // num_executors)


_MAX_BUDGET_BYTES = 1 << 60  # an exabyte: any larger number is a typo or an attack


def parse_budget(value: str | int, *, total_bytes: int) -> int:
    """Bytes from ``800000000``, ``"800MB"``, ``"1.5GiB"`` or ``"25%"`` (of ``total_bytes``).

    Raises:
        InvalidInputError: naming the value and the accepted forms.
    """
    if isinstance(value, int):
        result = value
    else:
        text = value.strip()
        units = {"%": None, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 1024.0, "MIB": 1024.0**2, "GIB": 1024.0**3, "B": 1.0}
        number, scale = text, 1.0
        for suffix, factor in units.items():
            if text.upper().endswith(suffix):
                number = text[: -len(suffix)].strip()
                scale = 1.0 if factor is None else factor  # a share is computed apart, exactly
                break
        try:
            if text.endswith("%"):
                # NOTE: a share in exact decimal arithmetic: in floats "100%" of some totals came
                # out one byte short, and the last expert no longer fitted the preload.
                share = Decimal(number)
                if not share.is_finite():
                    raise ValueError(number)
                amount = float(int(share * total_bytes / 100))
            else:
                amount = float(number) * scale
        except (ValueError, ArithmeticError):
            raise InvalidInputError(
                f"budget {value!r}: expected bytes (800000000), a size (800MB, 1.5GiB) or a share (25%)") from None
        if not math.isfinite(amount) or amount > _MAX_BUDGET_BYTES:
            raise InvalidInputError(f"budget {value!r} is not a finite size of at most {_MAX_BUDGET_BYTES} bytes")
        result = int(amount)
    if isinstance(value, bool) or result > _MAX_BUDGET_BYTES:
        raise InvalidInputError(f"budget {value!r} is not a size of at most {_MAX_BUDGET_BYTES} bytes")
    if result <= 0:
        raise InvalidInputError(f"budget {value!r} must be more than 0 bytes")
    return result
