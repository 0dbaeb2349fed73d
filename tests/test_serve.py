"""`edgecoe serve`: the HTTP front of CoE and MoE runtimes (Starlette's in-process client; one real server
process for SIGTERM)."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

from helpers import faulty_runtime, inject
from starlette.testclient import TestClient

import edgecoe
from edgecoe.config import RuntimeConfig
from edgecoe.package import load_package
from edgecoe.serve.coe import coe_app
from edgecoe.serve.common import ServeConfig
from edgecoe.serve.server import wait_ready

X = np.arange(4, dtype=np.float32) / 4


def _client(runtime, **config) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(coe_app(runtime, ServeConfig(**config)))


def test_json_and_binary_requests_give_what_the_runtime_gives(chain_package):
    with edgecoe.load(chain_package) as direct:
        want = direct.submit({"x": X}, {"kind": "a"}).result(timeout=60)
    with _client(edgecoe.load(chain_package)) as client:
        answer = client.post("/v1/infer", json={"inputs": {"x": X.tolist()}, "metadata": {"kind": "a"}})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["path"] == want.path
        for name, value in want.outputs.items():
            got = body["outputs"][name]
            assert got["dtype"] == str(value.dtype) and got["shape"] == list(value.shape)
            np.testing.assert_allclose(np.array(got["data"]), value, rtol=1e-6)
        tagged = client.post("/v1/infer", json={"inputs": {"x": {"dtype": "float32", "shape": [4], "data": X.tolist()}},
                                                "metadata": {"kind": "a"}})
        assert tagged.json()["outputs"] == body["outputs"]
        buffer = io.BytesIO()
        np.savez(buffer, x=X)
        npz = client.post("/v1/infer", content=buffer.getvalue(),
                          headers={"content-type": "application/x-npz", "x-edgecoe-metadata": '{"kind": "a"}',
                                   "accept": "application/x-npz"})
        assert npz.status_code == 200 and npz.headers["x-edgecoe-path"] == ",".join(want.path)
        with np.load(io.BytesIO(npz.content)) as arrays:
            for name, value in want.outputs.items():
                np.testing.assert_array_equal(arrays[name], value)
        raw = client.post("/v1/infer", content=X.tobytes(),
                          headers={"content-type": "application/octet-stream", "x-edgecoe-input": "x",
                                   "x-edgecoe-shape": "4", "x-edgecoe-metadata": '{"kind": "a"}'})
        assert raw.json()["outputs"] == body["outputs"]


def test_bad_requests_are_refused_with_a_reason_and_nothing_queued(chain_package):
    runtime = edgecoe.load(chain_package)
    with _client(runtime, max_body_bytes=4096) as client:
        cases = [
            (client.post("/v1/infer", json={"inputs": {"x": [1.0, 2.0]}, "metadata": {"kind": "a"}}), 400, "shape"),
            (client.post("/v1/infer", json={"inputs": {"x": X.tolist()}, "metadata": {"kind": "zzz"}}), 400, "zzz"),
            (client.post("/v1/infer", json={"inputs": {"x": {"dtype": "object", "data": [1]}}}), 400, "dtype"),
            (client.post("/v1/infer", json={"inputs": {"x": X.tolist()}, "extra": 1}), 400, "unknown fields"),
            (client.post("/v1/infer", content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"),
            (client.post("/v1/infer", content=b"x", headers={"content-type": "text/plain"}), 415, "content type"),
            (client.post("/v1/infer", content=b"0" * 5000, headers={"content-type": "application/json"}), 413, "limit"),
            (client.post("/v1/infer", content=X.tobytes()[:5],
                         headers={"content-type": "application/octet-stream", "x-edgecoe-input": "x",
                                  "x-edgecoe-shape": "4"}), 400, "bytes"),
        ]
        for answer, status, words in cases:
            assert answer.status_code == status, answer.text
            assert words in answer.json()["error"]["message"]
        assert runtime.in_flight.num_requests == 0


def test_api_key_guards_everything_but_health(chain_package):
    with _client(edgecoe.load(chain_package), api_key="s3cret") as client:
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        request = {"inputs": {"x": X.tolist()}, "metadata": {"kind": "a"}}
        assert client.post("/v1/infer", json=request).status_code == 401
        assert client.post("/v1/infer", json=request, headers={"x-api-key": "wrong"}).status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.post("/v1/infer", json=request, headers={"authorization": "Bearer s3cret"}).status_code == 200


def test_a_full_queue_is_429_a_slow_result_504_and_both_leave_nothing_behind(chain_package):
    pkg = load_package(chain_package)
    gate = threading.Event()
    runtime = faulty_runtime(pkg, RuntimeConfig(max_queued_requests=1))
    inject(runtime, before_run=lambda expert, feeds: gate.wait(30))
    request = {"inputs": {"x": X.tolist()}, "metadata": {"kind": "a"}}
    try:
        with _client(runtime, timeout_s=0.5) as client:
            first = client.post("/v1/infer", json={**request, "timeout_s": 0.3})  # held at the gate: times out
            assert first.status_code == 504 and "cancelled" in first.json()["error"]["message"]
            assert runtime.in_flight.num_requests == 0  # the cancel gave its room back
            results: list = []
            holder = threading.Thread(target=lambda: results.append(client.post("/v1/infer", json=request)))
            holder.start()
            deadline = time.monotonic() + 10
            while runtime.in_flight.num_requests < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            full = client.post("/v1/infer", json=request)
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            gate.set()
            holder.join(30)
            assert results[0].status_code in (200, 504)
            metrics = client.get("/metrics").text
    finally:
        gate.set()
    assert 'edgecoe_http_requests_total{endpoint="infer",status="429"} 1' in metrics
    assert 'edgecoe_http_requests_total{endpoint="infer",status="504"}' in metrics
    assert "edgecoe_queue_depth" in metrics and "edgecoe_switches_total" in metrics
    budget = runtime.caches["cpu"].budget_bytes
    assert f'edgecoe_expert_budget_bytes{{processor="cpu"}} {budget}' in metrics
    assert 'edgecoe_http_request_seconds_bucket{le="+Inf"}' in metrics


def test_draining_answers_503_and_shutdown_closes_the_runtime(chain_package):
    runtime = edgecoe.load(chain_package)
    client = _client(runtime)
    with client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.front.draining = True
        answer = client.post("/v1/infer", json={"inputs": {"x": X.tolist()}, "metadata": {"kind": "a"}})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert client.get("/readyz").status_code == 503
    assert runtime.closing


def test_streams_and_transforms_work_over_http(tmp_path):
    import onnx
    from helpers import write_spec
    from test_glue import decode, glue_package, split_parts, stateful_model, stateful_spec

    from edgecoe.export import export_package

    pkg = glue_package(tmp_path)
    transforms = {"split_parts": split_parts, "decode": decode}
    with edgecoe.load(pkg, transforms=transforms) as direct:
        for seed in range(20):  # a page the detector finds parts in
            page = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
            want = direct.submit({"page": page}, {"k": "doc"}).result(timeout=60)
            if len(want.items.get("rec", [])) >= 2:
                break
    with _client(edgecoe.load(pkg, transforms=transforms)) as client:
        body = client.post("/v1/infer", json={"inputs": {"page": page.tolist()}, "metadata": {"k": "doc"}}).json()
    assert [item["text"]["data"] for item in body["items"]["rec"]] == [str(i["text"]) for i in want.items["rec"]]
    for item, expected in zip(body["items"]["rec"], want.items["rec"], strict=True):
        np.testing.assert_allclose(item["y"]["data"], expected["y"], rtol=1e-6)

    onnx.save_model(stateful_model(), str(tmp_path / "state.onnx"))
    spkg = export_package(write_spec(tmp_path / "s.json", stateful_spec({"state": 1, "stateN": 1})),
                          tmp_path / "spkg").package
    with _client(edgecoe.load(spkg)) as client:
        outs = [client.post("/v1/infer", json={"inputs": {"x": [1.0] * 4}, "metadata": {"k": "s"}, "stream": "cam",
                                               "stream_start": i == 0}).json()["outputs"]["out"]["data"]
                for i in range(3)]
        unknown = client.post("/v1/infer", json={"inputs": {"x": [1.0] * 4}, "metadata": {"k": "s"}, "stream": "nope"})
    assert outs == [[2.0] * 4, [4.0] * 4, [6.0] * 4]
    assert unknown.status_code == 400 and "stream 'nope' is not held" in unknown.json()["error"]["message"]


# -- MoE: OpenAI-compatible completions -------------------------------------------------------------

@pytest.fixture(scope="module")
def moe_generator(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from moe_helpers import tiny_checkpoint

    from edgecoe.moe.export import export_moe
    from edgecoe.moe.generate import Generator
    from edgecoe.moe.model import MoeConfig, MoeModel
    from edgecoe.moe.package import load_moe_package

    root = tmp_path_factory.mktemp("moe-serve")
    pkg = export_moe(tiny_checkpoint("mixtral", root / "hf"), root / "pkg").package
    model = MoeModel(load_moe_package(pkg), MoeConfig(budget="50%"))
    yield Generator(model)
    model.close()


def test_completions_match_generate_and_stream_token_by_token(moe_generator):
    from edgecoe.moe.generate import SamplingParams
    from edgecoe.serve.moe import MoeService, moe_app

    want = moe_generator.generate(["The module"], SamplingParams(max_new_tokens=8, ignore_eos=True))
    app = moe_app(moe_generator, ServeConfig())
    service: MoeService = app.state.service
    name = service.model_name
    with TestClient(app) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == name
        answer = client.post("/v1/completions", json={"model": name, "prompt": "The module", "max_tokens": 8}).json()
        choice = answer["choices"][0]
        eos_early = choice["finish_reason"] == "stop"
        if not eos_early:
            assert choice["text"] == want.texts[0] and answer["usage"]["completion_tokens"] == 8
        with client.stream("POST", "/v1/completions", json={"prompt": "The module", "max_tokens": 8,
                                                            "stream": True}) as events:
            lines = [line for line in events.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        bad = [client.post("/v1/completions", json=body) for body in
               ({"prompt": ""}, {"prompt": "x", "n": 2}, {"prompt": "x", "max_tokens": 10_000},
                {"prompt": "x", "model": "other"}, {"prompt": "x", "temperature": "hot"})]
    assert [b.status_code for b in bad] == [400, 400, 400, 404, 400]
    assert "n" in bad[1].json()["error"]["message"]


# -- a real server process: SIGTERM drains ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sigterm_lets_requests_in_flight_finish(tmp_path):
    from test_glue import glue_package

    pkg = glue_package(tmp_path)
    (tmp_path / "slow.py").write_text(
        "import time\nimport numpy as np\n"
        "def split_parts(call):\n    time.sleep(0.5)\n    return [{'part': call.input('page')[:4]}]\n"
        "def decode(call):\n    return {'text': np.asarray('ok')}\n"
        "TRANSFORMS = {'split_parts': split_parts, 'decode': decode}\n")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgecoe.cli", "serve", str(pkg), "--port", str(port),
                               "--transforms", str(tmp_path / "slow.py"), "--drain-timeout-s", "20"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        try:
            wait_ready(f"http://127.0.0.1:{port}", process=server, timeout_s=60)
        except RuntimeError as exc:
            out = server.stdout.read().decode() if server.stdout and server.poll() is not None else ""
            pytest.fail(f"{exc}: {out}")
        body = json.dumps({"inputs": {"page": [0.5] * 8}, "metadata": {"k": "doc"}}).encode()
        answers: list[int] = []

        def call() -> None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/infer", data=body,
                                             headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                answers.append(answer.status)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # accepted and in flight: each takes 0.5 s in its transform, one after another
        server.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        # uvicorn re-raises the signal once it has drained: an exit by SIGTERM, after the answers
        assert server.wait(60) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
        if server.stdout is not None:
            server.stdout.close()
    assert answers == [200] * 8  # accepted before the signal: every one answered, none lost


def test_completions_beyond_the_queue_are_429_and_a_timeout_is_504_without_stopping_the_worker(moe_generator):
    from edgecoe.serve.moe import moe_app

    release, entered = threading.Event(), threading.Event()
    original = moe_generator.stream

    def held(*args, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(30)
        yield from original(*args, **kwargs)

    app = moe_app(moe_generator, ServeConfig(max_queued_completions=1, timeout_s=0.5))
    moe_generator.stream = held  # type: ignore[method-assign]
    try:
        with TestClient(app) as client:
            answers: list = []
            first = threading.Thread(target=lambda: answers.append(
                client.post("/v1/completions", json={"prompt": "The module", "max_tokens": 4})))
            first.start()
            assert entered.wait(10)  # the worker holds the first completion
            second = threading.Thread(target=lambda: answers.append(
                client.post("/v1/completions", json={"prompt": "The module", "max_tokens": 4})))
            second.start()
            deadline = time.monotonic() + 10
            while not app.state.service._jobs.qsize() and time.monotonic() < deadline:  # the second waits
                time.sleep(0.01)
            full = client.post("/v1/completions", json={"prompt": "The module", "max_tokens": 4})
            first.join(10)
            second.join(10)
            release.set()
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert sorted(a.status_code for a in answers) == [504, 504]
            moe_generator.stream = original  # type: ignore[method-assign]
            deadline = time.monotonic() + 10  # the cancelled completions leave the queue as the worker reaches them
            while app.state.service._jobs.qsize() and time.monotonic() < deadline:
                time.sleep(0.01)
            again = client.post("/v1/completions", json={"prompt": "The module", "max_tokens": 4, "timeout_s": 30})
            assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] >= 1
    finally:
        release.set()
        moe_generator.stream = original  # type: ignore[method-assign]
