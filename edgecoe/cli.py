"""The ``edgecoe`` command line: thin wrappers that parse flags and call the API."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import edgecoe
from edgecoe.errors import EdgecoeError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MODELS_DIR = Path("models")


def format_bytes(num_bytes: int) -> str:
    """Human-readable size with a unit that keeps small experts visible (kB, MB, GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


def _console() -> Console:
    # Piped output (CI logs, files) gets 120 columns: rich's default 80 truncates the bench table.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def _errors_are_one_line(func: F) -> F:
    """Turn edgecoe errors into a message and exit status 2; ``--debug`` shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (EdgecoeError, OSError) as exc:
            ctx = click.get_current_context()
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:  # a file the user named
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


class _Group(click.Group):
    """Click's usage errors (unknown flag, bad value, missing argument) as one
    line like every other error, instead of usage text plus a blank line."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # type: ignore[override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[item]}"), console=console,
                    transient=False)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(edgecoe.__version__, prog_name="edgecoe")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """edgecoe: serve Collaboration-of-Experts models on memory-constrained edge devices."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Package directory to write.")
@click.option("--force", is_flag=True, help="Replace an existing package at OUTPUT.")
@click.option("--allow-custom-ops", is_flag=True, help="Accept models that need custom-op libraries.")
@_errors_are_one_line
def export(spec: Path, output: Path, force: bool, allow_custom_ops: bool) -> None:
    """Export the experts a SPEC (YAML/JSON) names into a CoE package, verifying each."""
    from edgecoe.export import ExpertExport, export_package, read_spec

    parsed, _ = read_spec(spec)
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("exporting", total=len(parsed.experts), item="")

        def start(name: str) -> None:
            progress.update(task, item=name)

        def done(result: ExpertExport) -> None:
            opt = "" if result.optimized_max_abs_diff is None else f", optimized {result.optimized_max_abs_diff:.2e}"
            progress.console.print(
                f"  {result.name}: {format_bytes(result.bytes)} from {result.framework}, "
                f"max abs diff {result.max_abs_diff:.2e}{opt} ({result.seconds:.1f} s)")
            progress.advance(task)

        report = export_package(spec, output, overwrite=force, allow_custom_ops=allow_custom_ops,
                                on_expert_start=start, on_expert_done=done)
    console.print(f"wrote {report.package} ({len(report.experts)} experts)")


@main.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@click.option("--quick", is_flag=True, help="Skip checksums and ONNX parsing (sizes and paths only).")
@_errors_are_one_line
def inspect(package: Path, as_json: bool, quick: bool) -> None:
    """Show a package's experts, sizes, architectures, dependency graph and probabilities."""
    from edgecoe.inspect import package_summary, render_summary

    pkg = edgecoe.load_package(package, verify="quick" if quick else "full")
    if as_json:
        click.echo(json.dumps(package_summary(pkg), indent=2))
    else:
        render_summary(pkg, _console())


@main.group()
def demo() -> None:
    """Build the bundled circuit-board inspection demo."""


@demo.command("build")
@click.argument("recipe", default="pcb-small")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Package directory (default: models/NAME).")
@click.option("--force", is_flag=True, help="Rebuild over an existing package.")
@_errors_are_one_line
def demo_build(recipe: str, output: Path | None, force: bool) -> None:
    """Build demo RECIPE (pcb-small, pcb, or a recipe file) into a package."""
    from edgecoe.demo import build_demo, find_recipe, load_recipe

    parsed = load_recipe(find_recipe(recipe))
    dest = output or DEFAULT_MODELS_DIR / parsed.name
    console = _console()
    total = parsed.num_component_types + parsed.num_detectors
    with _progress(console) as progress:
        task = progress.add_task(f"building {parsed.name}", total=total, item="")

        def step(name: str) -> None:
            progress.update(task, item=name)
            progress.advance(task)

        path = build_demo(parsed, dest, overwrite=force, progress=step)
    pkg = edgecoe.load_package(path, verify="quick")
    console.print(f"wrote {path}: {len(pkg.experts)} experts, {format_bytes(pkg.total_bytes)}")


@main.group()
def workload() -> None:
    """Generate and check workload traces (JSONL)."""


