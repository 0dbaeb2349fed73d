"""Readable summaries of a package (``edgecoe inspect``)."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from edgecoe.package.feeds import expert_sources
from edgecoe.package.loader import Package
from edgecoe.package.manifest import (
    ArgmaxRoute,
    ExpertRecord,
    FanoutRoute,
    Manifest,
    Route,
    StopRoute,
    ThresholdRoute,
)
from edgecoe.schema import printable


def describe_route(route: Route) -> str:
    """One line per route, e.g. ``argmax(logits): 1 -> det-a; else stop``."""
    def names(targets: list[str]) -> str:
        return ", ".join(targets) if targets else "stop"

    if isinstance(route, StopRoute):
        return "stop (result)"
    if isinstance(route, FanoutRoute):
        return f"fan-out -> {names(route.next)}"
    if isinstance(route, ArgmaxRoute):
        parts = [f"={cls} -> {names(t)}" for cls, t in sorted(route.classes.items()) if t != route.default]
        return f"argmax({route.output})" + "; ".join(parts) + f"; else {names(route.default)}"
    if isinstance(route, ThresholdRoute):
        return (f"{route.reduce}({route.output}) > {route.threshold:g} -> {names(route.above)}; "
                f"else {names(route.below)}")
    raise AssertionError(route)


def package_summary(pkg: Package) -> dict[str, object]:
    """The facts ``inspect`` shows, as JSON-ready data."""
    m = pkg.manifest
    by_arch: dict[str, list[str]] = defaultdict(list)
    for name, e in m.experts.items():
        by_arch[e.architecture].append(name)
    return {
        "name": m.name,
        "path": str(pkg.root),
        "num_experts": len(m.experts),
        "total_bytes": pkg.total_bytes,
        "num_preliminary": len(pkg.graph.preliminary),
        "inputs": [s.model_dump() for s in m.inputs],
        "entry_key": m.entry.key,
        "architectures": {a: {"num_experts": len(n), "bytes": sum(m.experts[x].total_bytes for x in n)}
                          for a, n in sorted(by_arch.items())},
        "experts": {
            name: {
                "architecture": e.architecture,
                "bytes": e.total_bytes,
                "usage_probability": e.usage_probability,
                "usage_source": e.usage_source,
                "preliminary": name in pkg.graph.preliminary,
                "dependencies": pkg.graph.parents.get(name, []),
                "route": describe_route(e.route),
                "optimized_copy": e.optimized is not None,
                "reads": describe_reads(m, name),
                "glue": describe_glue(e),
            }
            for name, e in m.experts.items()
        },
        "transforms": m.transforms(),
        "constants": {n: {"dtype": c.dtype, "shape": c.shape} for n, c in m.constants.items()},
    }


def describe_reads(manifest: Manifest, name: str) -> str:
    """Where the expert's inputs come from, where not simply by name: ``x <- prepared:x, sr <- const:sr16k``."""
    parts = []
    for input_name, source in expert_sources(manifest, name).items():
        shown = {"request": f"request:{source.name}", "const": f"const:{source.name}",
                 "expert": f"{source.expert}:{source.name}", "parent": f"parent:{source.name}",
                 "prepared": f"prepared:{source.name}", "state": "stream state"}[source.kind]
        if shown not in (f"request:{input_name}", f"parent:{input_name}"):
            parts.append(f"{input_name} <- {shown}")
    return ", ".join(parts)


def describe_glue(expert: ExpertRecord) -> str:
    """Transforms around the expert, and batch facts that differ from the defaults."""
    parts = []
    if expert.prepare is not None:
        parts.append(f"prepare {expert.prepare.transform}")
    if expert.finish is not None:
        parts.append(f"finish {expert.finish.transform}")
    if expert.state:
        parts.append("stateful")
    if expert.batch.max is not None:
        parts.append(f"batch <= {expert.batch.max}")
    return ", ".join(parts)


def _shown(text: object) -> str:
    """Text from a package, safe to print: control characters escaped, rich markup inert."""
    return escape(printable(str(text)))


def render_summary(pkg: Package, console: Console) -> None:
    m = pkg.manifest
    graph = pkg.graph
    console.print(f"[bold]{_shown(m.name)}[/bold]  {_shown(pkg.root)}")
    if m.description:
        console.print(_shown(m.description))
    inputs = ", ".join(f"{s.name}: {s.dtype}{s.shape_str()}" for s in m.inputs)
    console.print(f"{len(m.experts)} experts, {pkg.total_bytes / 1e6:.1f} MB; "
                  f"{len(graph.preliminary)} preliminary (picked by metadata {_shown(repr(m.entry.key))}); "
                  f"request inputs {_shown(inputs)}")

    arch = Table(title="Architectures")
    for col in ("architecture", "experts", "MB each (avg)", "MB total"):
        arch.add_column(col, justify="right" if col != "architecture" else "left")
    groups: dict[str, list[int]] = defaultdict(list)
    for e in m.experts.values():
        groups[e.architecture].append(e.total_bytes)
    for name, sizes in sorted(groups.items()):
        arch.add_row(_shown(name), str(len(sizes)), f"{sum(sizes) / len(sizes) / 1e6:.1f}", f"{sum(sizes) / 1e6:.1f}")
    console.print(arch)

    glue = any(describe_glue(e) or describe_reads(m, n) for n, e in m.experts.items())
    table = Table(title="Experts (most likely first)")
    for col in ("expert", "arch", "MB", "usage p", "kind", "routes to", *(("reads", "glue") if glue else ())):
        table.add_column(col, justify="right" if col in ("MB", "usage p") else "left")
    ordered = sorted(m.experts.items(), key=lambda kv: (-kv[1].usage_probability, kv[0]))
    for name, e in ordered:
        kind = "preliminary" if name in graph.preliminary else "subsequent"
        p = f"{e.usage_probability:.4f}" + ("*" if e.usage_source == "measured" else "")
        extra = (_shown(describe_reads(m, name)), _shown(describe_glue(e))) if glue else ()
        table.add_row(_shown(name), _shown(e.architecture), f"{e.total_bytes / 1e6:.1f}", p, kind,
                      _shown(describe_route(e.route)), *extra)
    console.print(table)
    if m.transforms():
        console.print(f"transforms the application provides: {_shown(', '.join(m.transforms()))}")

    tree = Tree("Dependency graph (subsequent expert <- the experts that feed it)")
    subsequent = [n for n in m.experts if graph.parents.get(n)]
    for name in sorted(subsequent):
        parents = graph.parents[name]
        shown = ", ".join(parents[:6]) + (f", … (+{len(parents) - 6})" if len(parents) > 6 else "")
        tree.add(_shown(f"{name} <- {shown}"))
    if not subsequent:
        tree.add("(no subsequent experts: every expert is a leaf)")
    console.print(tree)
