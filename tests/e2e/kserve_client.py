"""One model, through the kserve SDK's Open Inference Protocol client (run by kserve_client_e2e.sh
in a venv with PyPI's kserve; not part of `bazel test`, whose lock cannot hold kserve: every kserve
release needs protobuf < 7, and the models' closures pin protobuf 7).

    python kserve_client.py URL MODEL BUNDLE_DIR

Sends the release's golden inputs as binary tensors (the SDK's default) asking once for JSON and
once for binary outputs and checks both against the release's expected outputs; for a model with a
text front end also raw texts as BYTES. (The answering version is not checked here: the SDK's
InferResponse.from_bytes drops model_version; //tests/serve:package_test checks it with tritonclient.) Prints one line per check; exits 1 if any fails.
"""

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from safetensors.numpy import load_file

DATATYPES = {"int64": "INT64", "bool": "BOOL", "float32": "FP32"}
TEXTS = ["A cat sits on the mat.", "A cat is sitting on a mat.", "Quarterly earnings rose by four percent."]


async def main(url: str, model: str, bundle: Path) -> int:
    failures = 0
    build = json.loads((bundle / "manifest.json").read_text())["build_hash"]
    inputs, expected = load_file(str(bundle / "inputs.safetensors")), load_file(str(bundle / "expected.safetensors"))
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        for binary_out in (False, True):
            request_inputs = []
            for name, value in inputs.items():
                item = InferInput(name, list(value.shape), DATATYPES[str(value.dtype)])
                item.set_data_from_numpy(value)
                request_inputs.append(item)
            parameters = {"binary_data_output": True} if binary_out else None
            request = InferRequest(model_name=model, infer_inputs=request_inputs, parameters=parameters)
            response = await client.infer(url, request, model_name=model)
            ok = response.model_name == model
            for name, value in expected.items():
                got = response.get_output_by_name(name).as_numpy()
                ok &= got.shape == value.shape and np.allclose(got, value, atol=1e-5, rtol=1e-4)
            failures += not ok
            print(f"  {'ok  ' if ok else 'FAIL'}  kserve {model}: golden inputs, {'binary' if binary_out else 'JSON'} outputs of build {build[:12]}")
        if model == "minilm":
            texts = InferInput("texts", [len(TEXTS)], "BYTES")
            texts.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
            response = await client.infer(url, InferRequest(model_name=model, infer_inputs=[texts]), model_name=model)
            e = response.get_output_by_name("embeddings").as_numpy()
            similar, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
            ok = e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, rtol=1e-5) and similar > 0.8 and unrelated < 0.3
            failures += not ok
            print(f"  {'ok  ' if ok else 'FAIL'}  kserve minilm: 3 raw texts as BYTES -> unit embeddings, cos(paraphrase) {similar:.3f}, cos(unrelated) {unrelated:.3f}")
    finally:
        await client.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))))
