"""A release in another package than its model's weights: the gate ran on the model's own export."""

import hashlib
import json
import os
from pathlib import Path

EXPORT_MANIFEST = Path(os.environ["MODELGATE_EXPORT_MANIFEST"])
RELEASE_MANIFEST = Path(os.environ["MODELGATE_RELEASE_MANIFEST"])


def test_the_release_is_the_model_packages_build():
    export = json.loads(EXPORT_MANIFEST.read_text())
    release = json.loads(RELEASE_MANIFEST.read_text())
    assert release["model"] == export["model"] == "tiny_transformer"
    assert release["build_hash"] == export["build_hash"]


def test_the_bundle_ships_the_exported_bytes():
    release = json.loads(RELEASE_MANIFEST.read_text())
    for name in ("weights.safetensors", "model.onnx"):
        exported = (EXPORT_MANIFEST.parent / name).read_bytes()
        bundled = (RELEASE_MANIFEST.parent / name).read_bytes()
        assert bundled == exported, name
        assert release["files"][name]["sha256"] == hashlib.sha256(bundled).hexdigest(), name


def test_the_release_binds_this_packages_receipts():
    release = json.loads(RELEASE_MANIFEST.read_text())
    assert set(release["files"]) >= {"receipt.cross_package_golden_test_cpu.json", "receipt.cross_package_golden_test_gpu.json"}
