"""edgecoe: serve Collaboration-of-Experts models on devices that hold only a fraction of them.

The public API is imported lazily: ``import edgecoe`` (and ``edgecoe.cache``,
``edgecoe.sched``, ``edgecoe.engine``) needs neither ONNX Runtime nor onnx;
``edgecoe.load``, ``edgecoe.Runtime`` and ``edgecoe.load_package`` bring them in
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgecoe.errors import (
    EdgecoeError,
    ExportError,
    InvalidInputError,
    OnnxFileError,
    PackageError,
    Problem,
    ProfileError,
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
    "load": "edgecoe.runtime",
}

if TYPE_CHECKING:
    from edgecoe.config import RuntimeConfig
    from edgecoe.package import Package, load_package
    from edgecoe.results import CloseOutcome, Report, Result
    from edgecoe.runtime import Runtime, load


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecoe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
