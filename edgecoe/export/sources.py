"""Turning each kind of expert source into an ONNX model plus a reference to check it against.

Torch and optimum are imported lazily: they live in the ``export`` extra and
``edgecoe`` itself must import without them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecoe.errors import ExportError, OnnxFileError
from edgecoe.export.spec import ExpertSpec, HfSource, OnnxSource, TorchSource
from edgecoe.package.files import unsafe_path_reason
from edgecoe.package.onnxmodel import custom_domains, external_locations, read_model

Reference = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class SourceModel:
    """An expert as ONNX (weights in memory) and the source's own outputs for given inputs."""

    model: onnx.ModelProto
    reference: Reference
    origin: str  # human-readable: where it came from
    framework: str  # what ``reference`` runs: onnxruntime, torch or transformers
    external_data: bool = False  # the source kept weights outside the .onnx: keep it so


def load_source(name: str, spec: ExpertSpec, base: Path, workdir: Path, *, allow_custom_ops: bool = False) -> SourceModel:
    """Produce the ONNX model for one expert.

    Raises:
        ExportError: the source could not be exported or loaded.
    """
    source = spec.source
    if isinstance(source, OnnxSource):
        loaded = _from_onnx(base / source.onnx, allow_custom_ops)
        return _with_onnx_reference(loaded) if source.reference == "onnx" else loaded
    if isinstance(source, TorchSource):
        return _from_torch(name, source, base, workdir)
    if isinstance(source, HfSource):
        return _from_hf(name, source, base / source.hf, workdir)
    raise AssertionError(f"unhandled source {source!r}")


def _with_onnx_reference(loaded: SourceModel) -> SourceModel:
    """Check against the onnx package's reference evaluator instead of ONNX Runtime: a second,
    independent implementation of every operator, so an export is compared with something else."""
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(loaded.model)
    except Exception as exc:
        raise ExportError(f"{loaded.origin}: the onnx reference evaluator cannot run this model: {exc}; "
                          "use reference: onnxruntime") from exc
    names = [o.name for o in loaded.model.graph.output]

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, evaluator.run(None, inputs), strict=False))
        except Exception as exc:
            raise ExportError(f"{loaded.origin}: the onnx reference evaluator failed: {exc}") from exc

    return SourceModel(model=loaded.model, reference=reference, origin=loaded.origin, framework="onnx reference",
                       external_data=loaded.external_data)


def _from_onnx(path: Path, allow_custom_ops: bool) -> SourceModel:
    try:
        model = read_model(path)
    except OnnxFileError as exc:
        raise ExportError(str(exc)) from exc
    domains = custom_domains(model)
    if domains and not allow_custom_ops:
        raise ExportError(f"{path}: uses custom operator domains {domains}, which need a custom-op library; refused")
    try:
        locations = external_locations(model)
    except OnnxFileError as exc:
        raise ExportError(f"{path}: {exc}") from None
    for location in locations:  # before the onnx library follows them anywhere
        reason = unsafe_path_reason(path.parent, location)
        if reason is not None:
            raise ExportError(f"{path}: external data {location!r} refused: {reason.replace('package', 'source')}")
    had_external = bool(locations)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ExportError(f"{path}: cannot read its external data: {exc}") from exc
    import onnxruntime as ort

    # NOTE: the reference runs the *original* file, so re-serialising into the
    # package (inlining or regathering external data) is itself verified.
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"{path}: onnxruntime cannot load the source model: {exc}") from exc
    names = [o.name for o in session.get_outputs()]

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, inputs), strict=False))

    return SourceModel(model=model, reference=reference, origin=str(path), framework="onnxruntime",
                       external_data=had_external)


def _import_factory(target: str, base: Path) -> Callable[..., object]:
    module_name, _, attr = target.partition(":")
    # The spec's directory comes first so a factory module beside the spec imports; only for
    # this import: the rest of the process must not import from a spec's directory.
    added = str(base) not in sys.path
    if added:
        sys.path.insert(0, str(base))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ExportError(f"cannot import {module_name!r} for torch factory {target!r}: {exc}") from exc
    finally:
        if added and str(base) in sys.path:
            sys.path.remove(str(base))
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ExportError(f"{target!r}: {module_name} has no callable {attr!r}")
    return factory


def _require(module: str, extra: str = "export") -> object:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"this source needs {module!r}: pip install 'edgecoe[{extra}]'") from exc


