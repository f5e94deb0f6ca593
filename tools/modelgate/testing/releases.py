"""Fabricated release bundles (synthetic bytes, no torch): what promote reads, without a build."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from modelgate import manifest as manifests
from modelgate import receipts as receipts_lib
from modelgate.formats import EXPORT_SCHEMA, RELEASE_SCHEMA

GATES = {
    "accuracy": {"floor": 0.5, "max_regression": 0.02, "higher_is_better": True},
    "loss": {"floor": 2.0, "max_regression": 0.05, "higher_is_better": False},
}


def make_bundle(
    root: Path,
    model: str = "tiny_transformer",
    *,
    seed: int = 0,
    accuracy: float = 0.95,
    loss: float = 0.10,
    weights_size: int = 4096,
    onnx_size: int = 2048,
    shared_onnx: bool = False,
    gate_passed: bool = True,
    schema: str = RELEASE_SCHEMA,
    receipts: bool = True,
    blake3: bool = True,
    test_source: str = "synthetic",
    directory: Path | None = None,
) -> Path:
    """Writes a release bundle directory as the Bazel release rule does (modelgate.manifest, from an
    export record and a gate verdict made up here) and returns it.

    Different seeds give different weights (and build hashes); shared_onnx keeps model.onnx equal
    across seeds, as when only the weights change. blake3=False: a manifest from before blake3
    was recorded (its files listed by sha256 and size only). test_source: what the receipt's test
    file holds (another one: the same build tested by other tests, another release of it).
    gate_passed=False and another `schema` make bundles no release action writes, for promote to
    refuse.
    """
    rng = random.Random(f"{model}/{seed}")
    contents = {
        "weights.safetensors": rng.randbytes(weights_size),
        "model.onnx": random.Random(f"{model}/onnx").randbytes(onnx_size) if shared_onnx else rng.randbytes(onnx_size),
    }
    directory = Path(directory or Path(root) / f"{model}-{seed}")
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, data in contents.items():
        (directory / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    inputs = {f"models/{model}/model.py": hashlib.sha256(f"{model}/{seed}".encode()).hexdigest()}
    export = {
        "schema": EXPORT_SCHEMA,
        "model": model,
        "build_hash": hashlib.sha256(json.dumps([files, inputs], sort_keys=True).encode()).hexdigest(),
        "files": files,
        "inputs": inputs,
        "toolchain": {"python": "3.11.2", "torch": "2.13.0+cpu"},
        "config": {"seed": seed},
        "metrics": {"accuracy": accuracy, "loss": loss},
        "metric_gates": GATES,
    }
    checks = [{"name": "golden", "passed": True, "detail": "synthetic"}]
    verdict = manifests.verdict(export, checks, dict(export["metrics"]), None)
    manifest = manifests.compose(export, verdict, [manifests.BundleFile(name, directory / name) for name in files])
    if receipts:
        manifest = passing_receipts(directory, manifest, test_source)
    if not gate_passed:
        manifest["gate"] = {"passed": False, "checks": [dict(checks[0], passed=False)]}
    manifest["schema"] = schema
    if not blake3:
        manifest["files"] = {name: {k: v for k, v in spec.items() if k != "blake3"} for name, spec in manifest["files"].items()}
    (directory / "manifest.json").write_text(manifests.dumps(manifest))
    return directory


def passing_receipts(directory: Path, manifest: dict, test_source: str = "synthetic") -> dict:
    """The manifest with a passing CPU test receipt bound to its build, written into `directory`
    as the release rule writes it (modelgate.manifest.add_receipts)."""
    model = manifest["model"]
    doc = {
        "schema": receipts_lib.RECEIPT_SCHEMA, "target": f"//models/{model}:model_test_cpu", "variant": "cpu",
        "status": "passed", "counts": {"passed": 3, "failed": 0, "error": 0, "skipped": 0, "total": 3},
        "failures": [], "inputs": dict(manifest["inputs"]), "packages": {},
        "test_files": {f"models/{model}/model_test.py": hashlib.sha256(test_source.encode()).hexdigest()},
    }  # fmt: skip
    return manifests.add_receipts(directory, manifest, [doc], {})


def build_hash(bundle_dir: Path) -> str:
    return json.loads((Path(bundle_dir) / "manifest.json").read_text())["build_hash"]


def file_digests(bundle_dir: Path) -> dict[str, str]:
    return {n: s["sha256"] for n, s in json.loads((Path(bundle_dir) / "manifest.json").read_text())["files"].items()}


def receipt_size(bundle_dir: Path) -> int:
    """Bytes of the bundle's test receipts (uploaded with the build's other files)."""
    files = json.loads((Path(bundle_dir) / "manifest.json").read_text())["files"]
    return sum(s["size"] for n, s in files.items() if n.startswith("receipt."))
