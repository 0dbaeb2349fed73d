"""A timeline of what the MoE engine did when: loads, dense layers, expert runs, per thread.

Written as Chrome trace events (``chrome://tracing``, Perfetto): one row per
thread, so the loader thread's loads can be seen overlapping the main thread's
compute. Bounded: past :data:`MAX_EVENTS` spans, further ones are counted, not kept.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MAX_EVENTS = 1_000_000


@dataclass(frozen=True, slots=True)
class Span:
    name: str
    category: str  # "load", "dense", "expert", "head", "phase"
    thread: str
    start_us: float
    duration_us: float


class Timeline:
    """Collects spans from any thread; thread-safe."""

    def __init__(self, *, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self.spans: list[Span] = []
        self.num_dropped = 0
        self._origin = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, name: str, category: str, started: float, ended: float) -> None:
        """Record a span between two ``time.perf_counter()`` readings, on the calling thread's row."""
        span = Span(name, category, threading.current_thread().name, (started - self._origin) * 1e6,
                    (ended - started) * 1e6)
        with self._lock:
            if len(self.spans) >= self.max_events:
                self.num_dropped += 1
            else:
                self.spans.append(span)

    @contextmanager
    def span(self, name: str, category: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, category, started, time.perf_counter())

    def overlap_ms(self, category: str, other: str) -> float:
        """Milliseconds of ``category`` spans (loads) during which another thread ran an ``other`` span (compute)."""
        with self._lock:
            spans = list(self.spans)
        merged: dict[str, list[tuple[float, float]]] = {}  # thread -> its `other` spans, merged, in order
        for s in sorted((s for s in spans if s.category == other), key=lambda s: s.start_us):
            rows = merged.setdefault(s.thread, [])
            end = s.start_us + s.duration_us
            if rows and s.start_us <= rows[-1][1]:
                rows[-1] = (rows[-1][0], max(rows[-1][1], end))
            else:
                rows.append((s.start_us, end))
        total = 0.0
        for a in (s for s in spans if s.category == category):
            a_end = a.start_us + a.duration_us
            for thread, rows in merged.items():
                if thread == a.thread:
                    continue
                i = max(bisect.bisect_right(rows, (a.start_us, float("inf"))) - 1, 0)
                while i < len(rows) and rows[i][0] < a_end:
                    total += max(0.0, min(a_end, rows[i][1]) - max(a.start_us, rows[i][0]))
                    i += 1
        return total / 1e3

    def to_chrome(self) -> dict[str, object]:
        with self._lock:
            spans = list(self.spans)
        threads = {name: i for i, name in enumerate(dict.fromkeys(s.thread for s in spans))}
        events: list[dict[str, object]] = [
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": name}}
            for name, tid in threads.items()]
        events += [{"name": s.name, "cat": s.category, "ph": "X", "pid": 0, "tid": threads[s.thread],
                    "ts": round(s.start_us, 1), "dur": round(s.duration_us, 1)} for s in spans]
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"dropped_spans": self.num_dropped}}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_chrome()) + "\n", encoding="utf-8")
