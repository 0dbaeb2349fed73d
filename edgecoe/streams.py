"""State held between a stream's requests for stateful experts, bounded in streams and bytes.

A stateful expert (``ExpertRecord.state``) takes its state inputs from the
stream's previous call and leaves its state outputs for the next. Streams are
kept in least-recently-used order; past ``max_streams`` or ``max_bytes`` the
oldest is dropped, and a later request on it that does not start the stream
afresh is refused with an error naming it: a silently restarted state would
give wrong answers, not an error.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

Values = dict[str, np.ndarray]


class StreamError(Exception):
    """A request names a stream whose state is not held (never started, or dropped)."""


class StreamStates:
    """Per stream, per expert, the state arrays; thread-safe."""

    def __init__(self, *, max_streams: int, max_bytes: int) -> None:
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self._streams: OrderedDict[str, dict[str, Values]] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self.num_bytes = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def known(self, stream: str) -> bool:
        with self._lock:
            return stream in self._streams

    def start(self, stream: str) -> None:
        """Begin ``stream`` afresh (its experts get their initial state)."""
        with self._lock:
            self._drop_locked(stream)
            self._streams[stream] = {}
            self._bytes[stream] = 0
            self._shrink_locked(keep=stream)

    def get(self, stream: str, expert: str) -> Values:
        """The state ``expert`` left for ``stream`` (empty: the stream's first call of it).

        Raises:
            StreamError: the stream is not held.
        """
        with self._lock:
            states = self._streams.get(stream)
            if states is None:
                raise StreamError(self.unknown(stream))
            self._streams.move_to_end(stream)
            return dict(states.get(expert, {}))

    def put(self, stream: str, expert: str, values: Values) -> None:
        """Keep ``values`` as ``expert``'s state for ``stream``'s next call.

        Raises:
            StreamError: the stream is not held (dropped while its request ran), or its state
                alone exceeds ``max_bytes``.
        """
        size = sum(v.nbytes for v in values.values())
        with self._lock:
            states = self._streams.get(stream)
            if states is None:
                raise StreamError(self.unknown(stream))
            old = sum(v.nbytes for v in states.get(expert, {}).values())
            if self._bytes[stream] - old + size > self.max_bytes:
                raise StreamError(f"stream {stream!r}: its state would take {self._bytes[stream] - old + size} bytes, "
                                  f"more than max_state_bytes={self.max_bytes}")
            states[expert] = {k: np.array(v, copy=True) for k, v in values.items()}
            self._bytes[stream] += size - old
            self.num_bytes += size - old
            self._streams.move_to_end(stream)
            self._shrink_locked(keep=stream)

    def unknown(self, stream: str) -> str:
        return (f"stream {stream!r} is not held: it was never started, or its state was dropped to stay within "
                f"max_streams={self.max_streams} / max_state_bytes={self.max_bytes}; submit with "
                "stream_start=True to begin it again")

    def _drop_locked(self, stream: str) -> None:
        if stream in self._streams:
            del self._streams[stream]
            self.num_bytes -= self._bytes.pop(stream)

    def _shrink_locked(self, *, keep: str) -> None:
        while len(self._streams) > self.max_streams or self.num_bytes > self.max_bytes:
            oldest = next(iter(self._streams))
            if oldest == keep:
                if len(self._streams) == 1:
                    return
                self._streams.move_to_end(keep)
                continue
            self._drop_locked(oldest)
            self.dropped += 1
