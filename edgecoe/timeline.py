"""Chrome / Perfetto timelines of loads, evictions and batches per executor.

Events are recorded as plain tuples while a run goes on and converted to the
Trace Event Format (``chrome://tracing``, ui.perfetto.dev) at the end.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Timeline:
    """Thread-safe recorder. Times in milliseconds from the run's start."""

    events: list[tuple[str, str, int, float, float]] = field(default_factory=list)  # (kind, expert, tid, start, dur)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def span(self, kind: str, expert: str, executor: int, start_ms: float, duration_ms: float) -> None:
        with self._lock:
            self.events.append((kind, expert, executor, start_ms, duration_ms))

    def instant(self, kind: str, expert: str, executor: int, at_ms: float) -> None:
        self.span(kind, expert, executor, at_ms, 0.0)


def to_trace_events(timelines: dict[str, Timeline]) -> dict[str, object]:
    """One process per bench entry, one thread per executor (tid -1: the cache)."""
    out: list[dict[str, object]] = []
    for pid, (entry, timeline) in enumerate(timelines.items(), start=1):
        out.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": entry}})
        tids = sorted({e[2] for e in timeline.events})
        for tid in tids:
            label = "cache" if tid < 0 else f"executor {tid}"
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}})
        for kind, expert, tid, start, duration in timeline.events:
            event: dict[str, object] = {"name": f"{kind} {expert}", "cat": kind, "pid": pid, "tid": tid,
                                        "ts": round(start * 1e3, 1)}
            if duration > 0:
                event.update(ph="X", dur=round(duration * 1e3, 1))
            else:
                event.update(ph="i", s="t")
            out.append(event)
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def write_trace(timelines: dict[str, Timeline], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_trace_events(timelines)))
    return path
