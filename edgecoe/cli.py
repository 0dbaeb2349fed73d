"""The ``edgecoe`` command line: thin wrappers that parse flags and call the API.

Conventions every command keeps: user mistakes end in one ``error:`` line and
exit status 2; every step that can take more than a couple of seconds shows
progress; machine-readable output goes through ``--json PATH`` (``-`` for
standard output, the human text then goes to standard error); output paths
and optional dependencies are checked before any long work starts.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import edgecoe
from edgecoe.admission import refuse_bad_requests
from edgecoe.errors import EdgecoeError
from edgecoe.moe.schedules import DECODE_PREFETCH, DecodePrefetch
from edgecoe.moe.schedules import SCHEDULES as MOE_SCHEDULES
from edgecoe.sched.presets import ABLATION, BENCH_ENTRIES, DEFAULT_BENCH_ENTRIES, PRESETS
from edgecoe.schema import printable

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MODELS_DIR = Path("models")


def format_bytes(num_bytes: int) -> str:
    """Human-readable size with a unit that keeps small experts visible (kB, MB, GB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


def format_counts(counts: dict[str, int]) -> str:
    """``cuda:0 x3, cpu x1`` for executors per processor."""
    return ", ".join(f"{name} x{count}" for name, count in counts.items())


def _console(*, to_stderr: bool = False) -> Console:
    # Piped output (CI logs, files) gets 120 columns: rich's default 80 truncates the bench table.
    stream = sys.stderr if to_stderr else sys.stdout
    return Console(highlight=False, stderr=to_stderr, width=None if stream.isatty() else 120)


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
    """The error for the terminal: control characters from names and files escaped."""
    if isinstance(exc, OSError) and exc.filename is not None:  # a file the user named
        return printable(f"{exc.filename}: {exc.strerror or exc}")
    return printable(str(exc))


class _Group(click.Group):
    """Click's usage errors (unknown flag, bad value, missing argument) as one
    line like every other error, instead of usage text plus a blank line."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
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


def _progress(console: Console, *, rate: bool = False) -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if rate:
        columns.append(TextColumn("{task.fields[rate]}"))
    columns.append(TextColumn("{task.fields[item]}"))
    # transient: a live bar disappears when its step ends (or fails); what a step found is printed.
    # Off the terminal (a log, a pipe) there is no live bar: the steps print their own lines.
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


# -- output options: checked before any work --------------------------------------------
def _transforms_option(func: F) -> F:
    return click.option(
        "--transforms", "transforms_source", default=None, metavar="MODULE|FILE.py",
        help="The transforms the package names: a module (edgecoe.apps.ocr) or a Python file whose TRANSFORMS "
             "dict maps names to functions. This runs that code: name only code you trust.")(func)


def _load_transforms(source: str | None) -> dict[str, Any] | None:
    if source is None:
        return None
    from edgecoe.transforms import load_transforms

    return load_transforms(source)


def _check_json_path(path: Path | None, option: str = "--json") -> None:
    """A ``--json`` path must be ``-`` or a file in an existing directory."""
    if path is None or str(path) == "-":
        return
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory; give a file name", param_hint=option)
    if not path.resolve().parent.is_dir():
        raise click.BadParameter(f"directory {path.parent} does not exist", param_hint=option)


def _check_output_dir(path: Path | None, option: str) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise click.BadParameter(f"{path} exists and is not a directory", param_hint=option)
    if path is not None and not path.resolve().parent.is_dir():
        raise click.BadParameter(f"directory {path.parent} does not exist", param_hint=option)


def _write_json(path: Path, payload: object, console: Console) -> None:
    text = json.dumps(payload, indent=2, default=str) + "\n"  # key order is meaningful (bench entries)
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path.write_text(text, encoding="utf-8")
    console.print(f"wrote {escape(str(path))}")


def _json_option(what: str) -> Callable[[F], F]:
    return click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True), default=None,
                        metavar="PATH", help=f"Write {what} as JSON to PATH ('-': standard output, the "
                                             "human-readable text then goes to standard error).")


def _epilog(*examples: str) -> str:
    """A help epilog with examples, kept verbatim by click (``\\b``)."""
    return "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples)


class _PackagePath(click.Path):
    """A package directory argument; an empty one is a mistake, not the current directory."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; give a package directory (or none, for the bundled demo)", param, ctx)
        return super().convert(value, param, ctx)


PACKAGE = _PackagePath(path_type=Path)


# -- the group ----------------------------------------------------------------------------
@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_epilog("edgecoe run                          serve the bundled demo",
                            "edgecoe bench --requests 500         compare policies on it",
                            "edgecoe -v inspect models/pcb-small  show a package, logging at info"))
@click.version_option(edgecoe.__version__, prog_name="edgecoe")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="Level of edgecoe's and ONNX Runtime's log lines (default: warning).")
@click.option("-v", "--verbose", count=True, help="More log lines: -v info, -vv debug (--log-level wins).")
def main(debug: bool, log_level: str | None, verbose: int) -> None:
    """edgecoe: serve Collaboration-of-Experts models on memory-constrained edge devices."""
    from edgecoe.logs import configure

    configure(log_level or ("debug" if verbose >= 2 else "info" if verbose == 1 else "warning"))


def entry_point() -> None:
    """The ``edgecoe`` console script: ONNX Runtime's native log lines go through Python logging."""
    from edgecoe.logs import route_onnxruntime_logs

    route_onnxruntime_logs()
    main()


# -- export, inspect, demo ---------------------------------------------------------------
@main.command(epilog=_epilog("edgecoe export export/onnx-import.yaml -o models/imported",
                             "edgecoe export my-spec.yaml -o models/mine --force",
                             "edgecoe export models/moe-tiny-hf -o models/moe-tiny-int4 --dtype int4"))
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Package directory to write.")
@click.option("--force", is_flag=True, help="Replace an existing package at OUTPUT.")
@click.option("--allow-custom-ops", is_flag=True, help="Accept models that need custom-op libraries (CoE specs).")
@click.option("--dtype", type=click.Choice(["float32", "int8", "int4"]), default="float32", show_default=True,
              help="MoE checkpoints: expert weights as float32 or weight-only int8/int4 (MatMulNBits).")
@click.option("--block-size", type=click.IntRange(16, 4096), default=32, show_default=True,
              help="MoE checkpoints: weights per quantization scale (a power of two).")
@click.option("--eval-text", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="MoE checkpoints: held-out text for the perplexity check of quantization "
                   "(default: text shipped with Python's documentation).")
@_errors_are_one_line
def export(source: Path, output: Path, force: bool, allow_custom_ops: bool, dtype: str, block_size: int,
           eval_text: Path | None) -> None:
    """Export SOURCE into a package: a spec (YAML/JSON) of CoE experts, or a Hugging Face MoE checkpoint.

    A spec's experts are exported and each verified against its source. A checkpoint
    directory (config.json, safetensors weights, tokenizer.json; Mixtral or Qwen2-MoE)
    becomes an MoE package: dense parts as ONNX, one weight file per expert.
    A spec that names PyTorch factories runs that Python code: export only specs you trust.
    """
    from edgecoe.moe.export import is_hf_checkpoint

    if source.is_dir():
        if not is_hf_checkpoint(source):
            raise click.BadParameter(f"{source} is a directory without config.json: give an export spec file or a "
                                     "Hugging Face checkpoint directory", param_hint="SOURCE")
        _export_moe(source, output, force=force, dtype=dtype, block_size=block_size, eval_text=eval_text)
        return
    from edgecoe.export import ExpertExport, export_package, read_spec

    parsed, _ = read_spec(source)
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("exporting", total=len(parsed.experts), item="")

        def start(name: str) -> None:
            progress.update(task, item=escape(name))

        def done(result: ExpertExport) -> None:
            opt = "" if result.optimized_max_abs_diff is None else f", optimized {result.optimized_max_abs_diff:.2e}"
            progress.console.print(
                f"  {escape(result.name)}: {format_bytes(result.bytes)} from {result.framework}, "
                f"max abs diff {result.max_abs_diff:.2e}{opt} ({result.seconds:.1f} s)")
            progress.advance(task)

        report = export_package(source, output, overwrite=force, allow_custom_ops=allow_custom_ops,
                                on_expert_start=start, on_expert_done=done)
    console.print(f"wrote {escape(str(report.package))} ({len(report.experts)} experts)")


def _export_moe(source: Path, output: Path, *, force: bool, dtype: str, block_size: int,
                eval_text: Path | None) -> None:
    from edgecoe.moe.export import export_moe

    text = None
    if eval_text is not None:
        from edgecoe.schema import read_document

        text = read_document(eval_text, max_bytes=16 << 20)
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("exporting", total=None, item="")

        def step(what: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, item=escape(what))

        report = export_moe(source, output, overwrite=force, dtype=dtype, block_size=block_size,  # type: ignore[arg-type]
                            eval_text=text, progress=step)
    console.print(f"wrote {escape(str(report.package))}: {report.architecture}, {report.num_layers} layers x "
                  f"{report.num_experts} experts of {format_bytes(report.expert_bytes)}, "
                  f"{format_bytes(report.total_bytes)} in all")
    quant = report.quantization
    if quant is not None and quant.perplexity is not None and quant.perplexity_float32 is not None:
        change = quant.perplexity / quant.perplexity_float32 - 1
        console.print(f"int{quant.bits} experts (block {quant.block_size}): perplexity {quant.perplexity:.3f} vs "
                      f"{quant.perplexity_float32:.3f} in float32 ({change:+.2%}) on {quant.held_out_tokens} "
                      "held-out tokens")


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict, in order (a repeated name is an error)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint=option)
        if name in out:
            raise click.BadParameter(f"{name!r} is given twice", param_hint=option)
        out[name] = rest
    return out


