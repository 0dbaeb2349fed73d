"""Loading an MoE package: every check, every problem reported at once.

Like :func:`edgecoe.package.loader.load_package` for CoE packages: the
manifest's schema, each file's path safety, presence and size (and checksum
with ``verify="full"``), files nobody declared, and a wire-format scan of each
dense ONNX model (no external data, no custom-op domains). Expert weight files
are raw numbers: any bytes are valid floats, so a quick load never hashes them
(a full verify does); a size mismatch is always caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from edgecoe.errors import OnnxFileError, PackageError, Problem
from edgecoe.moe.manifest import MoeManifest
from edgecoe.package.files import check_record, stray_entries, unsafe_path_reason
from edgecoe.package.manifest import MANIFEST_NAME, FileRecord
from edgecoe.package.onnxscan import scan_model, scanned_custom_domains
from edgecoe.schema import DocumentError, parse_json, pydantic_problems, read_document

Verify = Literal["full", "quick"]
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class MoePackage:
    """A validated MoE package on disk (every declared file present with its recorded size)."""

    root: Path
    manifest: MoeManifest

    @property
    def name(self) -> str:
        return self.manifest.name

    def path(self, record: FileRecord) -> Path:
        return self.root / record.path


def package_kind(path: str | Path) -> str:
    """``"moe"`` or ``"coe"``: which kind of package the directory holds (read from its manifest).

    A missing or unreadable manifest answers ``"coe"``: the CoE loader then
    reports what is wrong with it.
    """
    manifest = Path(path) / MANIFEST_NAME
    try:
        raw = parse_json(read_document(manifest, max_bytes=MAX_MANIFEST_BYTES * 4), MANIFEST_NAME)
    except DocumentError:
        return "coe"
    return "moe" if isinstance(raw, dict) and raw.get("kind") == "moe" else "coe"


def load_moe_package(path: str | Path, *, verify: Verify = "quick") -> MoePackage:
    """Load and validate the MoE package at ``path``.

    Raises:
        PackageError: listing every problem found, each with the file or field.
    """
    root = Path(path)
    if not root.is_dir():
        raise PackageError(root, [Problem(str(root), "does not exist or is not a directory")])
    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise PackageError(root, [Problem(MANIFEST_NAME, "missing (or not a regular file); every package has one")])
    try:
        raw = parse_json(read_document(manifest_path, max_bytes=MAX_MANIFEST_BYTES), MANIFEST_NAME)
        manifest = MoeManifest.model_validate(raw)
    except DocumentError as exc:
        raise PackageError(root, [Problem(exc.where.replace(str(manifest_path), MANIFEST_NAME), exc.message)]) from None
    except ValidationError as exc:
        raise PackageError(root, pydantic_problems(MANIFEST_NAME, exc)) from exc
    problems = _check_files(root, manifest, verify)
    if problems:
        raise PackageError(root, problems)
    return MoePackage(root=root, manifest=manifest)


def _check_files(root: Path, manifest: MoeManifest, verify: Verify) -> list[Problem]:
    problems: list[Problem] = []
    claimed: set[str] = set()
    models = {manifest.head.path, *(layer.dense.path for layer in manifest.layers)}
    for record in manifest.files():
        where = record.path
        if record.path in claimed:
            problems.append(Problem(where, "declared twice in the manifest"))
            continue
        claimed.add(record.path)
        reason = unsafe_path_reason(root, record.path)
        if reason:
            problems.append(Problem(where, reason))
            continue
        problem = check_record(root, record, where, checksum=verify == "full")
        if problem is not None:
            problems.append(problem)
            continue
        if record.path in models:
            problems += _check_model(root / record.path, where)
    problems += stray_entries(root, claimed)
    return problems


def _check_model(path: Path, where: str) -> list[Problem]:
    try:
        scan = scan_model(path)
    except OnnxFileError as exc:
        return [Problem(where, str(exc).split(": ", 1)[-1])]
    problems = []
    if scan.external_locations:
        problems.append(Problem(where, f"refers to external data {scan.external_locations[:3]}; the dense parts "
                                       "of an MoE package keep their weights inside the model"))
    domains = scanned_custom_domains(scan)
    if domains:
        problems.append(Problem(where, f"uses custom operator domains {domains}, which need code MoE packages "
                                       "may not bring"))
    return problems