@workload.command("generate")
@click.argument("package", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--dist", default="zipf:1.1", show_default=True, help="uniform or zipf:S over the entry key's values.")
@click.option("--rate", "rate_rps", type=float, default=None, help="Mean arrivals per second (default: all at t=0).")
@click.option("--arrival", type=click.Choice(["poisson", "uniform"]), default="poisson", show_default=True)
@click.option("--go-on", type=float, default=None,
              help="Share of requests the first expert passes on (default: the package's hint).")
@click.option("--seed", type=int, default=0, show_default=True)
@_errors_are_one_line
def workload_generate(package: Path, output: Path, num_requests: int, dist: str, rate_rps: float | None,
                      arrival: str, go_on: float | None, seed: int) -> None:
    """Generate a trace of requests for PACKAGE."""
    from edgecoe.workload import generate_workload

    pkg = edgecoe.load_package(package, verify="quick")
    trace = generate_workload(pkg.manifest, num_requests=num_requests, dist=dist, rate_rps=rate_rps,
                              arrival=arrival, go_on=go_on, seed=seed)  # type: ignore[arg-type]
    trace.write(output)
    span = trace.requests[-1].arrival_ms / 1000.0
    click.echo(f"wrote {output}: {len(trace)} requests over {span:.1f} s ({dist}, seed {seed})")


@workload.command("check")
@click.argument("trace", type=click.Path(path_type=Path))
@_errors_are_one_line
def workload_check(trace: Path) -> None:
    """Validate a trace file and summarise it."""
    from edgecoe.workload import read_workload

    parsed = read_workload(trace)
    span = parsed.requests[-1].arrival_ms / 1000.0
    click.echo(f"{trace}: {len(parsed)} requests over {span:.1f} s, valid")


@main.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda:N or coreml.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Profile JSON to write, e.g. device_profiles/NAME.json.")
@click.option("--name", default=None, help="Profile name (default: from the output file name).")
@click.option("--quick", is_flag=True, help="Fewer batch sizes, repeats and samples (pcb-small in under a minute).")
@click.option("--memory-limit", default=None, help="Memory experts may use on the device (bytes, 8GB, 50%%...).")
@click.option("--no-search", is_flag=True, help="Skip the allocation search: keep every expert that fits.")
@_errors_are_one_line
def profile(package: Path, device: str, output: Path, name: str | None, quick: bool, memory_limit: str | None,
            no_search: bool) -> None:
    """Measure PACKAGE on DEVICE and write a device profile (costs, footprints, allocation)."""
    from edgecoe.config import parse_budget
    from edgecoe.profiler import save_profile
    from edgecoe.memory import available_memory_bytes
    from edgecoe.profiler.run import ProfileSettings, check_device, profile_package

    check_device(device)
    pkg = edgecoe.load_package(package, verify="quick")
    overrides: dict[str, object] = {"search": not no_search}
    if memory_limit is not None:
        overrides["memory_limit_bytes"] = parse_budget(memory_limit, total_bytes=available_memory_bytes())
    settings = ProfileSettings.quick(**overrides) if quick else ProfileSettings(**overrides)  # type: ignore[arg-type]
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task(f"profiling {pkg.name} on {device}", total=None, item="")

        def step(what: str, done: int, total: int) -> None:
            progress.update(task, item=what)
            progress.console.print(f"  {what}")

        result = profile_package(pkg, device=device, name=name or output.stem, settings=settings, progress=step)
        progress.update(task, total=1, completed=1, item="done")
    save_profile(result, output)
    alloc = result.allocation
    console.print(f"wrote {output}")
    for arch, by_kind in sorted(result.costs.items()):
        for kind, cost in by_kind.items():
            console.print(f"  {arch} on {kind}: K {cost.k_ms:.3f} ms/item, B {cost.b_ms:.3f} ms "
                          f"(fit error {100 * (cost.fit_max_rel_error or 0):.1f} %), max batch {cost.max_batch}, "
                          f"load cold {cost.load_cold_ms:.1f} / warm {cost.load_warm_ms:.1f} ms, "
                          f"footprint {format_bytes(cost.footprint_bytes or 0)}")
    if alloc is not None:
        console.print(f"  allocation: {alloc.num_resident} experts resident, budget {format_bytes(alloc.budget_bytes)}, "
                      f"executors {alloc.num_executors} ({alloc.stop_reason})")


@main.command()
@click.argument("package", required=False, type=click.Path(path_type=Path))
@click.option("--policies", default=None,
              help="Comma-separated entries (default: samba, samba-fifo, samba-parallel, coserve, edgecoe, "
                   "belady, all-resident).")
@click.option("--ablation", is_flag=True, help="The paper's ablation: none, +expert-management, +arranging, "
                                                "+assigning, +prefetch.")
@click.option("--budget", default="25%", show_default=True, help="Share of all experts' footprint, or bytes.")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--dist", default="zipf:1.1", show_default=True)
@click.option("--rate", "rate_rps", type=float, default=250.0, show_default=True, help="Arrivals per second.")
@click.option("--arrival", type=click.Choice(["poisson", "uniform"]), default="poisson", show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--simulate", is_flag=True, help="Virtual clock with a profile's costs.")
@click.option("--profile", "profile_name", default=None, help="Device profile (file or name in device_profiles/).")
@click.option("--paper", type=click.Choice(["numa", "uma"]), default=None,
              help="Simulate CoServe's setting: 350 synthetic experts on the reference NUMA or UMA profile.")
@click.option("--sweep", default=None, help="KIND=V1,V2,...: budget (%%), skew (zipf S), rate (req/s) or executors.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write PNG plots here (needs the plots extra).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a Chrome/Perfetto timeline of loads, evictions and batches (last sweep point).")
@_errors_are_one_line
def bench(package: Path | None, policies: str | None, ablation: bool, budget: str, num_requests: int, dist: str,
          rate_rps: float, arrival: str, seed: int, simulate: bool, profile_name: str | None, paper: str | None,
          sweep: str | None, json_path: Path | None, plots_dir: Path | None, trace_path: Path | None) -> None:
    """Compare policies side by side on one trace of PACKAGE (default: the demo), as ratios."""
    from edgecoe.bench import ABLATION, DEFAULT_POLICIES, paper_package, run_bench
    from edgecoe.bench.harness import entry_config
    from edgecoe.bench.report import render_table, sweep_points, write_plots
    from edgecoe.profiler.select import best_profile, resolve_profile
    from edgecoe.workload import generate_workload

    console = _console()
    entries = list(ABLATION) if ablation else (policies.split(",") if policies else list(DEFAULT_POLICIES))
    for entry in entries:
        entry_config(entry, 1, 1)  # an unknown name fails here, before any work
    profile = None
    if paper:
        simulate = True
        pkg = paper_package()
        profile, _ = resolve_profile("reference-numa-x86-rtx3080ti" if paper == "numa" else "reference-uma-apple-m2-24gb")
        if budget == "25%":  # the paper's setting: the device's own memory, not a share
            budget = str(profile.processors[0].budget_bytes)
    else:
        pkg = edgecoe.load_package(package or _demo_package(console), verify="quick")
        if profile_name:
            profile, _ = resolve_profile(profile_name)
        elif (match := best_profile(pkg)) is not None:
            profile = match.profile
    from edgecoe.timeline import Timeline, write_trace

    points = sweep_points(sweep)
    results = []
    timelines: dict[str, Timeline] = {}
    for index, (label, overrides) in enumerate(points):
        trace = generate_workload(pkg.manifest, num_requests=num_requests, dist=overrides.get("dist", dist),
                                  rate_rps=float(overrides.get("rate", rate_rps)), arrival=arrival,  # type: ignore[arg-type]
                                  seed=seed)
        point_budget = overrides.get("budget", budget)
        console.print(f"[bold]{pkg.name}[/bold]{' ' + label if label else ''}: {len(trace)} requests, "
                      f"{overrides.get('dist', dist)}, {overrides.get('rate', rate_rps)} req/s ({arrival}); budget "
                      f"{point_budget}; {'simulated with ' + profile.name if simulate and profile else 'real sessions'}")
        result = run_bench(pkg, trace, entries=entries, budget=point_budget, profile=profile, simulate=simulate,
                           seed=seed, num_executors=overrides.get("executors"),  # type: ignore[arg-type]
                           timelines=timelines if trace_path and index == len(points) - 1 else None,
                           on_report=lambda name, r: console.print(
                               f"  {name}: {r.throughput_rps:.1f} req/s, {r.num_switches} switches"))
        render_table(console, result)
        results.append((label, result))
    if json_path:
        payload = {"points": [{"label": label, **r.to_dict()} for label, r in results]}
        json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        console.print(f"wrote {json_path}")
    if plots_dir:
        for path in write_plots(results, plots_dir):
            console.print(f"wrote {path}")
    if trace_path:
        console.print(f"wrote {write_trace(timelines, trace_path)} (open in ui.perfetto.dev or chrome://tracing)")


def _demo_package(console: Console) -> Path:
    """The bundled demo package, built on first use."""
    from edgecoe.demo import build_demo, find_recipe, load_recipe

    path = DEFAULT_MODELS_DIR / "pcb-small"
    if not (path / "edgecoe.json").is_file():
        console.print(f"building the bundled demo into {path} (first run only) ...")
        build_demo(load_recipe(find_recipe("pcb-small")), path)
    return path


@main.command()
@click.argument("package", required=False, type=click.Path(path_type=Path))
@click.option("--profile", "profile_name", default=None,
              help="Device profile: a JSON file or a name in device_profiles/ (default: the best match "
                   "for this machine and package, else built-in defaults).")
@click.option("--policy", default="edgecoe", show_default=True,
              help="samba, samba-fifo, samba-parallel, coserve or edgecoe.")
@click.option("--budget", default=None, help="Memory for resident experts: bytes, 800MB, 2GiB or 25% of all experts.")
@click.option("--executors", "num_executors", type=click.IntRange(1, 64), default=None,
              help="Executors per processor (default: the profile's).")
@click.option("--workload", "workload_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A JSONL trace; otherwise one is generated from the options below.")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--dist", default="zipf:1.1", show_default=True)
@click.option("--rate", "rate_rps", type=float, default=None, help="Arrivals per second (default: all at once).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-delay-ms", type=float, default=30000.0, show_default=True,
              help="Bound on queueing delay (edgecoe policy).")
@click.option("--allow-cpu-fallback", is_flag=True, help="Run on CPU when a profile's provider is missing.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report JSON here.")
@click.option("--simulate", is_flag=True,
              help="Virtual clock with the profile's costs instead of real sessions (needs --profile with costs).")
@_errors_are_one_line
def run(package: Path | None, profile_name: str | None, policy: str, budget: str | None,
        num_executors: int | None, workload_path: Path | None, num_requests: int, dist: str,
        rate_rps: float | None, seed: int, max_delay_ms: float, allow_cpu_fallback: bool,
        report_path: Path | None, simulate: bool) -> None:
    """Serve a workload on PACKAGE (default: the bundled pcb-small demo) and report."""
    from edgecoe.config import RuntimeConfig
    from edgecoe.profiler.select import best_profile, resolve_profile
    from edgecoe.runtime import Runtime
    from edgecoe.workload import generate_workload, read_workload

    console = _console()
    config = RuntimeConfig(policy=policy, budget=budget, num_executors=num_executors,
                           max_delay_ms=max_delay_ms, allow_cpu_fallback=allow_cpu_fallback)
    config.validate()
    pkg = edgecoe.load_package(package or _demo_package(console), verify="quick")
    profile = None
    profile_note = "built-in defaults: no matching profile in device_profiles/"
    if profile_name:
        profile, path = resolve_profile(profile_name)
        profile_note = str(path)
    elif (match := best_profile(pkg)) is not None:
        profile = match.profile
        profile_note = f"{match.path}, best match: {match.reason}"
    trace = read_workload(workload_path) if workload_path else generate_workload(
        pkg.manifest, num_requests=num_requests, dist=dist, rate_rps=rate_rps, seed=seed)
    if simulate:
        from edgecoe.sim import simulate as run_simulation

        if profile is None:
            raise click.UsageError("--simulate needs --profile: a device profile with per-architecture costs")
        report = run_simulation(pkg.manifest, profile, trace, config=config, seed=seed)
        console.print(f"{pkg.name}: {len(pkg.experts)} experts; policy {policy}; simulated with profile "
                      f"{profile.name} ({profile_note})")
        _print_report(console, report)
        if report_path:
            report.write(report_path)
        return
    with Runtime(pkg, config=config, profile=profile) as runtime:
        where = f"profile {runtime.profile.name} ({profile_note})"
        budgets = ", ".join(f"{p} {format_bytes(c.budget_bytes)}" for p, c in runtime.caches.items())
        console.print(f"{pkg.name}: {len(pkg.experts)} experts; policy {policy}; {where}; budget {budgets}; "
                      f"{len(runtime.executors)} executor(s); start-up {runtime.startup_s:.1f} s")
        with _progress(console) as progress:
            task = progress.add_task("serving", total=len(trace), item="")
            report = runtime.run(trace, progress=lambda done, total: progress.update(task, completed=done))
    _print_report(console, report)
    if report_path:
        report.write(report_path)
        console.print(f"report written to {report_path}")


def _print_report(console: Console, report: Any) -> None:
    lat = report.latency_ms
    console.print(
        f"completed {report.num_completed}/{report.num_requests} (failed {report.num_failed}) in {report.wall_s:.1f} s: "
        f"[bold]{report.throughput_rps:.1f} req/s[/bold]; latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, "
        f"p99 {lat['p99']:.0f} ms")
    peaks = ", ".join(f"{p} {format_bytes(b)} of {format_bytes(report.budget_bytes[p])}" for p, b in report.peak_bytes.items())
    console.print(f"switches {report.num_switches}, hits {report.num_hits}, prefetches {report.num_prefetches}, "
                  f"evictions {report.num_evictions}, loaded {format_bytes(report.bytes_loaded)}; peak {peaks}")
    for cause, count in sorted(report.errors.items(), key=lambda kv: -kv[1])[:5]:
        console.print(f"  {count} failed: {cause}")
    for expert, cause in report.quarantined.items():
        console.print(f"  [yellow]quarantined[/yellow] {expert}: {cause}")


if __name__ == "__main__":  # pragma: no cover
    main()
