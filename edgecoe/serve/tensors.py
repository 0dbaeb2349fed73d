"""Tensors over HTTP: JSON for small ones, binary (.npy, .npz, raw bytes with dtype and shape headers) for images.

Every request body is untrusted: dtypes come from a fixed list, shapes are
bounded (rank, element count), element counts must match the bytes given,
``.npy``/``.npz`` are read with pickles refused, and every refusal is one
:class:`BadTensor` naming the input and what is wrong with it.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "bool")
MAX_RANK = 8
MAX_NPZ_MEMBERS = 64


class BadTensor(ValueError):
    """A tensor in a request cannot be read (the message names the input)."""


def _dtype(name: object, where: str) -> np.dtype:
    if not isinstance(name, str) or name not in DTYPES:
        raise BadTensor(f"{where}: dtype {name!r} is not one of {', '.join(DTYPES)}")
    return np.dtype(name)


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 31 for d in value):
        raise BadTensor(f"{where}: shape must be a list of at most {MAX_RANK} sizes >= 0, got {value!r}")
    return tuple(value)


def from_json(name: str, value: object, *, default_dtype: str | None) -> np.ndarray:
    """One input from JSON: ``{"dtype", "shape", "data"}`` (data flat or nested) or plain (nested) numbers
    in the package input's dtype.

    Raises:
        BadTensor: naming the input.
    """
    where = f"input {name!r}"
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"dtype", "shape", "data"})
        if unknown or "data" not in value:
            raise BadTensor(f"{where}: expected {{dtype, shape, data}}, got keys {sorted(value)}")
        dtype = _dtype(value.get("dtype", default_dtype), where)
        data = value["data"]
        shape = _shape(value["shape"], where) if "shape" in value else None
    else:
        if default_dtype is None:
            raise BadTensor(f"{where}: not a package input, so its dtype is unknown")
        dtype, data, shape = _dtype(default_dtype, where), value, None
    try:
        array = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadTensor(f"{where}: data does not read as {dtype}: {exc}") from None
    if array.dtype == object:
        raise BadTensor(f"{where}: data is ragged or not numeric")
    if shape is not None:
        if math.prod(shape) != array.size:
            raise BadTensor(f"{where}: shape {list(shape)} holds {math.prod(shape)} values, data has {array.size}")
        array = array.reshape(shape)
    return array


def from_raw(name: str, body: bytes, dtype_name: str | None, shape_text: str | None) -> np.ndarray:
    """One input from raw bytes, with its dtype and shape given in headers (``480,640,3``; ``""`` for a scalar)."""
    where = f"input {name!r}"
    dtype = _dtype(dtype_name, where)
    if shape_text is None:
        raise BadTensor(f"{where}: raw bytes need the X-Edgecoe-Shape header (e.g. 480,640,3)")
    try:
        shape = tuple(int(d) for d in shape_text.split(",") if d.strip()) if shape_text.strip() else ()
    except ValueError:
        raise BadTensor(f"{where}: X-Edgecoe-Shape {shape_text!r} is not comma-separated sizes") from None
    _shape(list(shape), where)
    if math.prod(shape) * dtype.itemsize != len(body):
        raise BadTensor(f"{where}: shape {list(shape)} of {dtype} takes {math.prod(shape) * dtype.itemsize} bytes, "
                        f"the body has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def from_npy(name: str, body: bytes) -> np.ndarray:
    """One input from an ``.npy`` body (pickles refused)."""
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadTensor(f"input {name!r}: not a readable .npy file: {exc}") from None
    _checked(name, array)
    return array


def from_npz(body: bytes, *, max_bytes: int) -> dict[str, np.ndarray]:
    """Several inputs from an ``.npz`` body, one array per input name (pickles refused; at most
    ``max_bytes`` once unpacked: a compressed archive could otherwise expand without bound)."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as listing:
            unpacked = sum(info.file_size for info in listing.infolist())
    except zipfile.BadZipFile as exc:
        raise BadTensor(f"body: not a readable .npz file: {exc}") from None
    if unpacked > max_bytes:
        raise BadTensor(f"body: the .npz unpacks to {unpacked} bytes, more than the {max_bytes} allowed")
    try:
        archive = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BadTensor(f"body: not a readable .npz file: {exc}") from None
    with archive:
        if len(archive.files) > MAX_NPZ_MEMBERS:
            raise BadTensor(f"body: .npz holds {len(archive.files)} arrays, more than {MAX_NPZ_MEMBERS}")
        out = {}
        for key in archive.files:
            try:
                out[key] = archive[key]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise BadTensor(f"input {key!r}: cannot be read from the .npz: {exc}") from None
            _checked(key, out[key])
    return out


def _checked(name: str, array: np.ndarray) -> None:
    if array.dtype.name not in DTYPES or array.ndim > MAX_RANK:
        raise BadTensor(f"input {name!r}: {array.dtype}{list(array.shape)} is not a supported tensor "
                        f"(dtypes {', '.join(DTYPES)}; rank <= {MAX_RANK})")


def to_json(array: np.ndarray) -> dict[str, Any]:
    """``{"dtype", "shape", "data"}``; strings as strings; NaN and infinities as null (JSON has neither)."""
    array = np.asarray(array)
    if array.dtype.kind in "US":
        return {"dtype": "str", "shape": list(array.shape), "data": array.astype(str).tolist()}
    if array.dtype.kind == "f":
        finite = bool(np.isfinite(array).all())
        data: Any = array.astype(np.float64).tolist()
        if not finite:  # rare: only then walk the lists to put nulls in
            data = _nulls(data)
    else:
        data = array.tolist()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


def _nulls(value: Any) -> Any:
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def to_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    named: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
    np.savez(buffer, **named)
    return buffer.getvalue()


def json_header(text: str | None, what: str) -> dict[str, Any]:
    """A JSON object from a header (metadata sent with a binary body)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadTensor(f"{what}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadTensor(f"{what}: expected a JSON object")
    return value