def _from_torch(name: str, source: TorchSource, base: Path, workdir: Path) -> SourceModel:
    torch = _require("torch")
    factory = _import_factory(source.torch, base)
    try:
        module = factory(**source.args)
    except Exception as exc:
        raise ExportError(f"torch factory {source.torch!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):  # type: ignore[attr-defined]
        raise ExportError(f"torch factory {source.torch!r} returned {type(module).__name__}, expected torch.nn.Module")
    module.eval()
    names = list(source.example_inputs)
    axes = source.dynamic_axes
    if axes is None:
        axes = {n: {0: "batch"} for n in [*names, *source.output_names]}
    rng = np.random.default_rng(0)
    examples = []
    for input_name, ex in source.example_inputs.items():
        # A dynamic axis of size 1 would be specialised to 1 by torch.export.
        shape = [2 if (axis in axes.get(input_name, {}) and size == 1) else size for axis, size in enumerate(ex.shape)]
        examples.append(torch.from_numpy(rng.standard_normal(shape).astype(ex.dtype)))  # type: ignore[attr-defined]
    out_path = workdir / f"{name}.onnx"
    kwargs: dict[str, object] = {"opset_version": source.opset, "dynamo": source.dynamo, "verbose": False}
    if source.dynamo:
        dims: dict[str, object] = {}
        kwargs["dynamic_shapes"] = tuple(
            {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes.get(n, {}).items()}  # type: ignore[attr-defined]
            for n in names
        )
    else:
        kwargs["dynamic_axes"] = axes
    try:
        with torch.no_grad(), _quiet_framework_warnings():  # type: ignore[attr-defined]
            torch.onnx.export(  # type: ignore[attr-defined]
                module, tuple(examples), str(out_path), input_names=names, output_names=source.output_names,
                **kwargs,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export of {source.torch!r} failed: {type(exc).__name__}: {exc}") from exc
    model = onnx.load(str(out_path), load_external_data=True)

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():  # type: ignore[attr-defined]
            result = module(*(torch.from_numpy(inputs[n]) for n in names))  # type: ignore[attr-defined]
        results = result if isinstance(result, (tuple, list)) else [result]
        return {n: r.detach().numpy() for n, r in zip(source.output_names, results, strict=False)}

    return SourceModel(model=model, reference=reference, origin=f"torch {source.torch}", framework="torch")


def _from_hf(name: str, source: HfSource, model_dir: Path, workdir: Path) -> SourceModel:
    exporters = _require("optimum.exporters.onnx")
    tasks = _require("optimum.exporters.tasks")
    torch = _require("torch")
    out_dir = workdir / f"{name}-hf"
    kwargs: dict[str, object] = {"task": source.task, "do_validation": False, "local_files_only": True}
    if source.opset is not None:
        kwargs["opset"] = source.opset
    try:
        with _quiet_framework_warnings():
            exporters.main_export(str(model_dir), output=str(out_dir), **kwargs)  # type: ignore[attr-defined]
            hf_model = tasks.TasksManager.get_model_from_task(  # type: ignore[attr-defined]
                source.task, str(model_dir), framework="pt", local_files_only=True
            )
    except Exception as exc:
        raise ExportError(f"optimum export of {model_dir} (task {source.task!r}) failed: {type(exc).__name__}: {exc}") from exc
    onnx_files = sorted(out_dir.glob("*.onnx"))
    if len(onnx_files) != 1:
        raise ExportError(
            f"optimum export of {model_dir} wrote {[p.name for p in onnx_files]}; edgecoe serves one ONNX model per expert "
            "(encoder-decoder tasks export several; export each part as its own expert)"
        )
    model = onnx.load(str(onnx_files[0]), load_external_data=True)
    hf_model.eval()
    output_names = [o.name for o in model.graph.output]

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():  # type: ignore[attr-defined]
            result = hf_model(**{k: torch.from_numpy(v) for k, v in inputs.items()})  # type: ignore[attr-defined]
        return {n: result[n].detach().numpy() for n in output_names if n in result}

    return SourceModel(model=model, reference=reference, origin=f"hf {model_dir} ({source.task})", framework="transformers")


@contextlib.contextmanager
def _quiet_framework_warnings() -> Iterator[None]:
    """Silence torch/transformers tracing chatter (TracerWarning, deprecations) during export.

    NOTE: these warnings come from framework internals and are not
    actionable for an edgecoe user; turned into errors (as tests do) they even
    break tracing with SystemError inside torch's C code.
    """
    loggers = [logging.getLogger(name) for name in _FRAMEWORK_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Their logging too (torch.onnx's registry lists every op it skips): errors only.
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


#: Frameworks whose log records are chatter during an export (their errors still show).
_FRAMEWORK_LOGGERS = ("torch", "transformers", "optimum", "onnxscript")


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A temp dir for exporter output (torch and optimum write files)."""
    return tempfile.TemporaryDirectory(prefix="edgecoe-export-")
