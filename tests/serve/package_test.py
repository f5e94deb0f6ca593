"""The serving package (bazel run //tools:serve_package) runs with CPython 3.11 alone: built here
from the packaging tool, started with a bare environment (no PYTHONPATH, no runfiles, no
checkout, the machine's site-packages off), it pulls every model's real release from a registry,
verifies and warms it up, and answers tritonclient (PyPI's Triton client, binary tensors in and
out) with the release's golden outputs; minilm also from raw text as BYTES. Torch is not in it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.serve import harness

TOOL = Path(os.environ["MODELGATE_SERVE_PACKAGE"])
# The release bundles' directories (bazel-bin/models/<m>/release/), by model.
RELEASES = {k.removeprefix("MODELGATE_RELEASE_"): Path(v).parent for k, v in os.environ.items() if k.startswith("MODELGATE_RELEASE_")}
TEXTS = ["A cat sits on the mat.", "A cat is sitting on a mat.", "Quarterly earnings rose by four percent."]


def triton_infer(port: int, model: str, inputs: dict):
    """Inference through tritonclient.http, as a Triton user would call it (binary tensors)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
        meta = client.get_model_metadata(model)
        datatypes = {i["name"]: i["datatype"] for i in meta["inputs"]}
        request = []
        for name, value in inputs.items():
            item = httpclient.InferInput(name, list(value.shape), datatypes[name])
            item.set_data_from_numpy(value)
            request.append(item)
        return client.infer(model, request)
    finally:
        client.close()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package") / "serve"
    done = subprocess.run([str(TOOL), f"--out={out}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"serve_package: {out}: ")
    return out


def test_the_package_holds_the_service_and_its_pinned_packages_but_no_torch(package):
    doc = json.loads((package / "PACKAGE.json").read_text())
    assert {"onnxruntime", "numpy", "tokenizers", "fastapi", "uvicorn", "safetensors"} <= set(doc["packages"])
    assert not {"torch", "onnx", "onnxscript"} & set(doc["packages"])
    assert "modelgate/serve/runtime.py" in doc["app"] and not any(k.startswith("models/") for k in doc["app"])
    assert not (package / "site" / "torch").exists() and not (package / "app" / "modelgate" / "export.py").exists()
    lines = (package / "requirements.txt").read_text().splitlines()
    assert any(line.startswith(f"onnxruntime=={doc['packages']['onnxruntime']['version']} --hash=sha256:") for line in lines)
    dockerfile = (harness.REPO / "tools/modelgate/serve/Dockerfile").read_text()
    assert '"/opt/modelgate-serve/bin/serve"' in dockerfile and (package / "bin" / "serve").stat().st_mode & 0o111


def test_the_package_serves_real_releases_with_python_alone(package, tmp_path):
    keys = harness.make_keys(tmp_path / "keys")
    uri = f"file://{tmp_path / 'registry'}"
    for bundle in RELEASES.values():
        harness.promote(uri, bundle, keys["signer"])
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MODELGATE_PYTHON": "/usr/bin/python3.11"}
    for model, bundle in sorted(RELEASES.items()):
        port = harness.free_port()
        log = tmp_path / f"{model}.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(package / "bin" / "serve"), f"--model={model}", "--tag=stable", f"--registry={uri}",
                 f"--public-key={keys['signer_public']}", f"--port={port}", f"--state-dir={tmp_path / model}"],
                stdout=out, stderr=subprocess.STDOUT, env=bare, cwd=tmp_path,
            )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"

            def ready():
                if process.poll() is not None:
                    raise AssertionError(f"serve exited {process.returncode}: {log.read_text()}")
                try:
                    return harness.http("GET", url + "/v2/health/ready", timeout=2)[0] == 200
                except OSError:
                    return False

            harness.wait_for(ready, 120, f"the package to serve {model}", interval_s=0.05)
            print(f"{model}: ready {time.monotonic() - started:.2f} s after start")
            manifest = json.loads((bundle / "manifest.json").read_text())
            inputs, expected = load_file(str(bundle / "inputs.safetensors")), load_file(str(bundle / "expected.safetensors"))
            answers = triton_infer(port, model, inputs)
            assert answers.get_response()["model_version"] == manifest["build_hash"]
            for name, value in expected.items():
                np.testing.assert_allclose(answers.as_numpy(name), value, atol=1e-5, rtol=1e-4)
            if model == "minilm":
                embeddings = triton_infer(port, model, {"texts": np.array([t.encode() for t in TEXTS], dtype=object)}).as_numpy("embeddings")
                assert embeddings.shape == (3, 384)
                np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
                similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
                assert similar > 0.8 and unrelated < 0.3, (similar, unrelated)
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            assert "/torch/" not in maps and "libtorch" not in maps
        finally:
            process.terminate()
            process.wait(30)