@main.command(epilog=_epilog(
    "edgecoe consolidate docs=ft/docs code=ft/code --calibration docs=docs.txt --calibration code=code.py -o models/set",
    "edgecoe consolidate a=ft/a b=ft/b --calibration a=a.txt --calibration b=b.txt --threshold 0.05 -o models/ab"))
@click.argument("variants", nargs=-1, required=True, metavar="NAME=CHECKPOINT...")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Package directory to write.")
@click.option("--calibration", "calibration", multiple=True, metavar="NAME=TEXTFILE", required=True,
              help="Text like what variant NAME serves; its experts' output differences are measured on it "
                   "(one per variant).")
@click.option("--memory-target", default="40%", show_default=True,
              help="Package size as a share of separate copies of every variant; the smallest sharing threshold "
                   "that fits is chosen.")
@click.option("--threshold", type=click.FloatRange(min=0), default=None,
              help="Share experts whose relative output difference is at most this (overrides --memory-target).")
@click.option("--force", is_flag=True, help="Replace an existing package at OUTPUT.")
@_errors_are_one_line
def consolidate(variants: tuple[str, ...], output: Path, calibration: tuple[str, ...], memory_target: str,
                threshold: float | None, force: bool) -> None:
    """Consolidate fine-tuned variants of one MoE model (Hugging Face checkpoints) into one package.

    Experts that stayed alike across the variants are stored once; each variant keeps its own
    non-expert parts. The first variant is stored exactly; serve any with generate --variant NAME.
    """
    from edgecoe.moe.consolidate import consolidate as run
    from edgecoe.schema import read_document

    checkpoints = {name: Path(path) for name, path in _pairs(variants, "NAME=CHECKPOINT").items()}
    texts = _pairs(calibration, "--calibration")
    missing = [n for n in checkpoints if n not in texts]
    extra = [n for n in texts if n not in checkpoints]
    if missing or extra:
        raise click.BadParameter(f"give one calibration text per variant (missing: {missing}, unknown: {extra})",
                                 param_hint="--calibration")
    target = memory_target.strip()
    try:
        share = float(target[:-1]) / 100 if target.endswith("%") else float(target)
    except ValueError:
        raise click.BadParameter(f"{memory_target!r}: expected a share such as 40%", param_hint="--memory-target") from None
    if not 0 < share <= 1:
        raise click.BadParameter(f"{memory_target!r} must be in (0, 100%]", param_hint="--memory-target")
    calibration_text = {n: read_document(Path(p), max_bytes=64 << 20) for n, p in texts.items()}
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task("consolidating", total=None, item="")

        def step(what: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, item=escape(what))

        report = run(checkpoints, calibration_text, output, memory_target=share, threshold=threshold,
                     overwrite=force, progress=step)
    verdict = "" if report.fits else f" (above the {share:.0%} target: sharing every alike expert was not enough)"
    console.print(f"wrote {escape(str(report.package))}: {len(report.variants)} variants, {report.stored_experts} "
                  f"of {report.total_experts} experts stored (threshold {report.threshold:.3g}), "
                  f"{format_bytes(report.consolidated_bytes)} = {report.memory_ratio:.0%} of separate copies{verdict}")
    for name, share_ in report.shared.items():
        console.print(f"  {escape(name)}: shares {share_:.0%} of its experts")


@main.command(epilog=_epilog("edgecoe inspect models/pcb-small",
                             "edgecoe inspect models/pcb-small --json - | jq .num_experts"))
@click.argument("package", type=PACKAGE)
@_json_option("the package summary")
@click.option("--quick", is_flag=True, help="Skip checksums and ONNX parsing (sizes and paths only).")
@_errors_are_one_line
def inspect(package: Path, json_path: Path | None, quick: bool) -> None:
    """Show a package: a CoE package's experts, graph and probabilities, or an MoE package's layers and experts."""
    from edgecoe.inspect import package_summary, render_summary
    from edgecoe.moe.package import package_kind

    _check_json_path(json_path)
    console = _console(to_stderr=json_path is not None and str(json_path) == "-")
    if package_kind(package) == "moe":
        from edgecoe.moe.inspect import moe_summary, render_moe_summary
        from edgecoe.moe.package import load_moe_package

        moe = load_moe_package(package, verify="quick" if quick else "full")
        if json_path is not None:
            _write_json(json_path, moe_summary(moe), console)
        else:
            render_moe_summary(moe, console)
        return
    pkg = edgecoe.load_package(package, verify="quick" if quick else "full")
    if json_path is not None:
        _write_json(json_path, package_summary(pkg), console)
    else:
        render_summary(pkg, console)


@main.group()
def demo() -> None:
    """Build the bundled demos: the circuit-board inspection CoE and the MoE language models."""


@demo.command("build", epilog=_epilog("edgecoe demo build              the 20-expert pcb-small (seconds)",
                                      "edgecoe demo build pcb          the 120-expert pcb (7.5 GB, minutes)",
                                      "edgecoe demo build moe-tiny     a small Mixtral trained on Python's docs"))
@click.argument("recipe", default="pcb-small")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Package directory (default: models/NAME).")
@click.option("--force", is_flag=True, help="Rebuild over an existing package.")
@_errors_are_one_line
def demo_build(recipe: str, output: Path | None, force: bool) -> None:
    """Build demo RECIPE (pcb-small, pcb, moe-tiny, moe-large, or a recipe file) into a package."""
    from edgecoe.apps.published import is_published_recipe
    from edgecoe.demo import find_recipe, load_recipe
    from edgecoe.moe.demo import is_moe_recipe
    from edgecoe.moe.variants import is_variants_recipe

    path = find_recipe(recipe)
    console = _console()
    if is_published_recipe(path):
        _build_published_demo(console, path, output, force=force)
        return
    if is_variants_recipe(path):
        _build_variants_demo(console, path, output, force=force)
        return
    if is_moe_recipe(path):
        _build_moe_demo(console, path, output, force=force)
        return
    parsed = load_recipe(path)
    dest = output or DEFAULT_MODELS_DIR / parsed.name
    if (dest / "edgecoe.json").is_file() and not force:
        pkg = edgecoe.load_package(dest, verify="quick")
        console.print(f"{escape(str(dest))} is already built: {len(pkg.experts)} experts, "
                      f"{format_bytes(pkg.total_bytes)} of models (--force rebuilds it)")
        return
    built = _build_demo(console, recipe, dest, overwrite=force)
    pkg = edgecoe.load_package(built, verify="quick")
    console.print(f"wrote {escape(str(built))}: {len(pkg.experts)} experts, {format_bytes(pkg.total_bytes)} of models")


def _build_published_demo(console: Console, recipe: Path, output: Path | None, *, force: bool) -> None:
    from edgecoe.apps.published import build_published, load_published_recipe

    parsed = load_published_recipe(recipe)
    dest = output or DEFAULT_MODELS_DIR / parsed.name
    if (dest / "edgecoe.json").is_file() and not force:
        console.print(f"{escape(str(dest))} is already built (--force rebuilds it)")
        return
    built = build_published(recipe, dest, overwrite=force, progress=lambda what: console.print(f"  {escape(what)}"))
    pkg = edgecoe.load_package(built, verify="quick")
    console.print(f"wrote {escape(str(built))}: {len(pkg.experts)} experts, {format_bytes(pkg.total_bytes)} of models")


