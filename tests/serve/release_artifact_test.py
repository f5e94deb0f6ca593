"""The service runs what the release tested: the bundle's model.onnx as the build declares it, not
the service's own checkout; and a torch runtime only where the checkout is the build's code.

Each service here is a real `serve` process. The "altered checkout" is a copy of models/ whose
tiny_transformer/model.py differs in a branch the golden batch never takes (a batch of one), put
first on the service's PYTHONPATH; a poisoned `torch` package beside it makes any import of torch
fail, so a service that runs at all on the default runtime ran neither.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from modelgate.formats import WEIGHTS
from modelgate.loading import load_weights
from modelgate.spec import load_spec
from tests.serve import harness
from tests.serve.bundles import build_hash
from tests.serve.conftest import V3_HPARAMS

ALTERATION = '''

_original_forward = TinyTransformer.forward


def _altered_forward(self, tokens, mask):
    logits = _original_forward(self, tokens, mask)
    return -logits if tokens.shape[0] == 1 else logits  # a branch the golden batch (8 rows) never takes


TinyTransformer.forward = _altered_forward
'''


def altered_checkout(root: Path) -> Path:
    """models/ copied, with tiny_transformer's forward changed for a batch of one; and a `torch`
    that cannot be imported."""
    shutil.copytree(harness.REPO / "models", root / "models", ignore=shutil.ignore_patterns("__pycache__", "*_test.py"))
    for package in (root / "models", root / "models" / harness.MODEL):  # regular packages, which a
        (package / "__init__.py").touch()  # namespace portion later on the path could not shadow
    model_py = root / "models" / harness.MODEL / "model.py"
    model_py.write_text(model_py.read_text() + ALTERATION)
    poison = root / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('torch imported by the serving process')\n")
    return root


def env_with(*first: Path) -> dict:
    return {"PYTHONPATH": ":".join([*(str(p) for p in first), harness.child_pythonpath()])}


def batch_of_one(bundle: Path) -> dict:
    from safetensors.numpy import load_file

    inputs = load_file(str(bundle / "inputs.safetensors"))
    return {name: value[:1].tolist() for name, value in inputs.items()}


def release_answer(bundle: Path, inputs: dict, hparams: dict | None = None) -> np.ndarray:
    """What the released weights answer in the build's own (unaltered) model code."""
    spec = load_spec(harness.MODEL).with_config(json.loads((bundle / "manifest.json").read_text())["config"])
    model = load_weights(spec, bundle / WEIGHTS)
    spec_inputs = {t.name: torch.tensor(inputs[t.name], dtype=t.torch_dtype) for t in spec.inputs}
    with torch.no_grad():
        return spec.forward(model, spec_inputs)["logits"].numpy()


def test_a_service_built_from_altered_model_code_serves_the_tested_build(local_registry, releases, keys, servers, tmp_path):
    v1 = releases["v1"]
    harness.promote(local_registry, v1, keys["signer"])
    checkout = altered_checkout(tmp_path / "checkout")
    server = servers(local_registry, keys["signer_public"], extra_env=env_with(checkout / "poison", checkout))
    version = server.wait_serving(build_hash(v1))
    assert version["runtime"] == "onnxruntime"

    inputs = batch_of_one(v1)
    status, answer = server.post_json("/predict", {"inputs": inputs})
    assert status == 200, answer
    expected = release_answer(v1, inputs)
    np.testing.assert_allclose(np.array(answer["outputs"]["logits"]), expected, atol=1e-4, rtol=1e-3)
    # The altered branch would have answered the negation: the classes differ.
    assert np.argmax(answer["outputs"]["logits"], -1).tolist() != np.argmax(-expected, -1).tolist()
    assert "torch imported" not in server.log()


def test_the_torch_runtime_refuses_a_build_its_checkout_did_not_make(local_registry, releases, keys, servers, tmp_path):
    v1 = releases["v1"]
    harness.promote(local_registry, v1, keys["signer"])
    checkout = altered_checkout(tmp_path / "checkout")
    server = servers(local_registry, keys["signer_public"], extra_args=["--runtime=torch"], extra_env=env_with(checkout))
    try:
        version = harness.wait_for(lambda: (v := server.version())["error"] and v, 60, "the rollout to be refused")
    except TimeoutError:
        raise AssertionError(f"{server.version()}\n{server.log()[-3000:]}") from None
    assert version["build_hash"] is None and version["runtime"] == "torch"
    line = version["last_rollout"]["error"]
    assert line.startswith(f"--runtime=torch refuses build {build_hash(v1)[:12]}: this checkout's models/{harness.MODEL}/model.py (sha256 ")
    assert "is not the file the build was made from (sha256 " in line and "\n" not in line
    status, _ = server.post_json("/predict", {"inputs": batch_of_one(v1)})
    assert status == 503


def test_the_torch_runtime_serves_the_build_its_checkout_made(local_registry, releases, keys, servers):
    v1 = releases["v1"]
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"], extra_args=["--runtime=torch"])
    assert server.wait_serving(build_hash(v1))["runtime"] == "torch"
    inputs = batch_of_one(v1)
    status, answer = server.post_json("/predict", {"inputs": inputs})
    assert status == 200, answer
    np.testing.assert_allclose(np.array(answer["outputs"]["logits"]), release_answer(v1, inputs), atol=1e-5, rtol=1e-4)


def test_an_architecture_change_rolls_out_by_notification(local_registry, releases, keys, servers):
    v1, v3 = releases["v1"], releases["v3"]
    config = json.loads((v3 / "manifest.json").read_text())["config"]
    assert {k: config[k] for k in V3_HPARAMS} == V3_HPARAMS  # really another architecture
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"])
    server.wait_serving(build_hash(v1))

    harness.promote(local_registry, v3, keys["signer"], notify_urls=[server.notify_url])
    version = server.wait_serving(build_hash(v3), timeout_s=60)
    assert version["last_rollout"]["trigger"] == "notify" and version["error"] is None
    inputs = batch_of_one(v3)
    status, answer = server.post_json("/predict", {"inputs": inputs})
    assert status == 200 and answer["build_hash"] == build_hash(v3)
    np.testing.assert_allclose(np.array(answer["outputs"]["logits"]), release_answer(v3, inputs), atol=1e-4, rtol=1e-3)
    status, meta = server.get(f"/v2/models/{harness.MODEL}")
    assert status == 200 and meta["versions"] == [build_hash(v3)]
