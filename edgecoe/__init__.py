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
    ProfileError,
    SpecError,
    VerificationError,
    WorkloadError,
)
from edgecoe.package import Package, load_package
from edgecoe.config import RuntimeConfig
from edgecoe.results import CloseOutcome, Report, RequestCancelled, RequestError, Result
from edgecoe.runtime import Runtime, load

__all__ = [
    "CloseOutcome",
    "EdgecoeError",
    "ExportError",
    "InvalidInputError",
    "OnnxFileError",
    "Package",
    "PackageError",
    "Problem",
    "ProfileError",
    "Report",
    "RequestCancelled",
    "RequestError",
    "Result",
    "Runtime",
    "RuntimeConfig",
    "SpecError",
    "VerificationError",
    "WorkloadError",
    "__version__",
    "load",
    "load_package",
]
