"""Loading a CoE package: every check, every problem reported at once.

``load_package`` never creates an inference session. It checks, in order:
the manifest's schema; names, routes, inputs and the graph's acyclicity; each
file's path safety, presence, size and checksum, and files nobody declared;
then each ONNX model's I/O and external-data locations against the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from edgecoe.errors import OnnxFileError, PackageError, Problem
from edgecoe.package.feeds import check_feeds
from edgecoe.package.files import check_record, stray_entries, unsafe_path_reason
from edgecoe.package.manifest import (
    MANIFEST_NAME,
    ExpertRecord,
    FileRecord,
    Manifest,
    TensorSpec,
)
from edgecoe.package.onnxmodel import (
    custom_domains,
    external_locations,
    io_specs,
    read_model,
)
from edgecoe.package.onnxscan import scan_model, scanned_custom_domains
from edgecoe.package.routing import ExpertGraph
from edgecoe.schema import DocumentError, parse_json, pydantic_problems, read_document

Verify = Literal["full", "quick"]
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # about 1,000 bytes per expert: room for 60,000 experts


@dataclass(frozen=True)
class Package:
    """A validated CoE package on disk.

    Invariant: every file the manifest names exists inside ``root`` with the
    recorded size (and, when loaded with ``verify="full"``, checksum and I/O).
    """

    root: Path
    manifest: Manifest
    graph: ExpertGraph

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def experts(self) -> dict[str, ExpertRecord]:
        return self.manifest.experts

    def model_path(self, expert: str, *, optimized: bool = False) -> Path:
        """Path of an expert's ONNX file (its ORT-optimized copy if asked and present)."""
        record = self.manifest.experts[expert]
        if optimized and record.optimized is not None:
            return self.root / record.optimized.path
        return self.root / record.model.path

    @property
    def total_bytes(self) -> int:
        """Bytes of every expert's model and external data."""
        return sum(e.total_bytes for e in self.manifest.experts.values())


def load_package(
    path: str | Path, *, verify: Verify = "full", allow_custom_ops: bool = False
) -> Package:
    """Load and validate the package at ``path``.

    Args:
        path: the package directory.
        verify: ``"full"`` also hashes every file and parses every ONNX model
            (I/O against the manifest); ``"quick"`` checks schema, graph,
            paths, sizes, and scans each model's wire format for external
            data locations, custom-op domains and truncation.
        allow_custom_ops: accept models using operator domains that need a
            custom-op library. Off by default: a package cannot bring code in.

    Raises:
        PackageError: listing every problem found, each with the file or field.
    """
    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise PackageError(root, [Problem(str(root), f"{what}; expected a package directory")])
    manifest = _read_manifest(root)
    problems: list[Problem] = []
    graph = ExpertGraph.from_manifest(manifest)
    problems += _check_names_and_routes(manifest, graph)
    file_problems, good_files = _check_files(root, manifest, verify)
    problems += file_problems
    problems += _check_models(root, manifest, good_files, allow_custom_ops, full=verify == "full")
    if problems:
        raise PackageError(root, problems)
    return Package(root=root, manifest=manifest, graph=graph)


def _read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    where = MANIFEST_NAME
    if path.is_symlink() or not path.is_file():
        raise PackageError(root, [Problem(where, "missing (or not a regular file); every package has one")])
    try:
        raw = parse_json(read_document(path, max_bytes=MAX_MANIFEST_BYTES), where)
    except DocumentError as exc:
        # the manifest's own name, not the absolute path: the package is named in the error already
        raise PackageError(root, [Problem(exc.where.replace(str(path), where), exc.message)]) from None
    if isinstance(raw, dict) and raw.get("kind") == "moe":
        raise PackageError(root, [Problem(f"{where}: kind", "this is an MoE language-model package: generate text "
                                                             "with `edgecoe generate` (edgecoe.moe), not run/bench")])
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise PackageError(root, pydantic_problems(where, exc)) from exc


def _check_names_and_routes(manifest: Manifest, graph: ExpertGraph) -> list[Problem]:
    where = MANIFEST_NAME
    problems: list[Problem] = []
    experts = manifest.experts
    entry = manifest.entry
    if manifest.metadata and entry.key not in manifest.metadata:
        problems.append(Problem(f"{where}: entry.key", f"{entry.key!r} is not a declared metadata key ({sorted(manifest.metadata)})"))
    field = manifest.metadata.get(entry.key)
    for value, name in entry.experts.items():
        if name not in experts:
            problems.append(Problem(f"{where}: entry.experts.{value}", f"unknown expert {name!r}"))
        if field is not None and field.values is not None and value not in field.values:
            problems.append(Problem(f"{where}: entry.experts.{value}", f"{value!r} is not among metadata.{entry.key}.values"))
    if entry.default is not None and entry.default not in experts:
        problems.append(Problem(f"{where}: entry.default", f"unknown expert {entry.default!r}"))

    for name, expert in experts.items():
        route = expert.route
        for target in graph.children[name]:
            if target not in experts:
                problems.append(Problem(f"{where}: experts.{name}.route", f"sends to unknown expert {target!r}"))
        output = getattr(route, "output", None)
        if output is not None and output not in {o.name for o in expert.outputs} and expert.finish is None:
            problems.append(Problem(
                f"{where}: experts.{name}.route.output",
                f"{output!r} is not an output of {name} ({[o.name for o in expert.outputs]})",
            ))
    cycle = graph.find_cycle()
    if cycle:
        problems.append(Problem(f"{where}: experts", f"routing graph has a cycle: {' -> '.join(cycle)}"))
    problems += check_feeds(manifest, graph)
    hints = manifest.workload_hints
    if hints is not None and hints.input not in {i.name for i in manifest.inputs}:
        problems.append(Problem(f"{where}: workload_hints.input", f"{hints.input!r} is not a package input"))
    return problems


