"""The one exception tree of edgecoe.

    EdgecoeError
     ├── InvalidInputError          a user-supplied file or value is wrong
     │    ├── PackageError          a package on disk cannot be used; ``.problems`` lists each
     │    ├── SpecError             an export spec or demo recipe is wrong; ``.problems`` lists each
     │    ├── ProfileError          a device profile is wrong; ``.problems`` lists each
     │    ├── WorkloadError         a workload trace or generator argument is wrong
     │    ├── OnnxFileError         a file is not a readable ONNX model
     │    └── ProviderUnavailableError  a profile names a provider the installed onnxruntime lacks
     ├── RoutingError (ValueError)  request metadata or an expert's output matches no route
     ├── ExportError                an expert could not be exported from its source
     │    └── VerificationError     an exported expert disagrees with its source beyond tolerance
     ├── SessionError               ONNX Runtime could not create a session for a model
     ├── CacheLoadError             an expert loader failed; the cache's accounting is restored
     ├── MeasurementError           the profiler could not measure an expert
     ├── QueueFullError             submit found the runtime's queue limits reached (nothing was queued)
     └── RequestError               one request failed (``.request_id``, ``.expert``, ``.cause``)
          └── RequestCancelled      it never ran to the end: the runtime closed, or the caller cancelled it

Every error names the file, field or value at fault and what was expected. Errors
that gather several problems (a package or a spec is checked completely before
failing) carry them as :class:`Problem` records so callers and tests can inspect
each one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a user-supplied artefact.

    Attributes:
        where: the file and/or field at fault, e.g. ``manifest.json: experts.cls_a.file``.
        message: what is wrong and what was expected.
    """

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class EdgecoeError(Exception):
    """Root of every error edgecoe raises on purpose."""


class InvalidInputError(EdgecoeError):
    """Something a user supplied (file, flag, value) is wrong."""


class _ProblemsError(InvalidInputError):
    """An error that lists every problem found, not only the first."""

    what = "input"

    def __init__(self, subject: str | Path, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("an error listing problems needs at least one problem")
        self.subject = str(subject)
        self.problems = list(problems)
        count = len(self.problems)
        if count == 1:  # one line, as a CLI error should be
            super().__init__(f"{self.what} {self.subject} is invalid: {self.problems[0]}")
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.what} {self.subject} is invalid ({count} problems):\n{lines}")


class PackageError(_ProblemsError):
    """A CoE package cannot be loaded; ``problems`` lists every check that failed."""

    what = "package"


class SpecError(_ProblemsError):
    """An export spec or demo recipe is invalid; ``problems`` lists every fault."""

    what = "spec"


class ProfileError(_ProblemsError):
    """A device profile is unreadable or invalid; ``problems`` lists every fault."""

    what = "device profile"


class WorkloadError(InvalidInputError):
    """A workload trace or a workload generator argument is invalid."""


class OnnxFileError(InvalidInputError):
    """A file is not a readable ONNX model (not protobuf, truncated, unreadable)."""


class ExportError(EdgecoeError):
    """An expert could not be exported from its source (torch, optimum, ONNX file)."""


class VerificationError(ExportError):
    """An exported expert's ONNX Runtime output differs from its source's beyond tolerance."""


class ProviderUnavailableError(InvalidInputError):
    """A processor's execution provider is not in the installed onnxruntime."""


class RoutingError(EdgecoeError, ValueError):
    """A request or an expert's output cannot be routed (unknown metadata value, bad output).

    Also a ``ValueError``: routing rejects a value, and callers that only know
    the standard library's vocabulary may catch it as one.
    """


class SessionError(EdgecoeError):
    """ONNX Runtime could not create a session for a model."""


class CacheLoadError(EdgecoeError):
    """An expert loader failed; the cache's accounting is already restored."""


class MeasurementError(EdgecoeError):
    """The profiler could not measure an expert (a session failed, or no sample ran)."""


class QueueFullError(EdgecoeError):
    """``submit`` found as many requests (or input bytes) in flight as the runtime's limits allow;
    nothing was queued. Retry later, or submit with ``wait_s`` to wait for room."""


class RequestError(EdgecoeError):
    """A request failed; ``expert`` is where (None: before any expert ran)."""

    def __init__(self, request_id: str, expert: str | None, cause: str) -> None:
        self.request_id = request_id
        self.expert = expert
        self.cause = cause
        where = f"at expert {expert!r}" if expert else "before routing"
        super().__init__(f"request {request_id} failed {where}: {cause}")


class RequestCancelled(RequestError):
    """A request that never ran to the end because the runtime closed (without
    draining, or when its drain timed out)."""
