"""Logging for the command line: one level for edgecoe and ONNX Runtime, one format.

edgecoe logs through Python's ``logging`` under ``edgecoe``. ONNX Runtime logs
from C++ straight to the process's standard error, where its lines would mix
with edgecoe's output in their own format. :func:`route_onnxruntime_logs`
points file descriptor 2 at a pipe whose reader thread parses each line's
severity (``[W:onnxruntime:...]``) and logs it as ``edgecoe.onnxruntime``;
Python's own ``sys.stderr`` keeps writing to the terminal. Only the command
line does this — a library must not take over its host's file descriptors.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import IO

from edgecoe.schema import printable

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# ONNX Runtime's line: "2026-11-25 01:23:45.678 [W:onnxruntime:, session_state.cc:1168 Foo] message"
_ORT_LINE = re.compile(r"\[(?P<sev>[VIWEF]):onnxruntime:[^\]]*\]\s*(?P<message>.*)")
# ONNX Runtime colours a line on a terminal: one sequence before it, one reset after it. Only those go;
# an escape inside the message stays, to be shown escaped.
_ORT_COLOUR = re.compile(r"^\x1b\[[0-9;]*m|\x1b\[0?m\s*$")
_ORT_LEVEL = {"V": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# Python logging level -> ORT's severity (0 verbose, 1 info, 2 warning, 3 error, 4 fatal)
_ORT_SEVERITY = {logging.DEBUG: 0, logging.INFO: 1, logging.WARNING: 2, logging.ERROR: 3}

ORT_LOGGER = "edgecoe.onnxruntime"


class _TerminalSafe(logging.Formatter):
    """``warning: edgecoe.loaders: message`` with control characters escaped (names come from packages)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def configure(level: str | int, *, stream: IO[str] | None = None) -> int:
    """Set one level for edgecoe's loggers and ONNX Runtime's; log to ``stream`` (stderr).

    Returns:
        The numeric level.

    Raises:
        ValueError: an unknown level name, listing the valid ones.
    """
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"log level {level!r}; valid: {', '.join(LEVELS)}")
        level = LEVELS[level.lower()]
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_TerminalSafe("%(levelname)s: %(name)s: %(message)s"))
    root = logging.getLogger("edgecoe")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(_ORT_SEVERITY.get(level, 2))
    except ImportError:  # the engine and simulator run without ONNX Runtime
        pass
    return level


def parse_onnxruntime_line(line: str) -> tuple[int, str]:
    """(logging level, message) of one line ONNX Runtime wrote; other lines are warnings as they are."""
    line = _ORT_COLOUR.sub("", line)
    match = _ORT_LINE.search(line)
    if match is None:
        return logging.WARNING, line.rstrip()
    return _ORT_LEVEL[match["sev"]], match["message"].rstrip()


def route_onnxruntime_logs() -> bool:
    """Send what native code writes to file descriptor 2 through ``edgecoe.onnxruntime``.

    Python's ``sys.stderr`` is re-opened on a duplicate of the original
    descriptor first, so Python output (click's errors, the log handler) still
    reaches the terminal directly. Returns False where descriptors cannot be
    redirected (no fd 2, Windows consoles).
    """
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except (OSError, AttributeError, ValueError):
        return False
    sys.stderr = os.fdopen(original, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    for handler in logging.getLogger("edgecoe").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    logger = logging.getLogger(ORT_LOGGER)

    def pump() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.strip():
                    level, message = parse_onnxruntime_line(line)
                    logger.log(level, "%s", message)

    threading.Thread(target=pump, name="edgecoe-ort-log", daemon=True).start()
    return True
