"""What every file format of edgecoe shares: one strict pydantic base, safe names, one
hardened way to read a document, and one way to turn pydantic's errors into
:class:`~edgecoe.errors.Problem` records.

Manifests, export specs, device profiles, demo recipes and workload traces are
all untrusted input written by hand or by other tools, so:

- unknown fields are errors (a typo must not be ignored silently), records are
  frozen once read, and NaN and infinity are refused wherever a number is
  expected (an infinite tolerance would switch a check off);
- a document is read only from a regular file (a FIFO or a device would hang
  or never end), up to a size limit, as UTF-8;
- duplicate keys are refused (JSON and YAML would otherwise keep the last one
  silently), and so are YAML anchors and aliases (a "billion laughs" document
  expands exponentially) and nesting deeper than :data:`MAX_DEPTH`;
- names that become file names or reach the terminal follow one rule.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from edgecoe.errors import Problem

SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
"""Packages, experts and transforms: letters, digits, ``.``, ``_``, ``-``; at most 128; a letter or
digit first. Such a name is a file name on every OS and prints as itself."""

SafeName = Annotated[str, StringConstraints(pattern=SAFE_NAME_PATTERN)]

TENSOR_NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1,256}$"
"""Model inputs and outputs keep the names their exporters gave them (``input.1``,
``onnx::Gemm_0``, ``serving_default:0``), but never control characters."""

TensorName = Annotated[str, StringConstraints(pattern=TENSOR_NAME_PATTERN)]

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings in any document (manifests need about 8)."""


class StrictModel(BaseModel):
    """A frozen pydantic model that refuses unknown fields, NaN and infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DocumentError(ValueError):
    """A document could not be read or parsed; ``where`` names the file (and line), ``message`` why."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


def read_document(path: str | Path, *, max_bytes: int) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes``.

    Raises:
        DocumentError: not a regular file, too large, unreadable or not UTF-8.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise DocumentError(str(path), f"cannot be read: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)  # of what was opened, not of what the name points to now
        if not stat.S_ISREG(info.st_mode):
            raise DocumentError(str(path), "is not a regular file (a device, FIFO or directory cannot be a document)")
        if info.st_size > max_bytes:
            raise DocumentError(str(path), f"is {info.st_size} bytes; the limit is {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise DocumentError(str(path), f"grew past the limit of {max_bytes} bytes while being read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(str(path), f"is not UTF-8 text (byte {exc.start})") from None


def parse_json(text: str, where: str) -> Any:
    """JSON with duplicate keys and deep nesting refused.

    Raises:
        DocumentError: naming ``where``, the line and column, and what is wrong.
    """
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{where}:{exc.lineno}:{exc.colno}", f"not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise DocumentError(where, f"nested too deeply (the limit is {MAX_DEPTH} levels)") from None
    except _DocumentValueError as exc:
        raise DocumentError(where, str(exc)) from None
    check_depth(value, where)
    return value


def parse_yaml(text: str, where: str) -> Any:
    """YAML (safe subset) with duplicate keys, anchors/aliases and deep nesting refused.

    Raises:
        DocumentError: naming ``where``, the line, and what is wrong.
    """
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except _DocumentValueError as exc:
        raise DocumentError(where, str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        raise DocumentError(at, f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise DocumentError(where, f"nested too deeply (the limit is {MAX_DEPTH} levels)") from None
    check_depth(value, where)
    return value


def check_depth(value: Any, where: str, *, limit: int = MAX_DEPTH) -> None:
    """Refuse lists and mappings nested deeper than ``limit`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise DocumentError(where, f"nested too deeply (the limit is {limit} levels)")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


class _DocumentValueError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DocumentValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _DocumentValueError(f"{name} is not a number JSON allows")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and anchors/aliases."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _DocumentValueError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                      "allowed in edgecoe documents")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise _DocumentValueError(f"line {event.start_mark.line + 1}: YAML anchors (&{event.anchor}) are not "
                                      "allowed in edgecoe documents")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DocumentValueError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in "
                                          "one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


M = TypeVar("M", bound=BaseModel)


def load_document(path: str | Path, model: type[M], *, error: Callable[[Path, list[Problem]], Exception],
                  max_bytes: int) -> M:
    """Read, parse (YAML unless the name ends in ``.json``) and validate one document file.

    Args:
        model: the schema it must follow.
        error: builds the error to raise from (path, problems), e.g. ``ProfileError``.
        max_bytes: the largest file accepted.
    """
    path = Path(path)
    try:
        text = read_document(path, max_bytes=max_bytes)
        raw = parse_json(text, path.name) if path.suffix == ".json" else parse_yaml(text, path.name)
    except DocumentError as exc:
        raise error(path, [Problem(exc.where, exc.message)]) from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(path, pydantic_problems(path.name, exc)) from exc


def pydantic_problems(where: str, exc: ValidationError) -> list[Problem]:
    """One :class:`Problem` per pydantic error, located by its field path.

    Args:
        where: the file (and field prefix) the validated data came from.
        exc: pydantic's error, with every failing field.
    """
    out = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        out.append(Problem(f"{where}: {loc}" if loc else where, f"{err['msg']}{shown}"))
    return out


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``), safe to show on a terminal."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)
