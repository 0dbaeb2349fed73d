"""Expert health: counts consecutive failures and quarantines an expert that
keeps failing, so its requests fail at once with the cause instead of each
paying for a load (or a run) that fails again.

Policy only, on a caller-supplied clock; the runtime asks it before running a
batch and tells it how each attempt went.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class ExpertHealthState:
    """One expert's record: consecutive failures, the last cause, and since when it is quarantined."""

    consecutive_failures: int = 0
    total_failures: int = 0
    last_cause: str = ""
    quarantined_at_s: float | None = None


class ExpertHealth:
    """Thread-safe failure bookkeeping.

    Args:
        threshold: consecutive failures that quarantine an expert (0: never).
        quarantine_s: how long a quarantine lasts. After it one attempt goes
            through ("half-open"); its failure quarantines again at once,
            its success clears the record.
    """

    def __init__(self, *, threshold: int, quarantine_s: float) -> None:
        self.threshold = threshold
        self.quarantine_s = quarantine_s
        self._state: dict[str, ExpertHealthState] = {}
        self._lock = threading.Lock()

    def blocked(self, expert: str, now_s: float) -> str | None:
        """Why requests for ``expert`` must fail now, or None when it may run.

        The first call after a quarantine expires lets one attempt through.
        """
        with self._lock:
            state = self._state.get(expert)
            if state is None or state.quarantined_at_s is None:
                return None
            if now_s - state.quarantined_at_s >= self.quarantine_s:
                state.quarantined_at_s = None  # half-open: the next failure re-quarantines
                state.consecutive_failures = max(0, self.threshold - 1)
                return None
            return (f"expert {expert!r} is quarantined after {state.consecutive_failures} consecutive "
                    f"failures (last: {state.last_cause}); retried {self.quarantine_s:g} s after it began")

    def failed(self, expert: str, cause: str, now_s: float) -> bool:
        """Record a failed attempt. Returns True when it quarantined the expert."""
        with self._lock:
            state = self._state.setdefault(expert, ExpertHealthState())
            state.consecutive_failures += 1
            state.total_failures += 1
            state.last_cause = cause
            if self.threshold and state.quarantined_at_s is None and state.consecutive_failures >= self.threshold:
                state.quarantined_at_s = now_s
                return True
            return False

    def succeeded(self, expert: str) -> None:
        """Record a successful attempt: the failure streak ends."""
        with self._lock:
            state = self._state.get(expert)
            if state is not None:
                state.consecutive_failures = 0
                state.quarantined_at_s = None

    def quarantined(self, now_s: float) -> dict[str, str]:
        """Experts quarantined now -> their last cause."""
        with self._lock:
            return {name: s.last_cause for name, s in sorted(self._state.items())
                    if s.quarantined_at_s is not None and now_s - s.quarantined_at_s < self.quarantine_s}

    def failures(self) -> dict[str, int]:
        """Experts that ever failed -> total failures."""
        with self._lock:
            return {name: s.total_failures for name, s in sorted(self._state.items()) if s.total_failures}
