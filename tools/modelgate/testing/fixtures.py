"""pytest fixtures for every suite that talks to a registry: a fake-gcs-server process for the
session, signing keys, a clean workspace per test, and a registry per backend. A suite's conftest.py
imports the ones it uses by name."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from modelgate.registry.registry import Registry
from modelgate.registry.storage import open_storage
from modelgate.testing.fake_gcs import FakeGCS
from modelgate.registry.uri import parse

BACKENDS = ["local", "gcs"]


@pytest.fixture(scope="session")
def fake_gcs():
    """A real fake-gcs-server for the whole session; the GCS client finds it through STORAGE_EMULATOR_HOST."""
    server = FakeGCS()
    url = server.url
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    yield url
    server.stop()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, Path]:
    """An EC P-256 key pair, plus a second one that did not sign anything."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("signer", "stranger"):
        key = ec.generate_private_key(ec.SECP256R1())
        (d / f"{name}.pem").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (d / f"{name}.pub.pem").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        out[name] = d / f"{name}.pem"
        out[f"{name}_public"] = d / f"{name}.pub.pem"
    return out


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path, keys):
    """Each test runs in its own workspace with the test key pair configured and no stray settings."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for name in ("MODELGATE_REGISTRY", "MODELGATE_NOTIFY_SECRET", "BUILD_WORKING_DIRECTORY", "MODELGATE_GCS_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(workspace))
    monkeypatch.setenv("MODELGATE_SIGNING_KEY", str(keys["signer"]))
    monkeypatch.setenv("MODELGATE_PUBLIC_KEY", str(keys["signer_public"]))
    monkeypatch.chdir(workspace)
    return workspace


@pytest.fixture(params=BACKENDS)
def registry_uri(request, tmp_path) -> str:
    """A fresh, empty registry on each backend."""
    if request.param == "local":
        return f"file://{tmp_path / 'registry'}"
    request.getfixturevalue("fake_gcs")
    from google.cloud import storage

    bucket = f"mg-{uuid.uuid4().hex[:20]}"
    storage.Client().create_bucket(bucket)
    return f"gs://{bucket}/team/registry"


@pytest.fixture
def registry(registry_uri) -> Registry:
    return Registry(open_storage(parse(registry_uri)))
