"""Fixtures: two real tiny_transformer release bundles (v1, v2), keys, registries on both backends.

Building the bundles trains and exports the model twice (~20-50 s on two cores). To reuse them
across runs while iterating, set MODELGATE_SERVE_TEST_BUNDLES=DIR: bundles found there are
reused, missing ones are built there.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from modelgate.testing.fixtures import fake_gcs  # noqa: F401 - a fixture, used by name
from modelgate.spec import load_spec
from tests.serve import harness
from tests.serve.bundles import make_release

V1_HPARAMS: dict = {}
V2_HPARAMS = {"steps": 200}
# Another architecture: wider and one layer deeper (weights the v1 model code cannot load).
V3_HPARAMS = {"d_model": 48, "num_layers": 3}


@pytest.fixture(scope="session")
def releases(tmp_path_factory) -> dict[str, Path]:
    """{"v1", "v2", "v3": bundle dir}: real weights, ONNX, golden data and release manifests; v3
    has another architecture (V3_HPARAMS)."""
    root = Path(os.environ.get("MODELGATE_SERVE_TEST_BUNDLES") or tmp_path_factory.mktemp("releases"))
    spec = load_spec(harness.MODEL)
    out = {}
    for name, hparams in (("v1", V1_HPARAMS), ("v2", V2_HPARAMS), ("v3", V3_HPARAMS)):
        label = "-".join(f"{k}{v}" for k, v in sorted(hparams.items())) or "default"
        existing = root / f"{spec.name}-{label}" / "bundle"
        out[name] = existing if (existing / "manifest.json").is_file() else make_release(spec, hparams, root)
    return out


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, Path]:
    return harness.make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(autouse=True)
def notify_secret(monkeypatch):
    """promote (in this process) signs notifications with the secret the servers are started with."""
    monkeypatch.setenv("MODELGATE_NOTIFY_SECRET", harness.SECRET)
    return harness.SECRET


@pytest.fixture
def local_registry(tmp_path) -> str:
    return f"file://{tmp_path / 'registry'}"


@pytest.fixture
def gcs_registry(fake_gcs) -> str:  # noqa: F811 - fake_gcs is the imported fixture
    from google.cloud import storage

    bucket = f"mg-serve-{uuid.uuid4().hex[:16]}"
    storage.Client().create_bucket(bucket)
    return f"gs://{bucket}/serve"


@pytest.fixture
def servers(tmp_path):
    """Starts serve processes for a test and stops them after it, whatever happens."""
    started: list[harness.Server] = []

    def start(registry_uri: str, public_key: Path, **kwargs) -> harness.Server:
        server = harness.start_server(registry_uri, public_key, tmp_path / f"serve{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
