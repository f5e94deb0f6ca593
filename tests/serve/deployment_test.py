"""The rollout, in-process: what is refused and why, what keeps serving, what requests see."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from modelgate.serve.app import create_app
from modelgate.serve.deployment import Deployment, StateDirBusy
from modelgate.serve.notifications import NotificationGuard
from tests.serve import harness
from tests.serve.bundles import build_hash, with_golden_expected_of

with warnings.catch_warnings():  # starlette suggests a package (httpx2) that the lock does not pin
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def deploy(local_registry, keys, tmp_path):
    """Makes a Deployment of tiny_transformer:stable over the test's local registry (no worker thread:
    tests call check() themselves)."""
    made = []

    def make(public_key: Path | None = None, state_dir: Path | None = None, **kwargs) -> Deployment:
        deployment = Deployment(
            harness.MODEL,
            "stable",
            harness.open_registry(local_registry),
            str(public_key or keys["signer_public"]),
            state_dir or tmp_path / f"state{len(made)}",
            **kwargs,
        )
        deployment.claim()
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.stop()


def golden_request(bundle: Path) -> dict:
    inputs = load_file(str(bundle / "inputs.safetensors"))
    return {"inputs": {name: value.tolist() for name, value in inputs.items()}}


def build_dirs(deployment: Deployment) -> list[str]:
    return sorted(p.name[:12] for p in deployment.state_dir.iterdir() if p.is_dir())


def test_a_build_that_misses_its_golden_outputs_is_refused_and_the_old_one_keeps_serving(
    deploy, local_registry, releases, keys, tmp_path
):
    v1, v2 = releases["v1"], releases["v2"]
    broken = with_golden_expected_of(v2, v1, tmp_path / "broken")
    harness.promote(local_registry, v1, keys["signer"])
    deployment = deploy()
    assert deployment.check("startup").outcome == "serving"

    harness.promote(local_registry, broken, keys["signer"])
    attempt = deployment.check("notify")
    assert attempt.outcome == "refused"
    assert attempt.error.startswith("warm-up output does not match the build's golden data: logits: max abs")
    assert "tolerance atol=1e-05 rtol=0.0001 (float32)" in attempt.error
    assert deployment.current.build_hash == build_hash(v1)
    version = deployment.version()
    assert version["build_hash"] == build_hash(v1) and version["status"] == "serving"
    assert version["error"].startswith(f"build {build_hash(broken)[:12]} (tag stable) refused: warm-up output")
    assert build_dirs(deployment) == [build_hash(v1)[:12]]


def test_a_changed_manifest_or_a_foreign_key_fails_the_signature(deploy, local_registry, releases, keys):
    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    harness.promote(local_registry, v2, keys["signer"])

    stranger = deploy(public_key=keys["stranger_public"])
    attempt = stranger.check("startup")
    assert attempt.outcome == "refused" and "signature does not verify" in attempt.error
    assert stranger.current is None and stranger.version()["status"] == "not serving"
    assert build_dirs(stranger) == []

    # Someone edits v2's stored manifest (here: its metrics) after it was signed.
    path = Path(local_registry[len("file://") :]) / "models" / harness.MODEL / "builds" / f"{build_hash(v2)}.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["accuracy"] = 1.0
    path.chmod(0o644)
    path.write_text(json.dumps(doc))
    attempt = deploy().check("startup")
    assert attempt.outcome == "refused"
    assert "the manifest was changed after it was signed" in attempt.error


def test_a_refused_build_is_not_fetched_again_by_every_poll(deploy, local_registry, releases, keys, tmp_path):
    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    clock = FakeClock()
    deployment = deploy(retry_refused_s=300, clock=clock)
    deployment.check("startup")
    harness.promote(local_registry, with_golden_expected_of(v2, v1, tmp_path / "broken"), keys["signer"])
    assert deployment.check("poll").outcome == "refused"
    clock.now += 60
    assert deployment.check("poll") is None  # remembered
    assert deployment.check("notify").outcome == "refused"  # a notification always looks again
    clock.now += 301
    assert deployment.check("poll").outcome == "refused"
    assert deployment.current.build_hash == build_hash(v1)


def test_requests_in_flight_finish_on_the_build_they_started_on(deploy, local_registry, releases, keys):
    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    deployment = deploy()
    deployment.check("startup")
    client = TestClient(create_app(deployment, NotificationGuard(harness.SECRET), manage_deployment=False))

    old_model = deployment.current.runner
    entered, release = threading.Event(), threading.Event()
    original_forward = old_model.forward

    def slow_forward(*args):
        entered.set()
        assert release.wait(30)
        return original_forward(*args)

    old_model.forward = slow_forward
    in_flight = {}
    thread = threading.Thread(target=lambda: in_flight.update(response=client.post("/predict", json=golden_request(v1))))
    thread.start()
    assert entered.wait(30)

    harness.promote(local_registry, v2, keys["signer"])
    assert deployment.check("notify").outcome == "serving"  # swapped while the request is inside v1's forward
    after = client.post("/predict", json=golden_request(v2))
    assert after.status_code == 200 and after.json()["build_hash"] == build_hash(v2)

    release.set()
    thread.join(30)
    response = in_flight["response"]
    assert response.status_code == 200 and response.json()["build_hash"] == build_hash(v1)
    expected = load_file(str(v1 / "expected.safetensors"))["logits"]
    np.testing.assert_allclose(np.array(response.json()["outputs"]["logits"]), expected, atol=1e-5, rtol=1e-4)


def test_health_and_version_before_anything_is_promoted(deploy):
    deployment = deploy()
    deployment.check("startup")
    client = TestClient(create_app(deployment, NotificationGuard(None), manage_deployment=False))
    health = client.get("/healthz")
    assert health.status_code == 503 and "does not exist" in health.json()["error"]
    version = client.get("/version").json()
    assert version["status"] == "not serving" and version["build_hash"] is None and version["checks"] == 1
    assert client.post("/notify", content=b"{}").status_code == 503
    # The schema is the serving build's, so there is none before a build serves.
    schema = client.get("/schema")
    assert schema.status_code == 503 and "no build is serving yet" in schema.json()["detail"]
    assert client.get("/v2/health/live").status_code == 200
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 503 and "does not exist" in ready.json()["error"]
    assert client.get("/v2/models/tiny_transformer").json() == {"error": health.json()["error"].join(("no build is serving yet: ", ""))}


def test_one_service_per_state_directory(deploy, tmp_path):
    deploy(state_dir=tmp_path / "shared")
    with pytest.raises(StateDirBusy, match="is in use by another service; pass --state-dir"):
        deploy(state_dir=tmp_path / "shared")


def test_a_registry_outage_keeps_serving_and_is_retried_at_the_next_poll(deploy, local_registry, releases, keys):
    from modelgate.errors import StorageError

    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    deployment = deploy()
    deployment.check("startup")
    harness.promote(local_registry, v2, keys["signer"])

    storage = deployment.registry.storage
    real_read = storage.read_hashed_into

    def unreachable(*args, **kwargs):
        raise StorageError("no answer from the registry")

    storage.read_hashed_into = unreachable
    attempt = deployment.check("poll")
    assert attempt.outcome == "failed" and attempt.error == "no answer from the registry"
    assert deployment.current.build_hash == build_hash(v1)
    assert "failed: no answer from the registry; still serving" in deployment.version()["error"]
    storage.read_hashed_into = real_read
    assert deployment.check("poll").outcome == "serving"  # an outage is not held against the build
    assert deployment.current.build_hash == build_hash(v2) and deployment.version()["error"] is None


def test_the_service_does_not_load_the_export_path():
    # Serving loads weights and checks golden data (modelgate.loading); onnx, onnxruntime and
    # onnxscript belong to the build, and a service that imports them pulls in the whole exporter.
    import subprocess
    import sys

    code = (
        "import sys, modelgate.serve.deployment, modelgate.serve.app, modelgate.cli.serve\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'onnxscript', 'modelgate.export'}"
        " | {m for m in sys.modules if m in ('modelgate.export', 'modelgate.gate')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=None)
    assert out.stdout.strip() == "[]", out.stdout
