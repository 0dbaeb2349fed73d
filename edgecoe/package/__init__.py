"""CoE packages: manifest schema, validating loader, atomic writer, routing rules.

The schema and routing import without onnx (the simulator and the engine use
them); the loader and writer, which read and write ONNX files, load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecoe._lazy import lazy_attributes
from edgecoe.package.manifest import MANIFEST_NAME, ExpertRecord, Manifest, TensorSpec
from edgecoe.package.routing import (
    ExpertGraph,
    declared_usage_probabilities,
    entry_expert,
    next_experts,
)

_LAZY = {  # name -> module that defines it
    "Package": "edgecoe.package.loader",
    "load_package": "edgecoe.package.loader",
    "PackageWriter": "edgecoe.package.writer",
}

if TYPE_CHECKING:
    from edgecoe.package.loader import Package, load_package
    from edgecoe.package.writer import PackageWriter


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

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
