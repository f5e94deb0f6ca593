"""The Open Inference Protocol v2 over a real `serve` process: metadata from the build's signature,
JSON and binary tensors, versions by build hash, and {"error": ...} with a 4xx for a client's
mistakes. (//tests/serve:package_test drives the same endpoints with tritonclient, tests/e2e/kserve_client_e2e.sh with the kserve SDK.)"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.serve import harness
from tests.serve.bundles import build_hash

M = harness.MODEL


@pytest.fixture
def server(local_registry, releases, keys, servers):
    harness.promote(local_registry, releases["v1"], keys["signer"])
    s = servers(local_registry, keys["signer_public"])
    s.wait_serving(build_hash(releases["v1"]))
    return s


def golden(bundle):
    return load_file(str(bundle / "inputs.safetensors")), load_file(str(bundle / "expected.safetensors"))


def json_infer(inputs: dict) -> dict:
    names = {"tokens": "INT64", "mask": "BOOL"}
    return {
        "id": "request-1",
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": names[k], "data": v.reshape(-1).tolist()} for k, v in inputs.items()
        ],
    }


def post(server, path: str, body: bytes, headers: dict | None = None):
    return harness.http("POST", server.url + path, body, {"Content-Type": "application/json", **(headers or {})})


def test_metadata_and_health_come_from_the_serving_build(server, releases):
    h = build_hash(releases["v1"])
    assert server.get("/v2/health/live") == (200, {"live": True})
    assert server.get("/v2/health/ready") == (200, {"ready": True})
    assert server.get(f"/v2/models/{M}/ready") == (200, {"name": M, "ready": True})
    status, meta = server.get(f"/v2/models/{M}")
    assert status == 200
    assert meta == {
        "name": M,
        "versions": [h],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1]}, {"name": "mask", "datatype": "BOOL", "shape": [-1, -1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert server.get(f"/v2/models/{M}/versions/{h}")[1] == meta
    assert server.get(f"/v2/models/{M}/versions/{h[:12]}/ready")[0] == 200


def test_json_inference_answers_the_golden_outputs_with_the_build_hash_as_version(server, releases):
    inputs, expected = golden(releases["v1"])
    for path in (f"/v2/models/{M}/infer", f"/v2/models/{M}/versions/{build_hash(releases['v1'])}/infer"):
        status, answer = post(server, path, json.dumps(json_infer(inputs)).encode())
        assert status == 200, answer
        assert answer["model_name"] == M and answer["model_version"] == build_hash(releases["v1"]) and answer["id"] == "request-1"
        [out] = answer["outputs"]
        assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == list(expected["logits"].shape)
        np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), expected["logits"], atol=1e-5, rtol=1e-4)


def test_binary_tensor_data_in_and_out(server, releases):
    inputs, expected = golden(releases["v1"])
    raw = {k: np.ascontiguousarray(v).tobytes() for k, v in inputs.items()}
    doc = json_infer(inputs)
    for entry in doc["inputs"]:
        del entry["data"]
        entry["parameters"] = {"binary_data_size": len(raw[entry["name"]])}
    doc["parameters"] = {"binary_data_output": True}
    head = json.dumps(doc).encode()
    body = head + raw["tokens"] + raw["mask"]
    request = harness.urllib.request.Request(
        f"{server.url}/v2/models/{M}/infer", data=body, method="POST",
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
    )  # fmt: skip
    with harness.urllib.request.urlopen(request, timeout=10) as response:
        length = int(response.headers["Inference-Header-Content-Length"])
        data = response.read()
    answer = json.loads(data[:length])
    [out] = answer["outputs"]
    assert out["parameters"]["binary_data_size"] == expected["logits"].nbytes and "data" not in out
    logits = np.frombuffer(data[length:], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(logits, expected["logits"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "path, body, headers, status, message",
    [
        (f"/v2/models/other/infer", b'{"inputs": []}', {}, 404, "model 'other' is not served here"),
        (f"/v2/models/{M}/versions/{'0' * 64}/infer", b'{"inputs": []}', {}, 404, "is not serving; the serving version is"),
        (f"/v2/models/{M}/infer", b"{", {}, 400, "not valid JSON"),
        (f"/v2/models/{M}/infer", b'{"inputs": []}', {}, 400, 'a list of "inputs"'),
        (f"/v2/models/{M}/infer", b'{"inputs": [{"name": "tokens", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}', {}, 422,
         "input 'tokens': datatype FP32, expected INT64"),
        (f"/v2/models/{M}/infer", b'{"inputs": [{"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}', {}, 422,
         "missing input 'mask' (BOOL, shape [-1, -1])"),
        (f"/v2/models/{M}/infer", b'{"inputs": [{"name": "tokens", "shape": [1, 3], "datatype": "INT64", "data": [1, 2]}]}', {}, 422,
         "input 'tokens': 2 values for shape [1, 3]"),
        (f"/v2/models/{M}/infer", b'{"inputs": [{"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 99]},'
         b' {"name": "mask", "shape": [1, 2], "datatype": "BOOL", "data": [true, true]}]}', {}, 422, "values must lie in [0, 32)"),
        (f"/v2/models/{M}/infer", b'{"inputs": [{"name": "tokens", "shape": [1, 1], "datatype": "INT64", "parameters": {"binary_data_size": 8}}]}',
         {"Inference-Header-Content-Length": "5000"}, 400, "inference-header-content-length is 5000"),
        (f"/v2/models/{M}/infer", b'{"inputs": [{"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}', {}, 422,
         "unknown input 'texts'; the model's inputs are tokens, mask"),
    ],
)
def test_a_clients_mistake_is_a_4xx_with_one_error_line(server, path, body, headers, status, message):
    got, answer = post(server, path, body, headers)
    assert got == status, answer
    assert isinstance(answer, dict) and set(answer) == {"error"} and message in answer["error"], answer
    assert server.get("/v2/health/ready")[0] == 200  # and the service keeps serving


def test_bytes_elements_in_binary_form_are_length_prefixed():
    from modelgate.serve.oip import _bytes_elements

    raw = b"".join(struct.pack("<I", len(t)) + t for t in (b"first text", "é".encode()))
    assert _bytes_elements(raw, "texts") == [b"first text", "é".encode()]
    with pytest.raises(Exception, match="truncated BYTES element"):
        _bytes_elements(raw[:-1], "texts")