@contextmanager
def _build_steps(console: Console, name: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar for a build, and the (what, done, total) callback that drives it; without a
    terminal, a line every 50 steps instead."""
    with _progress(console) as progress:
        task = progress.add_task(f"building {name}", total=None, item="")

        def step(what: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, item=escape(what))
            if not console.is_terminal and (done == total or done % 50 == 0):
                console.print(f"  {escape(what)} ({done}/{total})")

        yield step


def _build_moe_demo(console: Console, recipe: Path, output: Path | None, *, force: bool) -> None:
    from edgecoe.moe.demo import build_moe_demo, load_moe_recipe
    from edgecoe.moe.package import load_moe_package

    parsed = load_moe_recipe(recipe)
    dest = output or DEFAULT_MODELS_DIR / parsed.name
    if (dest / "edgecoe.json").is_file() and not force:
        console.print(f"{escape(str(dest))} is already built (--force rebuilds it)")
        return
    with _build_steps(console, parsed.name) as step:
        package, checkpoint = build_moe_demo(recipe, models_dir=dest.parent, dest=dest, force=force, progress=step)
    moe = load_moe_package(package)
    console.print(f"wrote {escape(str(checkpoint))} (Hugging Face checkpoint) and {escape(str(package))}: "
                  f"{len(moe.manifest.layers)} layers x {moe.manifest.moe.num_experts} experts of "
                  f"{format_bytes(moe.manifest.expert_bytes)}")


def _build_variants_demo(console: Console, recipe: Path, output: Path | None, *, force: bool) -> None:
    from rich.table import Table

    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.variants import build_variants, load_variants_recipe

    parsed = load_variants_recipe(recipe)
    dest = output or DEFAULT_MODELS_DIR / parsed.name
    if (dest / "edgecoe.json").is_file() and not force:
        console.print(f"{escape(str(dest))} is already built (--force rebuilds it)")
        return
    with _build_steps(console, parsed.name) as step:
        report, _ = build_variants(recipe, models_dir=dest.parent, dest=dest, force=force, progress=step)
    console.print(f"wrote {escape(str(report.package))}: {len(report.variants)} variants, "
                  f"{report.stored_experts} of {report.total_experts} experts stored "
                  f"(threshold {report.threshold:.3g}), {format_bytes(report.consolidated_bytes)} = "
                  f"{report.memory_ratio:.0%} of separate copies")
    manifest = load_moe_package(report.package).manifest
    if not any(v.quality for v in manifest.variants):
        return  # synthetic variants: nothing measured
    table = Table(title="held-out perplexity per variant (its own domain)")
    for column in ("variant", "domain", "base", "unmerged", "consolidated", "average merge", "TIES merge",
                   "same tokens"):
        table.add_column(column, justify="left" if column in ("variant", "domain") else "right")
    for v in manifest.variants:
        q = v.quality
        if q:
            table.add_row(escape(v.name), escape(v.domain), f"{q['perplexity_base']:.2f}", f"{q['perplexity_unmerged']:.2f}",
                          f"{q['perplexity_consolidated']:.2f}", f"{q['perplexity_average']:.2f}",
                          f"{q['perplexity_ties']:.2f}", f"{q['token_agreement']:.0%}")
    console.print(table)


def _build_demo(console: Console, recipe: str, dest: Path, *, overwrite: bool = False) -> Path:
    """Build a demo recipe with a progress bar; returns the package directory."""
    from edgecoe.demo import build, find_recipe, load_recipe

    parsed = load_recipe(find_recipe(recipe))
    with _progress(console) as progress:
        task = progress.add_task(f"building {parsed.name}", total=parsed.num_component_types + parsed.num_detectors,
                                 item="")

        def step(name: str) -> None:
            progress.update(task, item=escape(name))
            progress.advance(task)

        return build(recipe, dest, force=overwrite, progress=step)


def _demo_package(console: Console) -> Path:
    """The bundled demo package, built on first use."""
    path = DEFAULT_MODELS_DIR / "pcb-small"
    if not (path / "edgecoe.json").is_file():
        console.print(f"building the bundled demo into {path} (first run only)")
        _build_demo(console, "pcb-small", path)
    return path


# -- generate (MoE packages) --------------------------------------------------------------
@main.command(epilog=_epilog(
    'edgecoe generate models/moe-tiny --prompt "The for statement" --max-new-tokens 48',
    "edgecoe generate models/moe-tiny --prompts prompts.txt --budget 25% --report out.json"))
@click.argument("package", type=PACKAGE)
@click.option("--prompt", "prompt_texts", multiple=True, metavar="TEXT", help="A prompt (repeat for several).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file of prompts, one per line (generated together as one batch).")
@click.option("--max-new-tokens", type=click.IntRange(1, 1 << 20), default=32, show_default=True,
              help="Tokens to generate per prompt at most.")
@click.option("--budget", default="100%", show_default=True,
              help="Memory for resident routed experts: bytes, a size (800MB) or a share of all experts (25%).")
@click.option("--policy", type=click.Choice(list(MOE_SCHEDULES)), default="on-demand",
              show_default=True, help="Expert schedule: what is fetched ahead, kept and dropped (docs/moe.md).")
@click.option("--decode-prefetch", type=click.Choice(list(DECODE_PREFETCH)), default="auto", show_default=True,
              help="Whether the edgecoe schedule fetches predicted experts ahead while decoding "
                   "(auto: on CUDA devices only, where copies overlap compute).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda:N or coreml.")
@click.option("--variant", default=None, metavar="NAME",
              help="Which fine-tuned variant of a consolidated package to serve (default: its first).")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0: greedy; above 0: sample (seeded by --seed).")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Sample among the k most likely.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sample among the most likely tokens whose probabilities add up to P.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds sampling (each prompt draws from its own stream).")
@click.option("--stop-token", "stop_tokens", type=int, multiple=True, metavar="ID",
              help="Also stop at this token id (besides the package's end-of-sequence tokens).")
@click.option("--ignore-eos", is_flag=True, help="Always generate --max-new-tokens tokens (benchmarks).")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="ONNX Runtime threads per session (0: ORT decides).")
@click.option("--preload/--no-preload", default=True, show_default=True,
              help="Fill the expert budget before the first prompt (layer by layer).")
@click.option("--device-memory", default=None, metavar="SIZE|auto",
              help="Generate under a memory limit that counts the page cache, so expert loads read storage as "
                   "on a device with that much memory (auto: the expert budget plus what the runtime holds).")
@click.option("--report", "report_path", type=click.Path(path_type=Path, allow_dash=True), default=None,
              metavar="PATH", help="Write the run's figures as JSON ('-': standard output).")
@_errors_are_one_line
def generate(package: Path, prompt_texts: tuple[str, ...], prompts_file: Path | None, max_new_tokens: int,
             budget: str, policy: str, decode_prefetch: DecodePrefetch, device: str, variant: str | None,
             temperature: float, top_k: int,
             top_p: float, seed: int, stop_tokens: tuple[int, ...], ignore_eos: bool, threads: int, preload: bool,
             device_memory: str | None, report_path: Path | None) -> None:
    """Generate text from an MoE package, streaming tokens, with routed experts held within --budget."""
    from edgecoe.moe.generate import Generator, SamplingParams, read_prompts
    from edgecoe.moe.model import MoeConfig, MoeModel, moe_under_device_memory
    from edgecoe.moe.package import load_moe_package, package_kind

    _check_json_path(report_path, "--report")
    limit = _device_memory(device_memory)
    prompts = list(prompt_texts) + (read_prompts(prompts_file) if prompts_file is not None else [])
    if not prompts:
        raise click.UsageError("give a prompt: --prompt TEXT or --prompts FILE")
    if package_kind(package) != "moe":
        raise click.BadParameter(f"{package} is not an MoE package (generate runs MoE language models; "
                                 "use 'edgecoe run' for CoE packages)", param_hint="PACKAGE")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, stop_token_ids=stop_tokens, ignore_eos=ignore_eos)
    params.validate()
    console = _console(to_stderr=report_path is not None and str(report_path) == "-")
    config = MoeConfig(budget=budget, policy=policy, device=device, intra_op_threads=threads, preload=preload,
                       decode_prefetch=decode_prefetch, variant=variant)
    described: dict[str, object] | None = None
    with ExitStack() as stack:
        if limit is None:
            model = MoeModel(load_moe_package(package), config)
            stack.callback(model.close)
        else:
            model, memory = stack.enter_context(moe_under_device_memory(load_moe_package(package), config, limit))
            console.print(f"device memory: {format_bytes(memory.limit_bytes)} ({memory.mechanism})"
                          + (f"; {escape(memory.note)}" if memory.note else ""), highlight=False)
        _, report = _generate_all(console, Generator(model), prompts, params, max_new_tokens)
        if limit is not None:
            described = memory.describe()
    out = report.to_dict()
    if described is not None:
        out["device_memory"] = described
    console.print(
        f"{report.num_prompt_tokens} prompt + {report.num_generated_tokens} generated tokens; "
        f"first token {report.ttft_ms:.0f} ms, decode {report.decode_tokens_per_s:.1f} tok/s; "
        f"{report.num_expert_loads} expert loads ({report.num_prefetched} ahead of need; hit rate "
        f"{report.expert_hit_rate:.0%}, {format_bytes(report.bytes_loaded)}"
        + (f", {format_bytes(report.storage_read_bytes)} read from storage" if report.storage_read_bytes else "")
        + f"); experts peak {format_bytes(report.peak_expert_bytes)} of "
        f"{format_bytes(report.expert_budget_bytes)} budget; peak RSS {format_bytes(report.peak_rss_bytes)}",
        highlight=False)
    if report_path is not None:
        _write_json(report_path, out, console)


def _generate_all(console: Console, generator: Any, prompts: list[str], params: Any,
                  max_new_tokens: int) -> tuple[list[str], Any]:
    """Generate with a live display: one prompt on a terminal streams, otherwise a progress bar."""
    texts = [""] * len(prompts)
    streaming = len(prompts) == 1 and console.is_terminal
    with _progress(console, rate=True) as progress:
        task = progress.add_task("generating", total=len(prompts) * max_new_tokens, item="", rate="")
        started = time.perf_counter()
        if streaming:
            progress.stop()
            console.print(escape(printable(prompts[0])), end="", style="dim", highlight=False)
        for event in generator.stream(prompts, params):
            texts[event.prompt_index] += event.text
            if streaming:
                console.print(escape(printable(event.text)), end="", highlight=False)
                continue
            rate = progress.tasks[task].completed / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, rate=f"{rate:.1f} tok/s")
    if streaming:
        console.print()
    else:
        for prompt, text in zip(prompts, texts, strict=True):
            console.print(f"[dim]{escape(printable(prompt))}[/dim]{escape(printable(text))}", highlight=False)
    return texts, generator.last_report


@main.command(epilog=_epilog("edgecoe trace models/moe-tiny --prompts calibration.txt -o calibration.npz"))
@click.argument("package", type=PACKAGE)
@click.option("--prompts", "prompts_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Prompts to trace, one per line (a calibration set: keep the prompts you report on apart).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Trace file to write (.npz).")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Greedy tokens generated per prompt.")
@_errors_are_one_line
def trace(package: Path, prompts_file: Path, output: Path, max_new_tokens: int) -> None:
    """Record an MoE package's routing at every decode step over a set of prompts (for predictors)."""
    from edgecoe.moe.generate import read_prompts
    from edgecoe.moe.model import MoeConfig, MoeModel
    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.trace import record_trace

    _check_json_path(output, "--output")
    prompts = read_prompts(prompts_file)
    console = _console()
    model = MoeModel(load_moe_package(package), MoeConfig())
    try:
        with console.status(f"tracing {len(prompts)} prompts x {max_new_tokens} tokens"):
            recorded = record_trace(model, prompts, max_new_tokens=max_new_tokens)
    finally:
        model.close()
    recorded.save(output)
    console.print(f"wrote {escape(str(output))}: {len(recorded.layer)} routing records from {len(prompts)} prompts")


@main.group()
def predictor() -> None:
    """Train the next-layer expert predictor an MoE package ships."""


@predictor.command("train", epilog=_epilog(
    "edgecoe predictor train calibration.npz --eval held-out.npz --package models/moe-tiny"))
@click.argument("trace_path", metavar="TRACE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--eval", "eval_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trace of other prompts, to measure every predictor on (never trained on).")
@click.option("--package", "package_path", required=True, type=PACKAGE,
              help="The MoE package traced; the learned predictor is installed into it.")
@click.option("--no-install", is_flag=True, help="Compare the predictors only; leave the package as it is.")
@_json_option("each predictor's recall and precision")
@_errors_are_one_line
def predictor_train(trace_path: Path, eval_path: Path, package_path: Path, no_install: bool,
                    json_path: Path | None) -> None:
    """Train predictors on TRACE, compare them on --eval, and install the learned one into --package."""
    from rich.table import Table

    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.predictors import activation_matrices, compare_predictors, install_predictor
    from edgecoe.moe.trace import RoutingTrace

    _check_json_path(json_path)
    package = load_moe_package(package_path)
    console = _console(to_stderr=json_path is not None and str(json_path) == "-")
    train_trace = RoutingTrace.load(trace_path)
    result = compare_predictors(package, train_trace, RoutingTrace.load(eval_path))
    table = Table(title=f"next-layer experts on {escape(eval_path.name)} (held out)")
    table.add_column("predictor")
    for n in result.top_n:
        table.add_column(f"recall@{n}", justify="right")
        table.add_column(f"precision@{n}", justify="right")
    for name, quality in result.quality.items():
        table.add_row(name, *(f"{q:.1%}" for n in result.top_n for q in (quality[n].recall, quality[n].precision)))
    console.print(table)
    if not no_install:
        learned = result.quality["learned"]
        install_predictor(package_path, result.weights, trained_on=trace_path.name,
                          recall={str(n): learned[n].recall for n in result.top_n},
                          precision={str(n): learned[n].precision for n in result.top_n},
                          activations=activation_matrices(train_trace, package.manifest.model.num_layers))
        console.print(f"installed the learned predictor and {escape(trace_path.name)}'s expert activation "
                      f"matrices into {escape(str(package_path))}")
    if json_path is not None:
        _write_json(json_path, result.to_dict(), console)


# -- workloads ---------------------------------------------------------------------------
@main.group()
def workload() -> None:
    """Generate and check workload traces (JSONL)."""


@workload.command("generate", epilog=_epilog(
    "edgecoe workload generate models/pcb-small -o w.jsonl --requests 2000 --rate 250 --seed 3"))
@click.argument("package", type=PACKAGE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Trace file to write (JSONL).")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Requests in the trace.")
@click.option("--dist", default="zipf:1.1", show_default=True, help="uniform or zipf:S over the entry key's values.")
@click.option("--rate", "rate_rps", type=float, default=None, help="Mean arrivals per second (default: all at t=0).")
@click.option("--arrival", type=click.Choice(["poisson", "uniform"]), default="poisson", show_default=True,
              help="Arrival process at --rate.")
@click.option("--go-on", type=float, default=None,
              help="Share of requests the first expert passes on (default: the package's hint).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the trace.")
@click.option("--samples", "samples_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Real inputs: DIR/VALUE/*.npz, one sample request each (arrays named by package input), per "
                   "value of the entry key; the trace must be written inside a directory holding DIR.")
@click.option("--streams", type=click.IntRange(1, 100_000), default=4, show_default=True,
              help="With --samples: streams the requests to a stateful expert are spread over.")
@_errors_are_one_line
def workload_generate(package: Path, output: Path, num_requests: int, dist: str, rate_rps: float | None,
                      arrival: str, go_on: float | None, seed: int, samples_dir: Path | None, streams: int) -> None:
    """Generate a trace of requests for PACKAGE."""
    from edgecoe.workload import generate_from_samples, generate_workload

    pkg = edgecoe.load_package(package, verify="quick")
    if samples_dir is not None:
        trace = generate_from_samples(pkg.manifest, samples_dir, num_requests=num_requests, dist=dist,
                                      rate_rps=rate_rps, arrival=arrival, seed=seed, streams=streams,  # type: ignore[arg-type]
                                      relative_to=output.resolve().parent)
    else:
        trace = generate_workload(pkg.manifest, num_requests=num_requests, dist=dist, rate_rps=rate_rps,
                                  arrival=arrival, go_on=go_on, seed=seed)  # type: ignore[arg-type]
    trace.write(output)
    span = trace.requests[-1].arrival_ms / 1000.0
    click.echo(f"wrote {output}: {len(trace)} requests over {span:.1f} s ({dist}, seed {seed})")


@workload.command("check", epilog=_epilog("edgecoe workload check w.jsonl models/pcb-small"))
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("package", required=False, type=PACKAGE)
@_errors_are_one_line
def workload_check(trace: Path, package: Path | None) -> None:
    """Validate TRACE for PACKAGE (default: the bundled demo) exactly as `edgecoe run` does, and summarise it."""
    from edgecoe.workload import read_workload

    parsed = read_workload(trace)
    pkg = edgecoe.load_package(package or _demo_package(_console()), verify="quick")
    refuse_bad_requests(parsed, pkg.manifest)
    span = parsed.requests[-1].arrival_ms / 1000.0
    click.echo(printable(f"{trace}: {len(parsed)} requests over {span:.1f} s, valid for {pkg.name}"))


# -- profile -----------------------------------------------------------------------------
@main.command(epilog=_epilog("edgecoe profile models/pcb-small --quick -o device_profiles/mine.json",
                             "edgecoe profile models/pcb --device cuda:0 -o device_profiles/gpu.json",
                             "edgecoe profile models/published --workload trace.jsonl --transforms edgecoe.apps.ocr "
                             "-o device_profiles/pub.json"))
@click.argument("package", type=PACKAGE)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda:N or coreml.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Profile JSON to write, e.g. device_profiles/NAME.json.")
@click.option("--name", default=None, help="Profile name (default: from the output file name).")
@click.option("--quick", is_flag=True, help="Fewer batch sizes, repeats and samples (pcb-small in under a minute).")
@click.option("--memory-limit", default=None,
              help="Memory experts may use on the device: bytes, 8GB, or 50% of available memory.")
@click.option("--no-search", is_flag=True, help="Skip the allocation search: keep every expert that fits.")
@click.option("--workload", "workload_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The sample the allocation search serves (default: generated; packages of published models "
                   "need real inputs: `edgecoe workload generate --samples`).")
@_transforms_option
@_errors_are_one_line
def profile(package: Path, device: str, output: Path, name: str | None, quick: bool, memory_limit: str | None,
            no_search: bool, workload_path: Path | None, transforms_source: str | None) -> None:
    """Measure PACKAGE on DEVICE and write a device profile (costs, footprints, allocation).

    A profile written into device_profiles/ becomes `edgecoe run`'s default for this machine and
    package (run says which profile it picked).
    """
    from edgecoe.config import parse_budget
    from edgecoe.memory import available_memory_bytes
    from edgecoe.profile import save_profile
    from edgecoe.profiler.run import ProfileSettings, check_device, profile_package

    check_device(device)
    pkg = edgecoe.load_package(package, verify="quick")
    from edgecoe.workload import read_workload

    overrides: dict[str, Any] = {"search": not no_search, "transforms": _load_transforms(transforms_source)}
    if workload_path is not None:
        overrides["workload"] = read_workload(workload_path)
    if memory_limit is not None:
        overrides["memory_limit_bytes"] = parse_budget(memory_limit, total_bytes=available_memory_bytes())
    settings = ProfileSettings.quick(**overrides) if quick else ProfileSettings(**overrides)
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task(f"profiling {escape(pkg.name)} on {device}", total=None, item="")

        def step(what: str, done: int, total: int) -> None:
            progress.update(task, total=max(total, 1), completed=done, item=escape(what))
            progress.console.print(f"  {escape(what)}")

        result = profile_package(pkg, device=device, name=name or output.stem, settings=settings, progress=step)
        progress.update(task, total=1, completed=1, item="done")
    save_profile(result, output)
    alloc = result.allocation
    console.print(f"wrote {escape(str(output))}")
    for arch, by_kind in sorted(result.costs.items()):
        for kind, cost in by_kind.items():
            console.print(f"  {escape(arch)} on {kind}: K {cost.k_ms:.3f} ms/item, B {cost.b_ms:.3f} ms "
                          f"(fit error {100 * (cost.fit_max_rel_error or 0):.1f} %), max batch {cost.max_batch}, "
                          f"load cold {cost.load_cold_ms or 0:.1f} / warm {cost.load_warm_ms or 0:.1f} ms, "
                          f"resident footprint {format_bytes(cost.footprint_bytes or 0)}")
    if alloc is not None:
        console.print(f"  allocation: {alloc.num_resident} experts resident, budget {format_bytes(alloc.budget_bytes)}, "
                      f"executors {format_counts(alloc.num_executors)} ({alloc.stop_reason})")


# -- bench -------------------------------------------------------------------------------
@main.command(epilog=_epilog(
    "edgecoe bench --requests 500                                   every entry on the demo",
    "edgecoe bench models/pcb --policies samba,edgecoe,all-resident --requests 2000 --json bench.json",
    "edgecoe bench --paper numa --requests 2500 --arrival uniform  CoServe's setting, simulated",
    "edgecoe bench --simulate --profile x86-2core-cpu --sweep budget=10,25,50 --plots plots/",
    "edgecoe bench models/moe-large --budget 25% --repeat 3 --prompts held-out.txt   MoE schedules side by side",
    "edgecoe bench models/moe-large --policies on-demand,edgecoe,accelerate --checkpoint models/moe-large-hf"))
@click.argument("package", required=False, type=PACKAGE)
@click.option("--policies", default=None,
              help=f"Comma-separated entries (default: {', '.join(DEFAULT_BENCH_ENTRIES)}; all: "
                   f"{', '.join(BENCH_ENTRIES)}).")
@click.option("--ablation", is_flag=True, help=f"The paper's ablation: {', '.join(ABLATION)}.")
@click.option("--budget", default="25%", show_default=True,
              help="Expert memory: a share of all experts' resident footprint (25%), a size (2GB) or bytes.")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Requests in the generated trace.")
@click.option("--dist", default="zipf:1.1", show_default=True, help="uniform or zipf:S over the entry key's values.")
@click.option("--rate", "rate_rps", type=float, default=250.0, show_default=True, help="Arrivals per second.")
@click.option("--arrival", type=click.Choice(["poisson", "uniform"]), default="poisson", show_default=True,
              help="Arrival process at --rate.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed of the trace (and simulated routing).")
@click.option("--seeds", default=None, metavar="S1,S2,...",
              help="Several seeds: each its own trace; the table and JSON give medians and ranges over all runs "
                   "(overrides --seed).")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Runs of every entry on each seed's trace (medians and ranges when more than one).")
@click.option("--simulate", is_flag=True, help="Virtual clock with a profile's costs instead of real sessions.")
@click.option("--profile", "profile_name", default=None, help="Device profile (file or name in device_profiles/).")
@click.option("--paper", type=click.Choice(["numa", "uma"]), default=None,
              help="Simulate CoServe's setting: 350 synthetic experts on the reference NUMA or UMA profile.")
@click.option("--sweep", default=None, help="KIND=V1,V2,...: budget (percent), skew (zipf S), rate (req/s) or executors.")
@click.option("--slo-ms", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MS",
              help="A latency objective: the table and JSON add goodput (requests finished within it per second).")
@click.option("--device-memory", default=None, metavar="SIZE|auto",
              help="Serve each entry under a memory limit that counts the page cache, so switches read storage "
                   "as on a small device; auto: the expert budget plus the runtime's fixed overhead.")
@_json_option("every entry's numbers and reports")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write PNG plots into this directory (needs the plots extra).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a Chrome/Perfetto timeline of loads, evictions and batches (last sweep point; "
                   "MoE: the edgecoe entry's first repeat).")
@click.option("--prompts", "prompts_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="MoE: prompts, one per line (default: the demo's held-out prompts).")
@click.option("--num-prompts", type=click.IntRange(1, 256), default=8, show_default=True,
              help="MoE: how many of the prompts to run.")
@click.option("--new-tokens", type=click.IntRange(1, 4096), default=24, show_default=True,
              help="MoE: tokens generated per prompt.")
@click.option("--modes", default="page-cache,device-memory", show_default=True,
              help="MoE: page-cache (loads copy from memory) and/or device-memory (loads read storage).")
@click.option("--checkpoint", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="MoE: the Hugging Face checkpoint the package came from (adds the accelerate entry).")
@click.option("--gguf", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="MoE: the checkpoint as GGUF (adds the llama.cpp entry; needs llama-cpp-python); written "
                   "from --checkpoint first if the file does not exist.")
@click.option("--concurrent-chunks", default=None, metavar="N1,N2,...",
              help="MoE: also run all prompts at once through the continuous batcher, once per prefill chunk size.")
@click.option("--workload", "workload_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Replay this JSONL trace (e.g. from `edgecoe workload generate --samples`) instead of "
                   "generating one; --requests, --dist, --rate, --arrival and --seeds then do not apply.")
@_transforms_option
@_errors_are_one_line
def bench(package: Path | None, policies: str | None, ablation: bool, budget: str | None, num_requests: int, dist: str,
          rate_rps: float, arrival: str, seed: int, seeds: str | None, repeat: int, simulate: bool,
          profile_name: str | None, paper: str | None, sweep: str | None, slo_ms: float | None,
          device_memory: str | None,
          json_path: Path | None, plots_dir: Path | None, trace_path: Path | None, prompts_path: Path | None,
          num_prompts: int, new_tokens: int, modes: str, checkpoint: Path | None, gguf: Path | None,
          concurrent_chunks: str | None, workload_path: Path | None, transforms_source: str | None) -> None:
    """Compare policies side by side on one trace of PACKAGE (default: the demo), as ratios.

    On an MoE package: expert schedules and peer runtimes generating from the same held-out prompts.
    On a package of fine-tuned variants: the ways to serve them at one memory, on requests of mixed
    variants (--checkpoint DIR holds each variant's own checkpoint, DIR/NAME)."""
    from edgecoe.moe.package import package_kind

    if package is not None and package_kind(package) == "moe" and _has_variants(package):
        source = click.get_current_context().get_parameter_source
        defaulted = {name: source(name) is click.core.ParameterSource.DEFAULT
                     for name in ("num_requests", "rate_rps", "dist", "budget")}
        # a variant bench's own defaults: the package's bytes as the memory, a load moe-tiny's variants keep up with
        _bench_variants(package, checkpoints=checkpoint, policies=policies,
                        memory=None if defaulted["budget"] else budget, repeat=repeat,
                        num_requests=400 if defaulted["num_requests"] else num_requests,
                        rate_rps=40.0 if defaulted["rate_rps"] else rate_rps,
                        dist="uniform" if defaulted["dist"] else dist, seed=seed, new_tokens=new_tokens,
                        prompts_path=prompts_path, json_path=json_path)
        return
    if package is not None and package_kind(package) == "moe":
        _bench_moe(package, policies=policies, budget=budget or "25%", repeat=repeat, prompts_path=prompts_path,
                   num_prompts=num_prompts, new_tokens=new_tokens, modes=modes, checkpoint=checkpoint, gguf=gguf,
                   concurrent_chunks=concurrent_chunks, json_path=json_path, plots_dir=plots_dir,
                   trace_path=trace_path)
        return
    from edgecoe.bench import paper_package, run_bench
    from edgecoe.bench.harness import RepeatedBench, entry_config
    from edgecoe.bench.report import render_repeated, render_table, sweep_points, write_plots
    from edgecoe.profiler.select import best_profile, resolve_profile
    from edgecoe.timeline import Timeline, write_trace
    from edgecoe.workload import generate_workload, read_workload

    entries = list(ABLATION) if ablation else (policies.split(",") if policies else list(DEFAULT_BENCH_ENTRIES))
    transforms = _load_transforms(transforms_source)
    replayed = read_workload(workload_path) if workload_path is not None else None
    if replayed is not None and (seeds or (sweep and not sweep.startswith(("budget=", "executors=")))):
        raise click.UsageError("--workload replays one trace: --seeds and dist/rate sweeps need generated traces")
    for entry in entries:
        entry_config(entry, 1, 1)  # an unknown name fails here, before any work
    points = sweep_points(sweep)
    limit = _device_memory(device_memory)
    if limit is not None and (simulate or paper):
        raise click.BadParameter("limits real serving; a simulation reads no storage", param_hint="--device-memory")
    seed_list = _seeds(seeds) if seeds else [seed]
    _check_json_path(json_path)
    _check_json_path(trace_path, "--trace")
    _check_output_dir(plots_dir, "--plots")
    if plots_dir is not None:
        _require_matplotlib()
    console = _console(to_stderr=json_path is not None and str(json_path) == "-")
    profile = None
    if paper:
        simulate = True
        pkg = paper_package()
        profile, _ = resolve_profile("reference-numa-x86-rtx3080ti" if paper == "numa" else "reference-uma-apple-m2-24gb")
        if budget == "25%":  # the paper's setting: each processor's own memory, not a share
            budget = None
    else:
        pkg = edgecoe.load_package(package or _demo_package(console), verify="quick")
        if profile_name:
            profile, _ = resolve_profile(profile_name)
        elif (match := best_profile(pkg)) is not None:
            profile = match.profile
    results: list[tuple[str, RepeatedBench]] = []
    timelines: dict[str, Timeline] = {}
    for index, point in enumerate(points):
        point_dist = point.dist or dist
        point_rate = point.rate_rps if point.rate_rps is not None else rate_rps
        point_budget = point.budget or budget
        repeated = RepeatedBench()
        for run_seed in seed_list:
            trace = replayed or generate_workload(pkg.manifest, num_requests=num_requests, dist=point_dist,
                                                  rate_rps=point_rate, arrival=arrival, seed=run_seed)  # type: ignore[arg-type]
            for run in range(repeat):
                where = f"simulated with {profile.name}" if simulate and profile else "real sessions"
                which = f"; seed {run_seed}, run {run + 1}/{repeat}" if len(seed_list) > 1 or repeat > 1 else ""
                shape = (f"trace {escape(str(workload_path))}" if replayed is not None
                         else f"{point_dist}, {point_rate:g} req/s ({arrival})")
                console.print(f"[bold]{escape(pkg.name)}[/bold]{' ' + point.label if point.label else ''}: "
                              f"{len(trace)} requests, {shape}; "
                              f"budget {point_budget or 'per processor from the profile'}; {escape(where)}{which}")
                last = index == len(points) - 1 and run_seed == seed_list[-1] and run == repeat - 1
                with _bench_progress(console, entries, len(trace), simulate) as (on_warm, on_progress, on_report):
                    result = run_bench(pkg, trace, entries=entries, budget=point_budget, profile=profile,
                                       simulate=simulate, seed=run_seed, num_executors=point.num_executors,
                                       timelines=timelines if trace_path and last else None, device_memory=limit,
                                       slo_ms=slo_ms, transforms=transforms,
                                       on_warm=on_warm, on_progress=on_progress, on_report=on_report)
                render_table(console, result)
                repeated.runs.append((run_seed, run, result))
        if len(repeated.runs) > 1:
            render_repeated(console, repeated)
        results.append((point.label, repeated))
    if json_path is not None:
        _write_json(json_path, {"points": [{"label": label, **r.to_dict()} for label, r in results]}, console)
    if plots_dir:
        for path in write_plots([(label, r.first) for label, r in results], plots_dir):
            console.print(f"wrote {escape(str(path))}")
    if trace_path:
        path = write_trace(timelines, trace_path)
        console.print(f"wrote {escape(str(path))} (open in ui.perfetto.dev or chrome://tracing)")


def _has_variants(package: Path) -> bool:
    from edgecoe.moe.package import load_moe_package

    return bool(load_moe_package(package).manifest.variants)


def _bench_variants(package: Path, *, checkpoints: Path | None, policies: str | None, memory: str | None,
                    repeat: int, num_requests: int, rate_rps: float, dist: str, seed: int, new_tokens: int,
                    prompts_path: Path | None, json_path: Path | None) -> None:
    from rich.table import Table

    from edgecoe.config import parse_budget
    from edgecoe.moe.generate import read_prompts
    from edgecoe.moe.package import load_moe_package
    from edgecoe.moe.variant_bench import ENTRIES, EntryResult, VariantWorkload, run_variant_bench

    _check_json_path(json_path)
    if checkpoints is None:
        raise click.UsageError("a variant package's bench runs each variant's own model too: give --checkpoint DIR "
                               "holding one Hugging Face checkpoint per variant, DIR/NAME")
    manifest = load_moe_package(package).manifest
    names = [v.name for v in manifest.variants]
    missing = [n for n in names if not (checkpoints / n / "config.json").is_file()]
    if missing:
        raise click.BadParameter(f"no checkpoint for variants {missing} under {checkpoints}", param_hint="--checkpoint")
    total = sum(f.bytes for f in manifest.files())
    held = total if memory is None else parse_budget(memory, total_bytes=total)
    entries = policies.split(",") if policies else list(ENTRIES)
    unknown = [e for e in entries if e not in ENTRIES]
    if unknown:
        raise click.BadParameter(f"unknown entries {unknown}; valid: {', '.join(ENTRIES)}", param_hint="--policies")
    console = _console(to_stderr=json_path is not None and str(json_path) == "-")
    console.print(f"[bold]{escape(package.name)}[/bold]: {len(names)} variants, {num_requests} requests at "
                  f"{rate_rps:g}/s ({escape(dist)}), {new_tokens} tokens each, memory {format_bytes(held)}, "
                  f"{repeat} repeat(s)")

    def on_result(rep: int, result: EntryResult) -> None:
        console.print(f"  repeat {rep + 1}/{repeat} {escape(result.entry)} done")

    result = run_variant_bench(package, {n: checkpoints / n for n in names},
                               workload=VariantWorkload(num_requests=num_requests, rate_rps=rate_rps, dist=dist,
                                                        seed=seed),
                               new_tokens=new_tokens, memory=held, repeat=repeat, entries=entries,
                               prompts=read_prompts(prompts_path) if prompts_path else None, on_result=on_result)
    table = Table(title=f"{escape(package.name)}: medians of {repeat} repeat(s)")
    for column in ("entry", "memory", "switches", "tokens/s", "turnaround mean ms", "p50", "p99", "first token p50"):
        table.add_column(column, justify="left" if column == "entry" else "right", no_wrap=column == "entry")
    for entry, row in result["summary"].items():
        table.add_row(escape(entry), format_bytes(row["memory_bytes"]), f"{row['switches']:.0f}",
                      f"{row['tokens_per_s']:.0f}", f"{row['turnaround_mean_ms']:.0f}",
                      f"{row['turnaround_p50_ms']:.0f}", f"{row['turnaround_p99_ms']:.0f}", f"{row['ttft_p50_ms']:.0f}")
    console.print(table)
    if json_path is not None:
        _write_json(json_path, result, console)


def _bench_moe(package: Path, *, policies: str | None, budget: str, repeat: int, prompts_path: Path | None,
               num_prompts: int, new_tokens: int, modes: str, checkpoint: Path | None, gguf: Path | None,
               concurrent_chunks: str | None, json_path: Path | None, plots_dir: Path | None,
               trace_path: Path | None) -> None:
    import shutil
    import tempfile

    from rich.table import Table

    from edgecoe.moe.bench import SCHEDULE_ENTRIES, MoeBenchSpec, run_moe_bench, token_agreement, write_plots
    from edgecoe.moe.demo import held_out_prompts
    from edgecoe.moe.generate import read_prompts

    _check_json_path(json_path)
    _check_json_path(trace_path, "--trace")
    _check_output_dir(plots_dir, "--plots")
    if plots_dir is not None:
        _require_matplotlib()
    console = _console(to_stderr=json_path is not None and str(json_path) == "-")
    prompts = (read_prompts(prompts_path) if prompts_path else held_out_prompts(num_prompts))[:num_prompts]
    try:
        chunks = tuple(int(c) for c in concurrent_chunks.split(",")) if concurrent_chunks else ()
    except ValueError:
        raise click.BadParameter(f"{concurrent_chunks!r}: expected integers separated by commas",
                                 param_hint="--concurrent-chunks") from None
    if gguf is not None and not gguf.exists():
        if checkpoint is None:
            raise click.BadParameter(f"{gguf} does not exist; give --checkpoint to write it", param_hint="--gguf")
        from edgecoe.moe.peers import write_gguf

        console.print(f"writing {escape(str(gguf))} from {escape(str(checkpoint))} (float32 GGUF for llama.cpp)")
        write_gguf(checkpoint, gguf)
    # the peers join by default where what they run on is given
    default_entries = (SCHEDULE_ENTRIES + (("accelerate",) if checkpoint else ())
                       + (("llama.cpp",) if gguf else ()))
    with tempfile.TemporaryDirectory(prefix="edgecoe-timelines-") as timelines:
        spec = MoeBenchSpec(package=package, budget=budget, prompts=tuple(prompts), new_tokens=new_tokens,
                            repeat=repeat, modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                            entries=tuple(policies.split(",")) if policies else default_entries,
                            checkpoint=checkpoint, gguf=gguf, timeline_dir=Path(timelines) if trace_path else None,
                            concurrent_chunks=chunks)
        spec.validate()
        console.print(f"[bold]{escape(package.name)}[/bold]: {len(prompts)} prompts x {new_tokens} tokens, "
                      f"budget {escape(budget)}, {repeat} repeat(s), entries each in a fresh process")

        def on_result(rep: int, key: str, result: dict[str, object]) -> None:
            console.print(f"  repeat {rep + 1}/{repeat} {escape(key)} done")

        result = run_moe_bench(spec, on_result=on_result)
        if trace_path is not None:
            wanted = [Path(timelines) / f"timeline-{mode}-edgecoe.json" for mode in spec.modes]
            made = [p for p in wanted if p.is_file()] or sorted(Path(timelines).glob("*.json"))
            if made:
                shutil.copyfile(made[0], trace_path)
                console.print(f"wrote {escape(str(trace_path))} ({escape(made[0].stem)}; open in ui.perfetto.dev)")
    table = Table(title=f"{escape(package.name)}: medians of {repeat} repeat(s)")
    for column in ("entry", "TTFT ms", "decode tok/s", "e2e p50 ms", "e2e p99 ms", "e2e vs on-demand",
                   "decode vs all-res.", "prefill peak", "peak RSS", "loads", "read"):
        table.add_column(column, justify="left" if column == "entry" else "right", no_wrap=column == "entry")
    for key, row in result.summary.items():
        total = row.get("total_expert_bytes") or 1
        prefill = row.get("prefill_peak_expert_bytes")
        table.add_row(escape(key), f"{row['ttft_ms']:.0f}", f"{row['decode_tokens_per_s']:.1f}",
                      f"{row['e2e_p50_ms']:.0f}", f"{row['e2e_p99_ms']:.0f}",
                      _ratio(row.get("e2e_ms_ratio_vs_on_demand"), invert=True),
                      _ratio(row.get("decode_tokens_per_s_ratio_vs_all_resident")),
                      f"{prefill / total:.0%}" if prefill is not None else "-",
                      format_bytes(row["peak_rss_bytes"]), "-" if row.get("loads") is None else str(row["loads"]),
                      "-" if row.get("storage_read_bytes") is None else format_bytes(row["storage_read_bytes"]))
    console.print(table)
    if json_path is not None:
        _write_json(json_path, {**result.to_dict(), "token_agreement": token_agreement(result.runs)}, console)
    if plots_dir is not None:
        for path in write_plots(result.summary, plots_dir):
            console.print(f"wrote {escape(str(path))}")


def _ratio(value: object, *, invert: bool = False) -> str:
    """A ratio as ``1.23x`` (``invert``: a time ratio shown as a speed-up), or ``-``."""
    if not isinstance(value, float) or value <= 0:
        return "-"
    return f"{(1 / value if invert else value):.2f}x"


def _device_memory(text: str | None) -> int | Literal["auto"] | None:
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    from edgecoe.config import parse_budget
    from edgecoe.errors import InvalidInputError
    from edgecoe.memory import total_memory_bytes

    try:
        return parse_budget(text, total_bytes=total_memory_bytes())
    except InvalidInputError:
        raise click.BadParameter(f"{text!r}: expected a size (2GB, 1.5GiB), bytes, a share of this machine's "
                                 "memory (10%) or auto", param_hint="--device-memory") from None


def _seeds(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected integers separated by commas", param_hint="--seeds") from None
    if not values or len(set(values)) != len(values):
        raise click.BadParameter(f"{text!r}: give one or more different seeds", param_hint="--seeds")
    return values


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.BadParameter("plots need matplotlib: pip install 'edgecoe[plots]'",
                                 param_hint="--plots") from None


@contextmanager
def _bench_progress(console: Console, entries: list[str], num_requests: int,
                    simulate: bool) -> Iterator[tuple[Any, Any, Any]]:
    """Callbacks that show the cache warm-up and each entry's progress with its live request rate."""
    with _progress(console, rate=True) as progress:
        tasks: dict[str, Any] = {}
        started: dict[str, float] = {}

        def on_warm(done: int, total: int) -> None:
            if "warm" not in tasks:
                tasks["warm"] = progress.add_task("warming the optimized-model cache", total=total, item="", rate="")
            progress.update(tasks["warm"], completed=done)

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"{name:<18}", total=total, item="", rate="")
                started[name] = time.perf_counter()
            elapsed = time.perf_counter() - started[name]
            progress.update(tasks[name], completed=done,
                            rate=f"{done / elapsed:6.1f} req/s" if elapsed > 0 and done else "starting")

        def on_report(name: str, report: Any) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"{name:<18}", total=num_requests, item="", rate="")
            summary = f"{report.num_switches} switches{' (simulated)' if simulate else ''}"
            progress.update(tasks[name], completed=num_requests, rate=f"{report.throughput_rps:6.1f} req/s",
                            item=summary)
            if not console.is_terminal:  # a log gets one line per entry instead of a live bar
                progress.console.print(f"  {name}: {report.throughput_rps:.1f} req/s, {summary}")

        yield on_warm, on_progress, on_report


# -- serve -------------------------------------------------------------------------------
@main.command(epilog=_epilog(
    "edgecoe serve models/pcb-small --budget 25%                   CoE: POST /v1/infer on 127.0.0.1:8000",
    "edgecoe serve models/published --transforms edgecoe.apps.ocr --budget 30%",
    "edgecoe serve models/moe-tiny --port 8080                     MoE: OpenAI-compatible /v1/completions",
    "EDGECOE_API_KEY=secret edgecoe serve models/pcb --host 0.0.0.0 --api-key-env EDGECOE_API_KEY"))
@click.argument("package", type=PACKAGE)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind: loopback unless you choose otherwise.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--budget", default=None, help="Expert memory (CoE: default the profile's; MoE: default 100%).")
@click.option("--policy", default=None, help="CoE preset (default edgecoe) or MoE schedule (default on-demand).")
@click.option("--profile", "profile_name", default=None, help="CoE: device profile (file or name).")
@_transforms_option
@click.option("--api-key-env", default=None, metavar="VAR",
              help="Require the API key held in environment variable VAR (never put a key on the command line).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="Largest request body.")
@click.option("--timeout-s", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
              help="Longest a request waits for its result (then 504, and it is cancelled).")
@click.option("--drain-timeout-s", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM: how long accepted requests get to finish.")
@click.option("--max-queued-requests", type=click.IntRange(1, 10_000_000), default=None,
              help="CoE: requests in flight at most; beyond it requests get 429 (default: the runtime's 10,000).")
@_errors_are_one_line
def serve(package: Path, host: str, port: int, budget: str | None, policy: str | None, profile_name: str | None,
          transforms_source: str | None, api_key_env: str | None, max_body_mb: float, timeout_s: float,
          drain_timeout_s: float, max_queued_requests: int | None) -> None:
    """Serve PACKAGE over HTTP until SIGTERM or Ctrl-C (needs the serve extra)."""
    import dataclasses
    import os

    try:
        from edgecoe.serve.common import ServeConfig
        from edgecoe.serve.server import is_loopback, run_app
    except ImportError as exc:
        raise click.UsageError(f"serving needs the serve extra: pip install 'edgecoe[serve]' ({exc})") from None
    from edgecoe.moe.package import package_kind

    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise click.BadParameter(f"environment variable {api_key_env} is empty or unset", param_hint="--api-key-env")
    console = _console(to_stderr=True)
    if not is_loopback(host) and key is None:
        console.print(f"[yellow]warning:[/yellow] serving on {escape(host)} without an API key: anyone who can "
                      "reach this address can use it (--api-key-env)")
    config = ServeConfig(max_body_bytes=int(max_body_mb * 1024 * 1024), timeout_s=timeout_s, api_key=key,
                         drain_timeout_s=drain_timeout_s)
    if package_kind(package) == "moe":
        from edgecoe.moe.generate import Generator
        from edgecoe.moe.model import MoeConfig, MoeModel
        from edgecoe.moe.package import load_moe_package
        from edgecoe.serve.moe import moe_app

        model = MoeModel(load_moe_package(package), MoeConfig(budget=budget or "100%", policy=policy or "on-demand"))
        app = moe_app(Generator(model), config)
        what = f"MoE {model.manifest.name}: POST /v1/completions"
    else:
        from edgecoe.config import RuntimeConfig
        from edgecoe.profiler.select import best_profile, resolve_profile
        from edgecoe.runtime import Runtime
        from edgecoe.serve.coe import coe_app

        runtime_config = RuntimeConfig(policy=policy or "edgecoe", budget=budget)
        if max_queued_requests is not None:
            runtime_config = dataclasses.replace(runtime_config, max_queued_requests=max_queued_requests)
        runtime_config.validate()
        pkg = edgecoe.load_package(package, verify=runtime_config.verify)
        profile = resolve_profile(profile_name)[0] if profile_name else getattr(best_profile(pkg), "profile", None)
        runtime = Runtime(pkg, config=runtime_config, profile=profile, transforms=_load_transforms(transforms_source))
        app = coe_app(runtime, config)
        what = f"{pkg.name}: POST /v1/infer"
    console.print(f"{escape(what)} on http://{escape(host)}:{port} (GET /healthz, /readyz, /metrics); "
                  "SIGTERM or Ctrl-C drains and stops")
    run_app(app, host=host, port=port, drain_timeout_s=drain_timeout_s)


# -- run ---------------------------------------------------------------------------------
@main.command(epilog=_epilog(
    "edgecoe run                                         the bundled demo, built on first use",
    "edgecoe run --budget 25% --requests 1000 --rate 200 --json report.json",
    "edgecoe run models/pcb --policy coserve --workload w.jsonl",
    "edgecoe run models/pcb --simulate --profile x86-2core-cpu --requests 20000"))
@click.argument("package", required=False, type=PACKAGE)
@click.option("--profile", "profile_name", default=None,
              help="Device profile: a JSON file or a name in device_profiles/ (default: the best match "
                   "for this machine and package, else built-in defaults).")
@click.option("--policy", type=click.Choice([*PRESETS, "all-resident"]), default="edgecoe", show_default=True,
              help="Scheduling and eviction preset; all-resident: every expert preloaded and kept (needs "
                   "the memory for all of them; the bound the others are measured against).")
@click.option("--budget", default=None,
              help="Memory for resident experts per processor: bytes, 800MB, 2GiB, or 25% of all experts' "
                   "resident footprint (default: the profile's budgets).")
@click.option("--executors", "num_executors", type=click.IntRange(1, 64), default=None,
              help="Executors per processor (default: the profile's).")
@click.option("--workload", "workload_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A JSONL trace; otherwise one is generated from the options below.")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=500, show_default=True,
              help="Requests in the generated trace.")
@click.option("--dist", default="zipf:1.1", show_default=True, help="uniform or zipf:S over the entry key's values.")
@click.option("--rate", "rate_rps", type=float, default=None, help="Arrivals per second (default: all at once).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the generated trace.")
@click.option("--max-delay-ms", type=float, default=5000.0, show_default=True,
              help="Bound on queueing delay in ms (edgecoe policy).")
@click.option("--allow-cpu-fallback", is_flag=True, help="Run on CPU when a profile's provider is missing.")
@click.option("--json", "--report", "json_path", type=click.Path(path_type=Path, allow_dash=True), default=None,
              metavar="PATH", help="Write the run report as JSON to PATH ('-': standard output, the human-readable "
                                   "text then goes to standard error). --report is the old name.")
@click.option("--simulate", is_flag=True,
              help="Virtual clock with the profile's costs instead of real sessions (needs --profile with costs).")
@click.option("--device-memory", default=None, metavar="SIZE|auto",
              help="Serve under a memory limit that counts the page cache, so switches read storage as on a "
                   "small device; auto: the expert budget plus the runtime's fixed overhead.")
@click.option("--verify", type=click.Choice(["quick", "full"]), default="quick", show_default=True,
              help="Package checks before serving: quick (paths, sizes, ONNX wire format) or full (also "
                   "every checksum and every model parsed).")
@_transforms_option
@_errors_are_one_line
def run(package: Path | None, profile_name: str | None, policy: str, budget: str | None,
        num_executors: int | None, workload_path: Path | None, num_requests: int, dist: str,
        rate_rps: float | None, seed: int, max_delay_ms: float, allow_cpu_fallback: bool,
        json_path: Path | None, simulate: bool, device_memory: str | None, verify: str,
        transforms_source: str | None) -> None:
    """Serve a workload on PACKAGE (default: the bundled pcb-small demo) and report."""
    from edgecoe.config import RuntimeConfig
    from edgecoe.profiler.select import best_profile, resolve_profile
    from edgecoe.runtime import Runtime
    from edgecoe.workload import generate_workload, read_workload

    _check_json_path(json_path)
    limit = _device_memory(device_memory)
    if limit is not None and simulate:
        raise click.BadParameter("limits real serving; a simulation reads no storage", param_hint="--device-memory")
    console = _console(to_stderr=json_path is not None and str(json_path) == "-")
    all_resident = policy == "all-resident"
    if all_resident and budget is not None:
        raise click.BadParameter("all-resident holds every expert: it takes no --budget", param_hint="--budget")
    config = RuntimeConfig(policy="edgecoe" if all_resident else policy, budget="100%" if all_resident else budget,
                           num_executors=num_executors, max_delay_ms=max_delay_ms,
                           preload=True if all_resident else None,
                           allow_cpu_fallback=allow_cpu_fallback, verify=verify)  # type: ignore[arg-type]
    config.validate()
    transforms = _load_transforms(transforms_source)
    pkg = edgecoe.load_package(package or _demo_package(console), verify=config.verify)
    profile = None
    profile_note = "built-in defaults (no profile in device_profiles/ matches this machine and package)"
    if profile_name:
        profile, path = resolve_profile(profile_name)
        profile_note = f"{path} (--profile)"
    elif (match := best_profile(pkg)) is not None:
        profile = match.profile
        profile_note = f"{match.path}, picked automatically: {match.reason}; --profile picks another"
    trace = read_workload(workload_path) if workload_path else generate_workload(
        pkg.manifest, num_requests=num_requests, dist=dist, rate_rps=rate_rps, seed=seed)
    refuse_bad_requests(trace, pkg.manifest)  # all of them, before anything is served
    budget_note = f"--budget {budget}" if budget is not None else "the profile's budgets"
    if simulate:
        from edgecoe.sim import simulate as run_simulation

        if profile is None:
            raise click.UsageError("--simulate needs --profile: a device profile with per-architecture costs")
        console.print(f"{escape(pkg.name)}: {len(pkg.experts)} experts; policy {policy}; simulated")
        console.print(f"device profile: {escape(profile_note)}")
        report = run_simulation(pkg.manifest, profile, trace, config=config, seed=seed)
    else:
        with ExitStack() as stack:
            loader = None
            if limit is not None:
                from edgecoe.devicemem import sessions_under_device_memory
                from edgecoe.profile import default_profile

                loader, device = stack.enter_context(
                    sessions_under_device_memory(pkg, profile or default_profile(), config, limit))
                console.print(f"device memory: {format_bytes(device.limit_bytes)} ({device.mechanism})"
                              f"{'; ' + escape(device.note) if device.note else ''}")
            with console.status("starting: measuring footprints, preloading experts"):
                runtime = Runtime(pkg, config=config, profile=profile, loader=loader, transforms=transforms)
            report = _serve(console, runtime, trace, pkg, policy, profile_note, budget_note)
            if limit is not None:
                report.device_memory = device.describe()
    _print_report(console, report)
    if json_path is not None:
        _write_json(json_path, report.to_dict(), console)


def _serve(console: Console, runtime: Any, trace: Any, pkg: Any, policy: str, profile_note: str,
       budget_note: str) -> Any:
    with runtime:
        budgets = ", ".join(f"{p} {format_bytes(c.budget_bytes)}" for p, c in runtime.caches.items())
        console.print(f"{escape(pkg.name)}: {len(pkg.experts)} experts; policy {policy}; "
                      f"executors {format_counts(runtime.engine.executors_per_processor())}; "
                      f"start-up {runtime.startup_s:.1f} s")
        console.print(f"device profile: {escape(profile_note)}")
        console.print(f"expert budget: {budgets} (from {budget_note})")
        with _progress(console, rate=True) as progress:
            task = progress.add_task("serving", total=len(trace), item="", rate="")
            started = time.perf_counter()

            def advance(done: int, total: int) -> None:
                elapsed = time.perf_counter() - started
                progress.update(task, completed=done, rate=f"{done / elapsed:6.1f} req/s" if elapsed > 0 else "")

            return runtime.run(trace, progress=advance)


def _print_report(console: Console, report: Any) -> None:
    lat = report.latency_ms
    console.print(
        f"completed {report.num_completed}/{report.num_requests} (failed {report.num_failed}) in {report.wall_s:.1f} s"
        f"{' (virtual)' if report.simulated else ''}: [bold]{report.throughput_rps:.1f} req/s[/bold]; "
        f"latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms")
    peaks = ", ".join(f"{p} {format_bytes(b)} of {format_bytes(report.budget_bytes[p])}"
                      for p, b in report.peak_bytes.items())
    console.print(f"switches {report.num_switches} (experts loaded on demand), hits {report.num_hits}, "
                  f"prefetches {report.num_prefetches}, evictions {report.num_evictions}; "
                  f"{format_bytes(report.bytes_loaded)} of footprint loaded during the run; peak resident {peaks}")
    if report.device_memory:
        memory = report.device_memory
        hits = memory.get("limit_hits")
        console.print(f"device memory {format_bytes(int(memory['limit_bytes']))} ({memory['mechanism']})"
                      f"{f', reclaimed at the limit {hits:,} times' if hits is not None else ''}; "
                      f"{format_bytes(report.storage_read_bytes or 0)} read from storage while serving")
    for cause, count in sorted(report.errors.items(), key=lambda kv: -kv[1])[:5]:
        console.print(f"  {count} failed: {escape(cause)}")
    for expert, cause in report.quarantined.items():
        console.print(f"  [yellow]quarantined[/yellow] {escape(expert)}: {escape(cause)}")


if __name__ == "__main__":  # pragma: no cover
    entry_point()
