"""MoE packages and checkpoints as untrusted input; the weight loader, providers, CLI and demo recipe."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from moe_helpers import tiny_checkpoint

from edgecoe.cache import ExpertCache, create_eviction_policy
from edgecoe.cli import main
from edgecoe.errors import ExportError, InvalidInputError, PackageError, ProviderUnavailableError
from edgecoe.moe.checkpoint import SafetensorsCheckpoint
from edgecoe.moe.export import export_moe
from edgecoe.moe.manifest import expert_name, parse_expert_name
from edgecoe.moe.model import providers_for
from edgecoe.moe.package import load_moe_package, package_kind
from edgecoe.moe.weights import Placement, WeightLoader


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint("mixtral", tmp_path_factory.mktemp("ckpt") / "hf", seed=2)


@pytest.fixture
def package(checkpoint: Path, tmp_path: Path) -> Path:
    return export_moe(checkpoint, tmp_path / "pkg").package


def _edit_manifest(root: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = root / "edgecoe.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _problems(root: Path, verify: str = "quick") -> str:
    with pytest.raises(PackageError) as info:
        load_moe_package(root, verify=verify)  # type: ignore[arg-type]
    return str(info.value)


def test_a_path_leaving_the_package_is_refused(package: Path) -> None:
    _edit_manifest(package, lambda d: d["layers"][0]["experts"][0].update(path="../../etc/passwd"))
    assert "escapes the package" in _problems(package) or "leaves" in _problems(package)


def test_truncated_expert_extra_file_and_symlink_are_each_reported(package: Path) -> None:
    victim = package / "experts" / "L001" / "E003.bin"
    victim.write_bytes(victim.read_bytes()[:-4])
    (package / "experts" / "stray.bin").write_bytes(b"x")
    (package / "dense" / "link.onnx").symlink_to("/etc/hostname")
    text = _problems(package)
    assert "experts/L001/E003.bin" in text and "size is" in text
    assert "experts/stray.bin" in text and "extra file" in text
    assert "symbolic link" in text


def test_a_flipped_byte_fails_the_full_check_only(package: Path) -> None:
    victim = package / "experts" / "L000" / "E005.bin"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    load_moe_package(package, verify="quick")  # any bytes are valid floats: sizes suffice to run safely
    assert "checksum mismatch" in _problems(package, "full")


def test_a_dense_model_with_external_data_is_refused(package: Path) -> None:
    import onnx

    path = package / "dense" / "layer_000.onnx"
    model = onnx.load(path)
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    _edit_manifest(package, lambda d: d["layers"][0]["dense"].update(bytes=path.stat().st_size))
    text = _problems(package)
    assert "dense/layer_000.onnx: refers to external data ['weights.bin']" in text


def test_manifest_counts_must_agree(package: Path) -> None:
    _edit_manifest(package, lambda d: d["layers"][1]["experts"].pop())
    assert "moe.num_experts" in _problems(package)


def test_package_kind_tells_moe_from_coe(package: Path, tmp_path: Path) -> None:
    import edgecoe

    assert package_kind(package) == "moe"
    assert package_kind(tmp_path / "nothing") == "coe"
    with pytest.raises(PackageError, match="edgecoe generate"):
        edgecoe.load_package(package)


def _safetensors(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(("header", "data", "message"), [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "inside the"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "malformed"),
])
def test_malformed_safetensors_headers_are_refused(tmp_path: Path, header: dict, data: bytes, message: str) -> None:
    _safetensors(tmp_path / "model.safetensors", header, data)
    with pytest.raises(ExportError, match=message):
        SafetensorsCheckpoint(tmp_path)


def test_a_huge_header_length_and_pickled_weights_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ExportError, match="header length"):
        SafetensorsCheckpoint(tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ExportError, match="never loads"):
        SafetensorsCheckpoint(pickled)


def test_an_index_pointing_outside_the_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../x.safetensors"}}))
    with pytest.raises(ExportError, match="unusable file"):
        SafetensorsCheckpoint(tmp_path)


def test_bfloat16_weights_widen_exactly(tmp_path: Path) -> None:
    values = np.array([1.5, -2.25, 3.0e-3, 65504.0], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    _safetensors(tmp_path / "model.safetensors", {"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}},
                 bf16.tobytes())
    got = SafetensorsCheckpoint(tmp_path).get("w", (4,))
    assert np.array_equal(got, (bf16.astype(np.uint32) << 16).view(np.float32))


def test_unsupported_architectures_name_the_supported_ones(checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "llama"
    shutil.copytree(checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config["model_type"] = "llama"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="supported: mixtral, qwen2_moe"):
        export_moe(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weight_loader_reads_exact_bytes_into_the_cache(package: Path) -> None:
    pkg = load_moe_package(package)
    loader = WeightLoader(pkg)
    size = pkg.manifest.expert_bytes
    cache = ExpertCache(budget_bytes=2 * size, loader=lambda e: (lambda x: (x, x.num_bytes))(loader.load(e, "cpu")),
                        unloader=loader.unload, size_of=loader.footprint_bytes, policy=create_eviction_policy("lru"),
                        record_events=True)
    for name in ["L000.E000", "L000.E001", "L000.E000", "L001.E007"]:
        got = cache.acquire(name)
        assert got is not None
        raw = (package / "experts" / name[:4] / f"{name[5:]}.bin").read_bytes()
        assert got.handle.handle.buffer.tobytes() == raw  # type: ignore[union-attr]
        cache.release(name)
    assert cache.stats.events == [("load", "L000.E000"), ("load", "L000.E001"), ("evict", "L000.E001"),
                                  ("load", "L001.E007")]
    assert cache.stats.peak_bytes == 2 * size
    cache.check()


def test_cuda_placement_copies_to_the_device_and_drops_the_host_buffer(package: Path) -> None:
    made: list[tuple[tuple[int, ...], str, int]] = []

    def fake_ort_value(array: np.ndarray, kind: str, index: int) -> str:
        made.append((array.shape, kind, index))
        return f"device-value-{len(made)}"

    loader = WeightLoader(load_moe_package(package), placement=Placement("cuda:1"), ort_value=fake_ort_value)
    loaded = loader.load("L000.E002", "cuda:1")
    assert loaded.handle.buffer is None and set(loaded.handle.values) == {"w13", "w2"}
    assert [(kind, index) for _, kind, index in made] == [("cuda", 1), ("cuda", 1)]
    assert loaded.num_bytes == loader.footprint_bytes("L000.E002") and loaded.source == "disk"
    with pytest.raises(InvalidInputError):
        Placement("gpu")


def test_providers_for_each_device() -> None:
    both = ["CUDAExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu", available=both) == [("CPUExecutionProvider", {})]
    assert providers_for("cuda:1", available=both) == [("CUDAExecutionProvider", {"device_id": "1"}),
                                                       ("CPUExecutionProvider", {})]
    assert providers_for("coreml", available=both)[0][0] == "CoreMLExecutionProvider"
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider"):
        providers_for("cuda:0", available=["CPUExecutionProvider"])


def test_expert_names_round_trip() -> None:
    assert parse_expert_name(expert_name(12, 7)) == (12, 7)
    with pytest.raises(ValueError):
        parse_expert_name("../L000")


def test_cli_exports_inspects_and_generates_with_a_report(checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "pkg")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["inspect", str(tmp_path / "pkg"), "--json", "-"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["kind"] == "moe" and summary["num_experts"] == 16
    report = tmp_path / "report.json"
    out = runner.invoke(main, ["generate", str(tmp_path / "pkg"), "--prompt", "The with statement",
                               "--prompt", "\x1b[31mred", "--max-new-tokens", "6", "--budget", "25%",
                               "--ignore-eos", "--report", str(report)])
    assert out.exit_code == 0, out.output
    assert "\x1b[31m" not in out.output  # prompts and generated text reach the terminal escaped
    figures = json.loads(report.read_text())
    for key in ("num_prompt_tokens", "num_generated_tokens", "ttft_ms", "decode_tokens_per_s", "e2e_ms",
                "peak_expert_bytes", "expert_budget_bytes", "num_expert_loads", "expert_hit_rate",
                "bytes_loaded", "peak_rss_bytes"):
        assert key in figures
    assert figures["num_generated_tokens"] == 12
    assert figures["peak_expert_bytes"] <= figures["expert_budget_bytes"]
    out = runner.invoke(main, ["generate", str(tmp_path / "pkg"), "--prompt", "x", "--budget", "10"])
    assert out.exit_code == 2 and "below one expert" in out.output


def test_demo_recipe_trains_deterministically_and_loads_in_transformers(tmp_path: Path) -> None:
    import transformers

    from edgecoe.moe.demo import build_moe_demo

    recipe = tmp_path / "moe-mini.yaml"
    recipe.write_text("kind: moe\nname: moe-mini\nseed: 3\nvocab_size: 320\nhidden_size: 32\nintermediate_size: 48\n"
                      "num_layers: 2\nnum_heads: 2\nnum_kv_heads: 1\nnum_experts: 4\ntop_k: 2\ntrain_steps: 3\n"
                      "batch_size: 2\nseq_len: 32\n")
    first, hf = build_moe_demo(recipe, models_dir=tmp_path / "a")
    second, _ = build_moe_demo(recipe, models_dir=tmp_path / "b")
    assert (first / "edgecoe.json").read_text() == (second / "edgecoe.json").read_text()  # checksums included
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    assert model.config.model_type == "mixtral" and model.config.num_local_experts == 4
    assert transformers.AutoTokenizer.from_pretrained(hf)("def f():")["input_ids"][0] == 1  # <s> prepended


def test_generate_under_device_memory_reads_experts_from_storage_and_leaves_no_cgroup(package: Path,
                                                                                     tmp_path: Path) -> None:
    import os

    from edgecoe.devicemem import own_memory_cgroup

    out = tmp_path / "report.json"
    before = Path("/proc/self/cgroup").read_text() if Path("/proc/self/cgroup").exists() else ""
    result = CliRunner().invoke(main, ["generate", str(package), "--prompt", "The with statement", "--budget",
                                       "25%", "--policy", "edgecoe", "--max-new-tokens", "8", "--ignore-eos",
                                       "--device-memory", "auto", "--report", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    memory = report["device_memory"]
    assert memory["mechanism"] in ("cgroup-v1", "cgroup-v2", "fadvise")
    assert memory["limit_bytes"] > memory["process_bytes_at_entry"] > 0
    assert report["num_generated_tokens"] == 8 and report["peak_expert_bytes"] <= report["expert_budget_bytes"]
    assert "storage_read_bytes" in report and report["num_expert_loads"] > 0
    if memory["mechanism"] != "fadvise":
        assert Path("/proc/self/cgroup").read_text() == before
        assert not [p for p in own_memory_cgroup().path.iterdir() if p.name.startswith(f"edgecoe-{os.getpid()}-")]
