"""Reading a local Hugging Face MoE checkpoint: its config and its safetensors weights.

The checkpoint is untrusted input like a package: only ``*.safetensors`` files
are read (never pickled ``.bin`` files, which run code when unpickled), every
header is checked (size, JSON, dtype, shape against byte range, ranges inside
the file, no overlaps) before any tensor is touched, and tensor files named by
an index must lie inside the checkpoint directory.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecoe.errors import ExportError
from edgecoe.package.files import unsafe_path_reason
from edgecoe.schema import DocumentError, parse_json, read_document

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_DTYPES: dict[str, tuple[str, int]] = {  # safetensors dtype -> (numpy dtype, bytes per element)
    "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8),
}


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int


class SafetensorsCheckpoint:
    """The float tensors of a checkpoint directory, read on demand as float32.

    Raises (at construction):
        ExportError: no safetensors weights, or a malformed header or index (naming the file).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tensors: dict[str, _TensorInfo] = {}
        index = root / INDEX_NAME
        if index.is_file():
            files = sorted(set(_read_index(root, index).values()))
        elif (root / SINGLE_NAME).is_file():
            files = [SINGLE_NAME]
        else:
            pickled = sorted(p.name for p in root.glob("*.bin"))
            hint = (f"; it has {pickled[:3]}, pickled PyTorch weights, which edgecoe never loads "
                    "(they can run code): save the model with safe_serialization=True") if pickled else ""
            raise ExportError(f"{root}: no {SINGLE_NAME} or {INDEX_NAME}{hint}")
        for rel in files:
            for name, info in _read_header(root / rel).items():
                if name in self._tensors:
                    raise ExportError(f"{root / rel}: tensor {name!r} also appears in {self._tensors[name].path.name}")
                self._tensors[name] = info

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor ``name`` as a float32 array (bfloat16 and float16 widened exactly).

        Raises:
            ExportError: missing, or not of the expected ``shape``.
        """
        info = self._info(name)
        if shape is not None and info.shape != tuple(shape):
            raise ExportError(f"{info.path}: tensor {name!r} has shape {list(info.shape)}, expected {list(shape)}")
        with open(info.path, "rb") as fh:
            fh.seek(info.start)
            raw = fh.read(info.end - info.start)
        if len(raw) != info.end - info.start:
            raise ExportError(f"{info.path}: tensor {name!r} is cut short (file shrank while reading?)")
        numpy_dtype, _ = _DTYPES[info.dtype]
        array = np.frombuffer(raw, dtype=numpy_dtype).reshape(info.shape)
        if info.dtype == "BF16":  # the top half of a float32: widen by shifting, exactly
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array.astype(np.float32)

    def _info(self, name: str) -> _TensorInfo:
        info = self._tensors.get(name)
        if info is None:
            raise ExportError(f"{self.root}: the checkpoint has no tensor {name!r}")
        return info


def read_config(root: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json``.

    Raises:
        ExportError: missing or not a JSON object.
    """
    return read_json_object(root / "config.json")


def read_json_object(path: Path, *, max_bytes: int = 1 << 20) -> dict[str, Any]:
    """A small JSON object file (hardened read: size limit, duplicate keys, depth).

    Raises:
        ExportError: missing, too large, or not a JSON object (naming the file).
    """
    try:
        value = parse_json(read_document(path, max_bytes=max_bytes), str(path))
    except DocumentError as exc:
        raise ExportError(str(exc)) from None
    if not isinstance(value, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return value


def _read_index(root: Path, index: Path) -> dict[str, str]:
    try:
        value = parse_json(read_document(index, max_bytes=64 << 20), str(index))
    except DocumentError as exc:
        raise ExportError(str(exc)) from None
    weight_map = value.get("weight_map") if isinstance(value, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ExportError(f"{index}: expected a 'weight_map' of tensor name -> file name")
    for rel in set(weight_map.values()):
        reason = unsafe_path_reason(root, rel)
        if reason is None and not rel.endswith(".safetensors"):
            reason = f"{rel!r} is not a .safetensors file"
        if reason is not None:
            raise ExportError(f"{index}: weight_map names an unusable file: {reason}")
    return weight_map


def _read_header(path: Path) -> dict[str, _TensorInfo]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ExportError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise ExportError(f"{path}: header length {length} is larger than the file or the limit")
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ExportError(f"{path}: the safetensors header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ExportError(f"{path}: the safetensors header is not a JSON object")
    data_start = 8 + length
    out: dict[str, _TensorInfo] = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name[:80]!r}"
        if not isinstance(entry, dict):
            raise ExportError(f"{where}: header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES:
            continue  # integer buffers and the like: not weights edgecoe reads
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets)):
            raise ExportError(f"{where}: malformed shape {shape!r} or data_offsets {offsets!r}")
        begin, end = offsets
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != count * _DTYPES[dtype][1] or data_start + end > size:
            raise ExportError(f"{where}: data_offsets {offsets} do not hold a {dtype} tensor of shape {shape} "
                              f"inside the {size}-byte file")
        spans.append((begin, end, name))
        out[name] = _TensorInfo(path, dtype, tuple(shape), data_start + begin, data_start + end)
    spans.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise ExportError(f"{path}: tensors {first!r} and {second!r} overlap")
    return out
