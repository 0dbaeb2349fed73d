"""CoE packages: manifest schema, validating loader, atomic writer, routing rules."""

from edgecoe.package.loader import Package, load_package
from edgecoe.package.manifest import MANIFEST_NAME, ExpertRecord, Manifest, TensorSpec
from edgecoe.package.routing import ExpertGraph, declared_usage_probabilities, entry_expert, next_experts
from edgecoe.package.writer import PackageWriter

__all__ = [
    "MANIFEST_NAME",
    "ExpertGraph",
    "ExpertRecord",
    "Manifest",
    "Package",
    "PackageWriter",
    "TensorSpec",
    "declared_usage_probabilities",
    "entry_expert",
    "load_package",
    "next_experts",
]