def _check_files(root: Path, manifest: Manifest, verify: Verify) -> tuple[list[Problem], set[str]]:
    """Path safety, presence, size, checksum, and undeclared files. Returns (problems, good paths)."""
    problems: list[Problem] = []
    good: set[str] = set()
    claimed: dict[str, str] = {}  # relative path -> expert that declares it
    for name, expert in manifest.experts.items():
        for record in expert.files():
            where = f"{record.path} (expert {name})"
            if record.path in claimed:
                problems.append(Problem(where, f"also declared by expert {claimed[record.path]!r}"))
                continue
            claimed[record.path] = name
            reason = unsafe_path_reason(root, record.path)
            if reason:
                problems.append(Problem(where, reason))
                continue
            problem = check_record(root, record, where, checksum=verify == "full")
            if problem:
                problems.append(problem)
            else:
                good.add(record.path)
    problems += stray_entries(root, claimed)
    return problems, good


_CUSTOM_OPS = "uses custom operator domains {domains}; these need a custom-op library, refused unless allowed explicitly"


def _check_models(root: Path, manifest: Manifest, good: set[str], allow_custom_ops: bool, *,
                  full: bool) -> list[Problem]:
    """Each model (and optimized copy): external-data locations, custom-op domains, truncation.

    ``full`` parses the protobuf and also compares the declared I/O; otherwise
    the wire format is scanned, weights unread (0.3 s for pcb; a full parse
    takes 16 s): enough for what an untrusted file could abuse.
    """
    problems: list[Problem] = []
    for name, expert in manifest.experts.items():
        for record in [expert.model] + ([expert.optimized] if expert.optimized else []):
            if record.path not in good:
                continue  # already reported; parsing a corrupt file adds noise only
            where = f"{record.path} (expert {name})"
            try:
                if full:
                    model = read_model(root / record.path)
                    inputs, outputs = io_specs(model, where=record.path, dropped=expert.dropped_outputs)
                    missing = sorted(set(expert.dropped_outputs) - {o.name for o in model.graph.output})
                    if missing:
                        problems.append(Problem(where, f"dropped_outputs {missing} are not outputs of the model"))
                    locations, domains = external_locations(model), custom_domains(model)
                else:
                    scan = scan_model(root / record.path)
                    locations, domains = scan.external_locations, scanned_custom_domains(scan)
            except OnnxFileError as exc:
                problems.append(Problem(where, str(exc).split(": ", 1)[-1]))
                continue
            if full:
                problems += _compare_io(where, "inputs", expert.inputs, inputs)
                problems += _compare_io(where, "outputs", expert.outputs, outputs)
            problems += _check_external(root, record, name, expert, locations, where)
            if domains and not allow_custom_ops:
                problems.append(Problem(where, _CUSTOM_OPS.format(domains=domains)))
    return problems


def _compare_io(where: str, kind: str, declared: list[TensorSpec], actual: list[TensorSpec]) -> list[Problem]:
    if [s.model_dump() for s in declared] == [s.model_dump() for s in actual]:
        return []
    return [Problem(where, f"declared {kind} {_fmt(declared)} do not match the model's {_fmt(actual)}")]


def _fmt(specs: list[TensorSpec]) -> str:
    return "[" + ", ".join(f"{s.name}:{s.dtype}{s.shape_str()}" for s in specs) + "]"


def _check_external(
    root: Path, record: FileRecord, name: str, expert: ExpertRecord, locations: list[str], where: str
) -> list[Problem]:
    problems = []
    model_dir = Path(record.path).parent
    declared = {f.path for f in expert.external_data}
    for location in locations:
        rel = (model_dir / location).as_posix() if str(model_dir) != "." else location
        reason = unsafe_path_reason(root, rel) if not Path(location).is_absolute() else f"external data location {location!r} is absolute"
        if reason:
            problems.append(Problem(where, f"external data: {reason}"))
        elif rel not in declared:
            problems.append(Problem(where, f"external data location {location!r} is not declared in experts.{name}.external_data"))
    return problems
