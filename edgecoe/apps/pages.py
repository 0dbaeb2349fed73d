"""Pages with text, rendered deterministically (Pillow's built-in font), for OCR checks and workloads."""

from __future__ import annotations

import numpy as np

_WORDS = ["edge", "runtime", "expert", "budget", "cache", "schedule", "prefetch", "device", "memory", "package", "manifest", "route", "batch", "stream", "state", "layout", "detector", "classifier", "recogniser", "transform", "session", "latency", "throughput", "Jetson", "CUDA", "CoreML", "ONNX", "2026", "42", "3.14", "v1.4", "#17", "x86"]


def render_page(seed: int, *, width: int = 640, height: int = 360, lines: int | None = None,
                upside_down: bool | None = None) -> np.ndarray:
    """A BGR uint8 page of 1-5 lines of words at seeded positions and sizes; some lines turned upside down
    (by default one page in four) so the direction classifier has work to do."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 6)) if lines is None else lines
    flip = bool(rng.random() < 0.25) if upside_down is None else upside_down
    page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(215, 256, size=3)))
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(8, 30))
    for _ in range(count):
        size = int(rng.integers(22, 36))
        if y + size + 10 > height:
            break
        font = ImageFont.load_default(size=size)
        text = " ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 5))))
        ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
        draw.text((int(rng.integers(8, 60)), y), text, fill=ink, font=font)
        y += size + int(rng.integers(12, 40))
    if flip:
        page = page.rotate(180)
    return np.ascontiguousarray(np.asarray(page)[:, :, ::-1])
