from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgecoe.cli import main


def test_help_lists_the_verbs():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for verb in ("export", "inspect", "demo", "workload"):
        assert verb in result.output


def test_inspect_table_and_json(pcb_small):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(pcb_small)])
    assert result.exit_code == 0, result.output
    assert "20 experts" in result.output and "det-0201-00" in result.output
    result = runner.invoke(main, ["inspect", "--json", "-", str(pcb_small)])
    data = json.loads(result.stdout)  # nothing but JSON on standard output
    assert data["num_experts"] == 20
    assert data["experts"]["det-0201-00"]["dependencies"]
    assert set(data["architectures"]) == {"resnet-xs", "resnet-s", "yolo-s"}


def test_workload_generate_and_check(pcb_small, tmp_path):
    out = tmp_path / "w.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["workload", "generate", str(pcb_small), "-o", str(out), "--requests", "50",
                                  "--dist", "zipf:1.2", "--rate", "200", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "50 requests" in result.output
    result = runner.invoke(main, ["workload", "check", str(out), str(pcb_small)])
    assert result.exit_code == 0 and "valid" in result.output


def test_user_mistakes_exit_2_with_one_line(tmp_path, pcb_small):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.output.startswith("error: package") and "does not exist" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["workload", "generate", str(pcb_small), "-o", str(tmp_path / "w.jsonl"),
                                  "--dist", "zipf:oops"])
    assert result.exit_code == 2 and "zipf" in result.output


def test_debug_shows_the_exception(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert result.exception is not None and "does not exist" in str(result.exception)


def test_export_command(tmp_path):
    from helpers import chain_spec, write_spec

    spec = write_spec(tmp_path / "spec.json", chain_spec(tmp_path))
    result = CliRunner().invoke(main, ["export", str(spec), "-o", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output and "3 experts" in result.output


def test_run_serves_and_writes_documented_report(pcb_small, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["run", str(pcb_small), "--policy", "edgecoe", "--budget", "30%",
                                       "--requests", "40", "--rate", "400", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "completed 40/40" in result.output and "device profile:" in result.output
    data = json.loads(out.read_text())
    for key in ("policy", "num_requests", "num_completed", "num_failed", "throughput_rps", "latency_ms",
                "num_switches", "num_hits", "bytes_loaded", "peak_bytes"):
        assert key in data
    assert set(data["latency_ms"]) >= {"p50", "p95", "p99"}
    assert data["num_completed"] == 40 and data["peak_bytes"]["cpu"] <= data["budget_bytes"]["cpu"]


def test_run_rejects_bad_flags_in_one_line(pcb_small):
    result = CliRunner().invoke(main, ["run", str(pcb_small), "--policy", "fastest"])
    assert result.exit_code == 2 and "'fastest' is not one of 'samba'" in result.output
    result = CliRunner().invoke(main, ["run", str(pcb_small), "--budget", "lots"])
    assert result.exit_code == 2 and "budget 'lots'" in result.output


@pytest.mark.parametrize("args, says", [
    (["run", "{pkg}", "--requests", "-5"], "--requests"),
    (["run", "{pkg}", "--requests", "many"], "'many' is not a valid integer"),
    (["run", "{pkg}", "--executors", "0"], "--executors"),
    (["run", "{pkg}", "--no-such-flag"], "No such option"),
    (["run", "{pkg}", "--budget", "-3%"], "budget"),
    (["run", "{pkg}", "--profile", "{tmp}/missing.json"], "missing.json"),
    (["run", "{pkg}", "--profile", "{tmp}/garbage.json"], "garbage.json"),
    (["run", "{pkg}", "--workload", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["run", "{pkg}", "--workload", "{tmp}/garbage.json"], "garbage.json"),
    (["run", "{tmp}/no-package"], "no-package"),
    (["frobnicate"], "No such command"),
    (["inspect"], "Missing argument"),
    (["export", "{tmp}/missing.yaml", "-o", "{tmp}/out"], "missing.yaml"),
    (["export", "{tmp}/garbage.json", "-o", "{tmp}/out"], "garbage.json"),
    (["profile", "{pkg}", "--device", "tpu", "-o", "{tmp}/p.json"], "tpu"),
    (["workload", "check", "{tmp}/garbage.json"], "garbage.json"),
    (["bench", "{pkg}", "--policies", "samba,fastest"], "fastest"),
    (["run", "{pkg}", "--json", "{tmp}/no-dir/r.json"], "no-dir does not exist"),
    (["bench", "{pkg}", "--json", "{tmp}/no-dir/b.json"], "no-dir does not exist"),
    (["bench", "{pkg}", "--plots", "{tmp}/garbage.json"], "is a file"),
    (["bench", "{pkg}", "--plots", "{tmp}/no-dir/plots"], "no-dir does not exist"),
    (["inspect", "{pkg}", "--json", "{tmp}"], "is a directory"),
    (["--log-level", "loud", "inspect", "{pkg}"], "--log-level"),
    (["run", "{pkg}", "--device-memory", "lots"], "--device-memory"),
    (["run", "{pkg}", "--device-memory", "1KB"], "below what this process already holds"),
    (["run", "{pkg}", "--simulate", "--device-memory", "auto"], "--device-memory"),
    (["bench", "{pkg}", "--simulate", "--device-memory", "2GB"], "--device-memory"),
])
def test_every_user_mistake_is_one_line_and_nonzero(args, says, pcb_small, tmp_path):
    (tmp_path / "garbage.json").write_text("{ not json")
    argv = [a.format(pkg=pcb_small, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code not in (0, None), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and says in lines[0], result.output
    assert "Traceback" not in result.output


def test_run_json_to_stdout_is_pure_json(pcb_small):
    result = CliRunner().invoke(main, ["run", str(pcb_small), "--budget", "30%", "--requests", "10", "--json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_completed"] == 10 and data["package"] == "pcb-small"
    assert "completed 10/10" in result.stderr  # the human-readable text went to standard error


def test_report_is_the_old_name_of_json(pcb_small, tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["run", str(pcb_small), "--budget", "30%", "--requests", "5",
                                       "--report", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["num_requests"] == 5


def test_plots_without_matplotlib_fail_before_any_work(pcb_small, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = CliRunner().invoke(main, ["bench", str(pcb_small), "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 2 and "pip install 'edgecoe[plots]'" in result.output
    assert "req/s" not in result.output and not (tmp_path / "plots").exists()


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), command


def test_every_option_has_help_and_every_command_an_example():
    import click

    for name, command in _commands(main):
        assert command.epilog and "Examples:" in command.epilog, f"{name} has no example"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts} has no help"
        text = CliRunner().invoke(main, [*name.split(), "--help"]).output
        assert "%%" not in text and "Examples:" in text, text


def test_log_level_sets_edgecoe_logging(pcb_small):
    import logging

    result = CliRunner().invoke(main, ["--log-level", "debug", "inspect", str(pcb_small), "--quick"])
    assert result.exit_code == 0, result.output
    assert logging.getLogger("edgecoe").level == logging.DEBUG
    CliRunner().invoke(main, ["-v", "inspect", str(pcb_small), "--quick"])
    assert logging.getLogger("edgecoe").level == logging.INFO
    CliRunner().invoke(main, ["inspect", str(pcb_small), "--quick"])
    assert logging.getLogger("edgecoe").level == logging.WARNING
