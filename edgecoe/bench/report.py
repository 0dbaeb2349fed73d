"""Bench output: the console table, sweep parsing, PNG plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgecoe.bench.harness import BenchResult, RepeatedBench
from edgecoe.errors import InvalidInputError
from edgecoe.results import CDF_PERCENTILES, format_machine

SWEEPS = ("budget", "skew", "rate", "executors")


@dataclass(frozen=True)
class SweepPoint:
    """One point of a ``--sweep``: what it changes from the command's own options (None: unchanged)."""

    label: str
    budget: str | None = None
    dist: str | None = None
    rate_rps: float | None = None
    num_executors: int | None = None


def sweep_points(spec: str | None) -> list[SweepPoint]:
    """``budget=10,25,50`` -> points for budgets 10 %, 25 %, 50 %; None -> one plain point.

    Raises:
        InvalidInputError: an unknown kind or a value that is not a number.
    """
    if not spec:
        return [SweepPoint("")]
    kind, _, values = spec.partition("=")
    if kind not in SWEEPS or not values:
        raise InvalidInputError(f"--sweep {spec!r}: expected KIND=V1,V2 with KIND one of {', '.join(SWEEPS)}")
    points: list[SweepPoint] = []
    for raw in values.split(","):
        try:
            number = float(raw)
        except ValueError:
            raise InvalidInputError(f"--sweep {spec!r}: {raw!r} is not a number") from None
        if kind == "budget":
            points.append(SweepPoint(f"budget={raw}%", budget=f"{raw}%"))
        elif kind == "skew":
            points.append(SweepPoint(f"skew=zipf:{raw}", dist=f"zipf:{raw}"))
        elif kind == "rate":
            points.append(SweepPoint(f"rate={raw}", rate_rps=number))
        else:
            points.append(SweepPoint(f"executors={int(number)}", num_executors=int(number)))
    return points


def render_table(console: Console, result: BenchResult) -> None:
    table = Table(title=f"{result.package}: budget {result.budget_bytes / 1e9:.2f} GB of "
                        f"{result.total_footprint_bytes / 1e9:.2f} GB ({'simulated' if result.simulated else 'measured'})")
    reads = any(r.device_memory for r in result.reports.values())  # device-memory mode: storage reads matter
    slo = next(iter(result.reports.values())).slo_ms if result.reports else None
    for column in ("entry", "req/s", "×samba", "×all", "switches", "sw ×samba", "p50 ms", "p99 ms", "failed",
                   *((f"good/s ≤{slo:g}ms",) if slo is not None else ()), *(("read GB",) if reads else ())):
        table.add_column(column, justify="left" if column == "entry" else "right", no_wrap=True)
    samba = result.reports.get("samba")
    for name, report in result.reports.items():
        vs_samba = result.ratio(name, "samba")
        vs_all = result.ratio(name, "all-resident")
        switch_ratio = (f"{report.num_switches / samba.num_switches:.2f}"
                        if samba is not None and samba.num_switches else "-")
        flag = " !" if result.suspect(name) else ""  # above the all-resident bound: a broken bound or figure
        table.add_row(name, f"{report.throughput_rps:.1f}", f"{vs_samba:.2f}" if vs_samba else "-",
                      f"{vs_all:.2f}{flag}" if vs_all else "-", str(report.num_switches), switch_ratio,
                      f"{report.latency_ms['p50']:.0f}", f"{report.latency_ms['p99']:.0f}", str(report.num_failed),
                      *((f"{report.goodput_rps or 0.0:.1f}",) if slo is not None else ()),
                      *((f"{(report.storage_read_bytes or 0) / 1e9:.2f}",) if reads else ()))
    console.print(table)
    limited = [r.device_memory for r in result.reports.values() if r.device_memory.get("limit_bytes")]
    if limited:
        memory = limited[0]
        console.print(f"device memory {int(memory['limit_bytes']) / 1e9:.2f} GB ({memory['mechanism']}) for every "  # type: ignore[call-overload]
                      f"entry but all-resident; read GB: bytes read from storage while serving")
    if any(result.suspect(name) for name in result.reports):
        console.print("[yellow]! above the all-resident bound: that entry's figure, or the bound, is suspect[/yellow]")
    console.print(f"machine: {format_machine(result.machine)}")


