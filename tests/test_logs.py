"""Logging: ONNX Runtime's native log lines parsed and routed through Python logging."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from edgecoe.logs import configure, parse_onnxruntime_line


@pytest.mark.parametrize("line, level, message", [
    ("2026-11-25 01:23:45.678 [W:onnxruntime:, session_state.cc:1168 VerifyEachNode] Some nodes were not assigned",
     logging.WARNING, "Some nodes were not assigned"),
    ("2026-11-25 01:23:45.678 [E:onnxruntime:Default, provider_bridge_ort.cc:2022 TryGetProviderInfo] no CUDA",
     logging.ERROR, "no CUDA"),
    ("[I:onnxruntime:, inference_session.cc:583 TraceSessionOptions] options", logging.INFO, "options"),
    ("[V:onnxruntime:, graph.cc:10 x] verbose", logging.DEBUG, "verbose"),
    ("something else entirely\n", logging.WARNING, "something else entirely"),
])
def test_onnxruntime_lines_are_parsed(line, level, message):
    assert parse_onnxruntime_line(line) == (level, message)


def test_unknown_level_is_refused():
    with pytest.raises(ValueError, match="valid: debug, info, warning, error"):
        configure("loud")


def test_native_writes_to_stderr_come_out_as_log_lines():
    """A process that routes fd 2: a native write (os.write on fd 2, as ORT's C++ logger does)
    is logged as edgecoe.onnxruntime in edgecoe's format; a control character is escaped."""
    code = (
        "import logging, os, time\n"
        "from edgecoe.logs import configure, route_onnxruntime_logs\n"
        "assert route_onnxruntime_logs()\n"
        "configure('info')\n"
        "os.write(2, b'2026-11-25 01:00:00.000 [W:onnxruntime:, x.cc:1 F] disk \\x1b[31m slow\\n')\n"
        "os.write(2, b'[I:onnxruntime:, x.cc:2 G] hello\\n')\n"
        "time.sleep(0.5)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "WARNING: edgecoe.onnxruntime: disk \\x1b[31m slow" in lines
    assert "INFO: edgecoe.onnxruntime: hello" in lines


def test_onnxruntime_colours_around_a_line_are_dropped_and_escapes_inside_kept():
    from edgecoe.logs import parse_onnxruntime_line

    level, message = parse_onnxruntime_line("\x1b[0;93m2026-12-07 [W:onnxruntime:, graph.cc:5809 Clean] Removing "
                                            "initializer 'val_7'.\x1b[m\n")
    assert level == logging.WARNING and message == "Removing initializer 'val_7'."
    assert parse_onnxruntime_line("[E:onnxruntime:, x] bad \x1b[31m name\n")[1] == "bad \x1b[31m name"
