"""Real release bundles for the serving tests, made the way the Bazel release rule makes them.

`make_release(spec, hparams, root)` trains and exports the model (modelgate.export.run_export),
writes golden data from the exported weights' own outputs, runs the release gate and assembles
the bundle directory that promote uploads, its manifest written as the release action writes it
(modelgate.manifest):
    manifest.json  weights.safetensors  model.onnx
    inputs.safetensors  expected.safetensors  golden.json     (golden data, under its own names)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from modelgate import gate, golden
from modelgate import manifest as manifests
from modelgate.export import run_export
from modelgate.formats import GOLDEN_EXPECTED, GOLDEN_FILES, RELEASE_MANIFEST, WEIGHTS
from modelgate.loading import load_weights
from modelgate.spec import ModelSpec
from modelgate.testing.releases import passing_receipts


def make_release(spec: ModelSpec, hparams: dict, root: Path) -> Path:
    """Builds one release bundle under root/<name>/ and returns its directory."""
    spec = spec.with_config(hparams)
    label = "-".join(f"{k}{v}" for k, v in sorted(hparams.items())) or "default"
    work = Path(root) / f"{spec.name}-{label}"
    export_dir, golden_dir, bundle = work / "export", work / "golden", work / "bundle"
    attributes = {"model": spec.name, "hparams": dict(hparams)}
    # In-process, after torch loaded: the native kernels (recorded as such in the build hash).
    # The model's own sources are the build's inputs, as in the export action (and what the test
    # receipt below is bound to).
    root_dir = Path(__file__).absolute().parents[2]  # the runfiles tree under Bazel: declared files only
    sources = {f"models/{spec.name}/{f.name}": str(f) for f in sorted((root_dir / "models" / spec.name).glob("*.py"))}
    export_manifest = run_export(spec, export_dir, inputs=sources, attributes=attributes, strict_numerics=False)

    model = load_weights(spec, export_dir / WEIGHTS)
    inputs = spec.golden_inputs()
    with torch.no_grad():
        outputs = spec.forward(model, inputs)
    provenance = {"build_hash": export_manifest["build_hash"], "generated_by": "tests/serve/bundles.py"}
    golden.write(golden_dir, spec.name, inputs, outputs, provenance)

    checks, metrics = gate.run_gate(spec, export_dir, export_manifest, golden_dir)
    if not all(c.passed for c in checks):
        raise RuntimeError(gate.failure_text(spec.name, checks))
    bundle.mkdir(parents=True)
    for name in export_manifest["files"]:
        shutil.copy(export_dir / name, bundle / name)
    for name in GOLDEN_FILES:
        shutil.copy(golden_dir / name, bundle / name)
    files = [manifests.BundleFile(name, bundle / name) for name in [*export_manifest["files"], *GOLDEN_FILES]]
    manifest = manifests.compose(export_manifest, gate.verdict(export_manifest, checks, metrics), files)
    # A passing CPU test receipt bound to the build, as the release rule ships one: the promote
    # command refuses a release without its receipts (tests/serve/swap_load.py promotes with it).
    manifest = passing_receipts(bundle, manifest)
    (bundle / RELEASE_MANIFEST).write_text(manifests.dumps(manifest))
    return bundle


def rebound_receipts(directory: Path, manifest: dict) -> dict:
    """The manifest with its test receipt made again for its build hash: a derived bundle (another
    build hash) keeps no receipt of the build it came from, which promote would refuse."""
    for name in [n for n in manifest["files"] if n.startswith("receipt.")]:
        (Path(directory) / name).unlink(missing_ok=True)
        del manifest["files"][name]
    manifest.pop("tests", None)
    return passing_receipts(Path(directory), manifest)


def build_hash(bundle: Path) -> str:
    return json.loads((Path(bundle) / "manifest.json").read_text())["build_hash"]


def with_golden_expected_of(bundle: Path, other: Path, out: Path) -> Path:
    """A copy of `bundle` whose golden outputs are `other`'s: a release that cannot pass warm-up.

    It gets its own build hash and a manifest that lists the swapped file's digest, so only the
    warm-up can catch it (signature and digests are fine)."""
    import hashlib

    out = Path(out)
    shutil.copytree(bundle, out)
    shutil.copy(Path(other) / GOLDEN_EXPECTED, out / GOLDEN_EXPECTED)
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / GOLDEN_EXPECTED).read_bytes()
    manifest["files"][GOLDEN_EXPECTED] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["build_hash"] = hashlib.sha256(f"{manifest['build_hash']}/golden-of/{build_hash(other)}".encode()).hexdigest()
    manifest = rebound_receipts(out, manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out