def render_repeated(console: Console, repeated: RepeatedBench) -> None:
    """Medians over runs, with [min-max] ranges, one row per entry."""
    summary = repeated.summary()
    first = repeated.first
    seeds = sorted({seed for seed, _, _ in repeated.runs})
    table = Table(title=f"{first.package}: budget {first.budget_bytes / 1e9:.2f} GB; medians of "
                        f"{len(repeated.runs)} runs (seeds {', '.join(map(str, seeds))})")
    for column in ("entry", "req/s", "range", "×samba", "×all", "switches", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "entry" else "right", no_wrap=True)

    def num(entry: dict[str, object], key: str, digits: int) -> str:
        value = entry.get(key)
        return "-" if value is None else f"{float(value):.{digits}f}"  # type: ignore[arg-type]

    for name, entry in summary.items():
        spread = entry["throughput_rps_range"]
        low, high = spread if isinstance(spread, list) else (0.0, 0.0)
        latency = entry["latency_ms"]
        flag = " !" if entry["suspect"] else ""
        table.add_row(name, num(entry, "throughput_rps", 1), f"{low:.1f}-{high:.1f}", num(entry, "ratio_vs_samba", 2),
                      num(entry, "ratio_vs_all_resident", 2) + flag, num(entry, "num_switches", 0),
                      f"{latency['p50']:.0f}", f"{latency['p99']:.0f}")  # type: ignore[index]
    console.print(table)
    console.print(f"machine: {format_machine(first.machine)}")


def write_plots(results: list[tuple[str, BenchResult]], folder: Path) -> list[Path]:
    """Throughput per entry across sweep points, switches per entry, and the latency CDF."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InvalidInputError("--plots needs matplotlib: pip install 'edgecoe[plots]'") from exc
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    entries = list(results[0][1].reports)
    labels = [label or "run" for label, _ in results]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if len(results) == 1:
        ax.bar(entries, [results[0][1].reports[e].throughput_rps for e in entries])
        ax.tick_params(axis="x", rotation=30)
    else:
        for entry in entries:
            ax.plot(labels, [r.reports[entry].throughput_rps for _, r in results], marker="o", label=entry)
        ax.legend(fontsize=8)
    ax.set_ylabel("throughput (req/s)")
    ax.set_title(f"{results[0][1].package}: throughput per policy")
    ax.grid(alpha=0.3, axis="y")
    written.append(_save(fig, folder / "throughput.png"))

    last = results[-1][1]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(entries, [last.reports[e].num_switches for e in entries])
    ax.set_ylabel("switches (expert loads on demand)")
    ax.set_title(f"{last.package}: switches per policy{' (' + results[-1][0] + ')' if results[-1][0] else ''}")
    ax.tick_params(axis="x", rotation=30)
    written.append(_save(fig, folder / "switches.png"))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for entry in entries:
        cdf = last.reports[entry].latency_cdf_ms
        if cdf:
            ax.plot(cdf, [p / 100 for p in CDF_PERCENTILES], marker=".", label=entry)
    ax.set_xscale("log")
    ax.set_xlabel("latency from submission to result (ms, log)")
    ax.set_ylabel("share of requests finished")
    ax.set_title(f"{last.package}: latency CDF")
    ax.grid(alpha=0.3)
    if ax.lines:  # nothing completed anywhere: an empty plot, no legend
        ax.legend(fontsize=8)
    written.append(_save(fig, folder / "latency_cdf.png"))
    if len(results) > 1:
        written.append(_tail_plot(plt, results, entries, labels, folder))
    return written


def _tail_plot(plt, results: list[tuple[str, BenchResult]], entries: list[str],  # type: ignore[no-untyped-def]
               labels: list[str], folder: Path) -> Path:
    """p50, p99 and (where an SLO was set) goodput per entry across the sweep points."""
    slo = results[0][1].reports[entries[0]].slo_ms
    panels = [("p50", "p50 latency (ms, log)"), ("p99", "p99 latency (ms, log)")]
    if slo is not None:
        panels.append(("goodput", f"goodput within {slo:g} ms (req/s)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for entry in entries:
            reports = [r.reports[entry] for _, r in results]
            values = [(rep.goodput_rps or 0.0) if key == "goodput" else rep.latency_ms[key] for rep in reports]
            ax.plot(labels, values, marker="o", label=entry)
        if key != "goodput":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results[0][1].package}: tail latency across the sweep")
    return _save(fig, folder / "tail.png")


def _save(fig, path: Path) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
