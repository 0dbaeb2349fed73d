"""Glue between experts: named transforms the application provides, declared (by name) in the package.

A package holds data only, never code, so a package that needs a transform
(crop the detector's boxes, rotate a page, decode a recogniser's output)
names it and the application supplies the function: ``edgecoe.load(pkg,
transforms={...})``, or on the command line ``--transforms MODULE_OR_FILE``
(a module or ``.py`` file the user names, whose ``TRANSFORMS`` dict is used;
naming it is the user's decision to run that code).

Two places run a transform, once per item:

- ``prepare`` (before an expert): returns the item's prepared values — one
  dict (one item) or a list of dicts (the item fans out into that many
  items, each its own task of the same request; an empty list ends that
  branch). The expert's inputs then read them (``feeds: {x: prepared:crop}``).
- ``finish`` (after an expert): returns a dict that joins the item's outputs
  (what later experts, the route and the result see).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecoe.errors import InvalidInputError

Values = dict[str, np.ndarray]


class TransformError(Exception):
    """A transform failed or returned something unusable (the message names the transform and expert)."""


@dataclass(frozen=True)
class TransformCall:
    """What a transform sees for one item.

    Attributes:
        expert: the expert it runs for (before it: ``prepare``; after it: ``finish``).
        args: the step's arguments from the package.
        request: the request's inputs.
        metadata: the request's metadata.
        lineage: expert -> its outputs for this item, for every expert earlier on its path
            (and, in ``finish``, the expert itself).
        prepared: expert -> what its ``prepare`` made for this item, along the path.
        outputs: in ``finish``, this expert's outputs for the item; empty in ``prepare``.
        model_metadata: expert -> its ONNX file's metadata_props (label lists, vocabularies).
    """

    expert: str
    args: Mapping[str, Any]
    request: Mapping[str, np.ndarray]
    metadata: Mapping[str, object]
    lineage: Mapping[str, Mapping[str, np.ndarray]]
    prepared: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    model_metadata: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def input(self, name: str) -> np.ndarray:
        """A request input.

        Raises:
            TransformError: the request did not carry it.
        """
        if name not in self.request:
            raise TransformError(f"needs request input {name!r}, which this request did not carry "
                                 f"(it has {sorted(self.request)})")
        return self.request[name]

    def output(self, expert: str, name: str) -> np.ndarray:
        """An output of ``expert`` (earlier on the path, or this expert's own in ``finish``).

        Raises:
            TransformError: that expert did not run on this item's path, or has no such output.
        """
        values = self.outputs if expert == self.expert and self.outputs else self.lineage.get(expert)
        if values is None:
            raise TransformError(f"needs an output of expert {expert!r}, which is not on this item's path "
                                 f"({sorted(self.lineage)})")
        if name not in values:
            raise TransformError(f"needs output {name!r} of expert {expert!r}, which has {sorted(values)}")
        return values[name]

    def prepared_value(self, expert: str, name: str) -> np.ndarray:
        """A value ``expert``'s ``prepare`` made for this item (an ancestor's, or this expert's in ``finish``)."""
        values = self.prepared.get(expert, {})
        if name not in values:
            raise TransformError(f"needs prepared value {name!r} of expert {expert!r}, which has {sorted(values)}")
        return values[name]


Transform = Callable[[TransformCall], Any]
"""A transform: takes a :class:`TransformCall`; ``prepare`` returns a dict or a list of dicts,
``finish`` a dict (values are arrays, or anything ``numpy.asarray`` takes)."""


def check_provided(needed: Sequence[str], transforms: Mapping[str, Transform]) -> None:
    """Every transform the package names is provided and callable.

    Raises:
        InvalidInputError: listing the missing names and how to provide them.
    """
    missing = [n for n in needed if n not in transforms]
    not_callable = [n for n in needed if n in transforms and not callable(transforms[n])]
    if missing or not_callable:
        parts = []
        if missing:
            parts.append(f"not provided: {missing}")
        if not_callable:
            parts.append(f"not callable: {not_callable}")
        raise InvalidInputError(f"the package uses transforms {list(needed)}; {'; '.join(parts)}. Provide them with "
                                "edgecoe.load(..., transforms={name: function}) or --transforms MODULE")


def _values(result: object, *, what: str) -> Values:
    if not isinstance(result, Mapping) or not all(isinstance(k, str) for k in result):
        raise TransformError(f"returned {type(result).__name__} for {what}; expected a dict of name -> array")
    out: Values = {}
    for key, value in result.items():
        try:
            array = np.asarray(value)
        except Exception as exc:  # anything numpy cannot take is the transform's error
            raise TransformError(f"value {key!r} is not array-like: {exc}") from None
        if array.dtype == object:
            raise TransformError(f"value {key!r} is a Python object array; return numbers, booleans or strings")
        array.setflags(write=False)
        out[key] = array
    return out


def run_prepare(transform: Transform, call: TransformCall, *, max_items: int) -> list[Values]:
    """One item's prepared values: a list of 0..``max_items`` items.

    Raises:
        TransformError: the transform raised, returned something else, or fanned out too far.
    """
    result = _call(transform, call)
    if isinstance(result, Mapping):
        return [_values(result, what="an item")]
    if not isinstance(result, (list, tuple)):
        raise TransformError(f"returned {type(result).__name__}; a prepare transform returns a dict (one item) "
                             "or a list of dicts (a fan-out)")
    if len(result) > max_items:
        raise TransformError(f"fanned one item out to {len(result)} items; the limit is max_fanout={max_items}")
    return [_values(item, what=f"item {i}") for i, item in enumerate(result)]


def run_finish(transform: Transform, call: TransformCall) -> Values:
    """What joins one item's outputs.

    Raises:
        TransformError: the transform raised or returned something other than a dict.
    """
    return _values(_call(transform, call), what="the outputs")


def _call(transform: Transform, call: TransformCall) -> object:
    """The transform's result; whatever it raises becomes a TransformError saying what it raised."""
    try:
        return transform(call)
    except TransformError:
        raise
    except Exception as exc:
        raise TransformError(f"raised {type(exc).__name__}: {exc}") from exc


def load_transforms(source: str) -> dict[str, Transform]:
    """The ``TRANSFORMS`` dict of a module (``pkg.module``) or Python file (``path/to/file.py``).

    This imports, and so runs, the code named: only ever called with a name the user gave.

    Raises:
        InvalidInputError: the module cannot be imported or has no ``TRANSFORMS`` dict of callables.
    """
    try:
        if source.endswith(".py"):
            path = Path(source)
            if not path.is_file():
                raise InvalidInputError(f"--transforms {source!r}: no such file")
            spec = importlib.util.spec_from_file_location(f"edgecoe_transforms_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise InvalidInputError(f"--transforms {source!r}: cannot be imported as Python")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"--transforms {source!r}: importing it failed: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, "TRANSFORMS", None)
    if not isinstance(found, Mapping) or not all(isinstance(k, str) and callable(v) for k, v in found.items()):
        raise InvalidInputError(f"--transforms {source!r}: the module has no TRANSFORMS dict of name -> function")
    return dict(found)
