"""The published-models package (`edgecoe demo build published`) served side by side: samba, edgecoe and the
all-resident bound at one budget, on a trace of real inputs (rendered pages, audio chunks, file bytes).

    python benchmarks/published_bench.py --budget 30% --requests 300 --rate 6 --repeat 3 \\
        --json benchmarks/results/published/bench_30pct.json

Writes the sample requests (models/published-samples/VALUE/*.npz, deterministic) and the trace, then runs
``edgecoe bench PKG --workload TRACE --transforms edgecoe.apps.ocr``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np


def _normalized(page: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    resized = cv2.resize(page, (width, height)).astype(np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((resized[:, :, ::-1] - mean) / std).transpose(2, 0, 1).astype(np.float32)


def _speech_like(seed: int, size: int, rate: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(size) / rate
    pitch = rng.uniform(110, 260)
    voiced = rng.random() < 0.6
    signal = (0.4 * np.sin(2 * np.pi * pitch * t) * (1 + np.sin(2 * np.pi * 4 * t))) if voiced else 0.0
    return (signal + rng.normal(0, 0.03, size=size)).astype(np.float32)


def _file_features(path: Path) -> np.ndarray:
    """Magika's view of a file: its first and last 1024 bytes (after stripping whitespace), padded with 256."""
    data = path.read_bytes().strip()
    head, tail = list(data[:1024]), list(data[-1024:])
    head += [256] * (1024 - len(head))
    tail = [256] * (1024 - len(tail)) + tail
    return np.array(head + tail, dtype=np.int32)


def write_samples(folder: Path) -> None:
    """Deterministic sample requests per task (overwrites)."""
    import sysconfig

    from edgecoe.apps.pages import render_page

    for task in ("ocr", "layout", "vad", "vad-any-rate", "orientation", "filetype"):
        (folder / task).mkdir(parents=True, exist_ok=True)
    for i in range(40):
        np.savez(folder / "ocr" / f"{i:03d}.npz", image=render_page(1000 + i))
    for i in range(8):
        page = render_page(2000 + i, width=608, height=800, lines=5)
        np.savez(folder / "layout" / f"{i:03d}.npz", layout_image=_normalized(page, 800, 608))
        np.savez(folder / "orientation" / f"{i:03d}.npz", orientation_image=_normalized(page, 224, 224))
        rate = 16000 if i % 2 == 0 else 8000
        np.savez(folder / "vad-any-rate" / f"{i:03d}.npz", audio=_speech_like(3000 + i, 512 if rate == 16000 else 256, rate),
                 sample_rate=np.array(rate, dtype=np.int64))
    for i in range(32):
        np.savez(folder / "vad" / f"{i:03d}.npz", audio=_speech_like(4000 + i, 512, 16000))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in ("json/__init__.py", "email/mime/text.py", "xml/dom/minidom.py",
                                        "csv.py", "html/parser.py", "turtle.py", "zipfile/__init__.py", "wave.py")]
    for i, file in enumerate(f for f in files if f.is_file()):
        np.savez(folder / "filetype" / f"{i:03d}.npz", file_bytes=_file_features(file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("models/published"))
    parser.add_argument("--samples", type=Path, default=Path("models/published-samples"))
    parser.add_argument("--budget", default="30%")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--dist", default="uniform")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--policies", default="samba,edgecoe,all-resident")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.package / "edgecoe.json").is_file():
        subprocess.run(["edgecoe", "demo", "build", "published"], check=True)
    write_samples(args.samples)
    from edgecoe.package import load_package

    tasks = set(load_package(args.package, verify="quick").manifest.entry.experts)
    missing = sorted(p.name for p in args.samples.iterdir() if p.is_dir() and p.name not in tasks)
    if missing:
        sys.exit(f"{args.package} has no tasks {missing}: it predates the recipe; rebuild it with "
                 "`edgecoe demo build published --force`")
    trace = args.samples.parent / "published-trace.jsonl"
    subprocess.run(["edgecoe", "workload", "generate", str(args.package), "--samples", str(args.samples),
                    "-o", str(trace), "--requests", str(args.requests), "--rate", str(args.rate),
                    "--dist", args.dist, "--seed", "5"], check=True)
    command = ["edgecoe", "bench", str(args.package), "--workload", str(trace), "--transforms", "edgecoe.apps.ocr",
               "--policies", args.policies, "--budget", args.budget, "--repeat", str(args.repeat)]
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        command += ["--json", str(args.json)]
    sys.exit(subprocess.run(command, check=False).returncode)


if __name__ == "__main__":
    main()
