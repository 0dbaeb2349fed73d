"""edgecoe: serve Collaboration-of-Experts models on devices that hold only a fraction of them.

The public API is imported lazily: ``import edgecoe`` (and ``edgecoe.cache``,
``edgecoe.sched``, ``edgecoe.engine``) needs neither ONNX Runtime nor onnx;
``edgecoe.load``, ``edgecoe.Runtime`` and ``edgecoe.load_package`` bring them in
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecoe._lazy import lazy_attributes
from edgecoe.errors import (
    EdgecoeError,
    ExportError,
    InvalidInputError,
    OnnxFileError,
    PackageError,
    Problem,
    ProfileError,
    QueueFullError,
    RequestCancelled,
    RequestError,
    SpecError,
    VerificationError,
    WorkloadError,
)

__version__ = "0.1.0"

# name -> module that defines it (imported on first access)
_LAZY = {
    "Package": "edgecoe.package",
    "load_package": "edgecoe.package",
    "RuntimeConfig": "edgecoe.config",
    "CloseOutcome": "edgecoe.results",
    "Report": "edgecoe.results",
    "Result": "edgecoe.results",
    "Runtime": "edgecoe.runtime",
    "load": "edgecoe.api",
}

if TYPE_CHECKING:
    from edgecoe.api import load
    from edgecoe.config import RuntimeConfig
    from edgecoe.package import Package, load_package
    from edgecoe.results import CloseOutcome, Report, Result
    from edgecoe.runtime import Runtime


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

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
    "QueueFullError",
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
