"""edgecoe: serve Collaboration-of-Experts models on devices that hold only a fraction of them."""

from __future__ import annotations

__version__ = "0.1.0"

from edgecoe.errors import (
    EdgecoeError,
    ExportError,
    InvalidInputError,
    OnnxFileError,
    PackageError,
    Problem,
    SpecError,
    VerificationError,
    WorkloadError,
)
from edgecoe.package import Package, load_package

__all__ = [
    "EdgecoeError",
    "ExportError",
    "InvalidInputError",
    "OnnxFileError",
    "Package",
    "PackageError",
    "Problem",
    "SpecError",
    "VerificationError",
    "WorkloadError",
    "__version__",
    "load_package",
]
