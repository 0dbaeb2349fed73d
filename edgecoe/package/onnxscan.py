"""The security-relevant facts of an ONNX file, read from its protobuf wire
format without parsing the weights.

``onnx.load`` copies every initializer into memory: 16 s for the 3.1 GB pcb
demo, too slow for every start-up. What an untrusted package can abuse is
small: external-data locations (files outside the package) and operator
domains (custom-op libraries). This scanner walks only the messages that hold
them (graph, nodes, attributes, tensors, subgraphs, functions), skips every
other field by its length prefix (weights are never read, on an mmap the
pages are never even touched), and fails on a truncated or non-protobuf file.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgecoe.errors import OnnxFileError

# Field numbers from onnx.proto (stable across ONNX versions).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_OUTPUT, _GRAPH_SPARSE_INITIALIZER = 1, 5, 12, 15
_NODE_ATTRIBUTE, _NODE_DOMAIN = 5, 7
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_FUNCTION_NODE, _FUNCTION_DOMAIN = 7, 10
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs deeper than this are not a real model


@dataclass
class ModelScan:
    """What :func:`scan_model` found."""

    has_graph_outputs: bool = False
    node_domains: set[str] = field(default_factory=set)
    function_domains: set[str] = field(default_factory=set)
    external_locations: list[str] = field(default_factory=list)


class _Truncated(Exception):
    pass


class _Ambiguous(Exception):
    """A field ONNX Runtime and the onnx library may read differently (a key given twice)."""


def scan_model(path: str | Path) -> ModelScan:
    """Scan an ONNX file.

    Raises:
        OnnxFileError: unreadable, empty, truncated, not protobuf, or no graph with outputs.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise OnnxFileError(f"{path}: empty file, not an ONNX model")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                scan = ModelScan()
                _Scanner(data, scan).model(0, len(data))
    except OSError as exc:
        raise OnnxFileError(f"{path}: cannot read ONNX file: {exc.strerror or exc}") from exc
    except _Truncated as exc:
        raise OnnxFileError(f"{path}: not a valid ONNX model ({exc}); the file may be truncated or of another format") from None
    except _Ambiguous as exc:
        raise OnnxFileError(f"{path}: refused: {exc}") from None
    if not scan.has_graph_outputs:
        raise OnnxFileError(f"{path}: parsed as protobuf but holds no ONNX graph with outputs")
    return scan


class _Scanner:
    def __init__(self, data: mmap.mmap, scan: ModelScan) -> None:
        self.data = data
        self.scan = scan

    def _varint(self, i: int, end: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            if i >= end or shift > 63:
                raise _Truncated(f"bad varint at byte {i}")
            byte = self.data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, i
            shift += 7

    def _fields(self, start: int, end: int):  # type: ignore[no-untyped-def]
        """(field number, varint value or None, payload start, payload end) per field."""
        i = start
        while i < end:
            key, i = self._varint(i, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise _Truncated(f"field number 0 at byte {i}")
            if wire == 0:
                value, i = self._varint(i, end)
                yield number, value, i, i
            elif wire == 2:
                length, i = self._varint(i, end)
                if i + length > end:
                    raise _Truncated(f"field {number} runs past its message at byte {i}")
                yield number, None, i, i + length
                i += length
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
                if i > end:
                    raise _Truncated(f"field {number} runs past its message")
            else:
                raise _Truncated(f"wire type {wire} at byte {i}")

    def _string(self, start: int, end: int) -> str:
        return self.data[start:end].decode("utf-8", errors="replace")

    def model(self, start: int, end: int) -> None:
        for number, _, s, e in self._fields(start, end):
            if number == _MODEL_GRAPH:
                self.graph(s, e, 0, top=True)
            elif number == _MODEL_FUNCTIONS:
                self.function(s, e)

    def graph(self, start: int, end: int, depth: int, *, top: bool = False) -> None:
        if depth > _MAX_DEPTH:
            raise _Truncated("subgraphs nested too deep")
        for number, _, s, e in self._fields(start, end):
            if number == _GRAPH_NODE:
                self.node(s, e, depth, self.scan.node_domains)
            elif number == _GRAPH_INITIALIZER:
                self.tensor(s, e)
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self.sparse(s, e)
            elif number == _GRAPH_OUTPUT and top:
                self.scan.has_graph_outputs = True

    def node(self, start: int, end: int, depth: int, domains: set[str]) -> None:
        domain = ""
        for number, _, s, e in self._fields(start, end):
            if number == _NODE_DOMAIN:
                domain = self._string(s, e)
            elif number == _NODE_ATTRIBUTE:
                self.attribute(s, e, depth)
        domains.add(domain)

    def attribute(self, start: int, end: int, depth: int) -> None:
        for number, _, s, e in self._fields(start, end):
            if number in (_ATTR_T, _ATTR_TENSORS):
                self.tensor(s, e)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                self.graph(s, e, depth + 1)
            elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                self.sparse(s, e)

    def sparse(self, start: int, end: int) -> None:
        for number, _, s, e in self._fields(start, end):
            if number in (_SPARSE_VALUES, _SPARSE_INDICES):
                self.tensor(s, e)

    def tensor(self, start: int, end: int) -> None:
        external, location = False, None
        keys: set[str] = set()
        for number, value, s, e in self._fields(start, end):
            if number == _TENSOR_DATA_LOCATION:
                external = value == _EXTERNAL
            elif number == _TENSOR_EXTERNAL_DATA:
                key = value_ = None
                for n, _, s2, e2 in self._fields(s, e):
                    if n == _ENTRY_KEY:
                        key = self._string(s2, e2)
                    elif n == _ENTRY_VALUE:
                        value_ = self._string(s2, e2)
                # NOTE: a key listed twice is read as its first value by ONNX Runtime and as its
                # last by others: what is checked would not be what is opened.
                if key is not None and key in keys:
                    raise _Ambiguous(f"a tensor's external data lists {key!r} twice")
                if key is not None:
                    keys.add(key)
                if key == "location" and value_ is not None:
                    location = value_
        if external and location is not None and location not in self.scan.external_locations:
            self.scan.external_locations.append(location)

    def function(self, start: int, end: int) -> None:
        for number, _, s, e in self._fields(start, end):
            if number == _FUNCTION_DOMAIN:
                self.scan.function_domains.add(self._string(s, e))
            elif number == _FUNCTION_NODE:
                self.node(s, e, 0, self.scan.node_domains)


def scanned_custom_domains(scan: ModelScan) -> list[str]:
    """Operator domains nodes use that ONNX Runtime does not implement (local functions excluded)."""
    from edgecoe.package.onnxmodel import BUILTIN_DOMAINS

    return sorted(scan.node_domains - BUILTIN_DOMAINS - scan.function_domains)
