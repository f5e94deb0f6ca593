"""The release manifest (modelgate.manifest): written once by the release action from the export's
record, the gate's verdict and the test receipts; every digest carried forward from where the
build first computed it, the blake3 computed once; bad input refused in one line."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from blake3 import blake3

from modelgate import digests
from modelgate import manifest as manifests
from modelgate import receipts
from modelgate.errors import BundleError

MODEL = "tiny_transformer"
ROOT = Path(os.environ.get("TEST_SRCDIR", "")) / os.environ.get("TEST_WORKSPACE", "")
if not (ROOT / "tools/modelgate/manifest.py").is_file():
    ROOT = Path(__file__).resolve().parents[2]
WEIGHTS_PATH = f"models/{MODEL}/weights/weights.safetensors"
GOLDEN_PATH = f"golden/{MODEL}/golden.json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _export(weights: bytes = b"weights v1", golden: bytes = b'{"golden": 1}') -> dict:
    """An export's record (export.json) of one exported file, golden data among its inputs."""
    return {
        "schema": "modelgate/export@1",
        "model": MODEL,
        "build_hash": sha(b"build-1"),
        "attributes": {"model": MODEL, "hparams": {}},
        "files": {"weights.safetensors": {"sha256": sha(weights), "size": len(weights)}},
        "inputs": {f"models/{MODEL}/model.py": sha(b"model v1"), GOLDEN_PATH: sha(golden)},
        "packages": {"torch": {"version": "2.13.0+cpu", "hashes": ["sha256:aa"]}},
        "toolchain": {"python": "3.11.2"},
        "metrics": {"accuracy": 0.5},
        "metric_gates": {"accuracy": {"floor": 0.5, "max_regression": 0.02, "higher_is_better": True}},
        "training": {"steps": 3},
    }


def _verdict(export: dict, passed: bool = True) -> dict:
    return manifests.verdict(export, [{"name": "golden", "passed": passed, "detail": "ok"}], {"accuracy": 0.9}, {"schema": "s"})


def _receipt(status: str = "passed", failures=()) -> dict:
    failed = len(failures)
    return {
        "schema": receipts.RECEIPT_SCHEMA, "target": f"//models/{MODEL}:model_test_cpu", "variant": "cpu", "status": status,
        "counts": {"passed": 3 - failed, "failed": failed, "error": 0, "skipped": 0, "total": 3}, "failures": list(failures),
        "test_files": {f"models/{MODEL}/model_test.py": sha(b"tests")}, "packages": {},
        "inputs": {f"models/{MODEL}/model.py": sha(b"model v1"), f"models/{MODEL}/model_test.py": sha(b"tests")},
    }  # fmt: skip


def _release_files(tmp_path, weights: bytes = b"weights v1", golden: bytes = b'{"golden": 1}') -> dict[str, Path]:
    paths = {"weights.safetensors": tmp_path / "w.bin", "golden.json": tmp_path / "golden.json", "tokenizer.json": tmp_path / "tok.json"}
    paths["weights.safetensors"].write_bytes(weights)
    paths["golden.json"].write_bytes(golden)
    paths["tokenizer.json"].write_bytes(b'{"vocab": []}')
    return paths


def _action(tmp_path, *, export=None, verdict=None, receipt_docs=None, raw_receipt=None, weights=b"weights v1", files=None):
    """The release action's command line (tools/private/model_release.bzl), as a process."""
    export = export or _export()
    paths = _release_files(tmp_path, weights)
    (tmp_path / "export.json").write_text(json.dumps(export))
    (tmp_path / "release.gate.json").write_text(json.dumps(verdict or _verdict(export)))
    (tmp_path / "release").mkdir(exist_ok=True)
    receipt_paths = []
    for i, doc in enumerate(receipt_docs if receipt_docs is not None else [_receipt()]):
        path = tmp_path / f"r{i}.receipt.json"
        path.write_text(raw_receipt if raw_receipt is not None else json.dumps(doc))
        receipt_paths.append(path)
    sources = {"weights.safetensors": WEIGHTS_PATH, "golden.json": GOLDEN_PATH, "tokenizer.json": "../pip/tokenizer.json"}
    files = files if files is not None else [f"{name}={sources[name]}={path}" for name, path in paths.items()]
    argv = [sys.executable, str(ROOT / "tools/modelgate/manifest.py"), "--model", MODEL, "--export", str(tmp_path / "export.json"),
            "--gate", str(tmp_path / "release.gate.json"), "--out", str(tmp_path / "release/manifest.json"),
            *[f"--receipt={p}" for p in receipt_paths], *[f"--file={f}" for f in files]]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def _one_line(result) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_release_action_writes_the_manifest_once_from_the_three_records(tmp_path):
    ok = _action(tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"release {MODEL}: 1 receipt(s) passed for build {sha(b'build-1')[:12]}"
    manifest = json.loads((tmp_path / "release/manifest.json").read_text())
    export = _export()
    # The export's record, less its schema and attributes; the gate's verdict; the receipts.
    assert manifest["schema"] == "modelgate/release@1" and "attributes" not in manifest
    assert {k: manifest[k] for k in ("model", "build_hash", "inputs", "packages", "toolchain", "metric_gates", "training")} == {
        k: export[k] for k in ("model", "build_hash", "inputs", "packages", "toolchain", "metric_gates", "training")
    }
    assert manifest["metrics"] == {"accuracy": 0.9} and manifest["serving"] == {"schema": "s"}
    assert manifest["gate"] == {"passed": True, "checks": [{"name": "golden", "passed": True, "detail": "ok"}]}
    assert manifest["tests"]["receipts"]["model_test_cpu"]["status"] == "passed"
    bound = (tmp_path / "release/receipt.model_test_cpu.json").read_bytes()
    assert json.loads(bound)["build_hash"] == sha(b"build-1")
    assert manifest["files"]["receipt.model_test_cpu.json"] == {"sha256": sha(bound), "blake3": blake3(bound).hexdigest(), "size": len(bound)}
    manifests.check(manifest, "here")  # what promote, the registry and fetch require


def test_each_files_sha256_is_carried_from_the_build_and_its_blake3_computed_once(tmp_path, monkeypatch):
    paths = _release_files(tmp_path)
    export = _export()
    hashed = []  # (file name, digests computed) of every read of a file for its digests
    real = digests._hash_file
    monkeypatch.setattr(digests, "_hash_file", lambda path, hashers: hashed.append((Path(path).name, len(hashers))) or real(path, hashers))
    files = [manifests.BundleFile("weights.safetensors", paths["weights.safetensors"], WEIGHTS_PATH),
             manifests.BundleFile("golden.json", paths["golden.json"], GOLDEN_PATH),
             manifests.BundleFile("tokenizer.json", paths["tokenizer.json"], "../pip/tokenizer.json")]  # fmt: skip
    manifest = manifests.compose(export, _verdict(export), files)
    # The weights: the export's sha256 and size, a blake3 of their bytes. The golden data: the
    # sha256 the export recorded for it as an input. The tokenizer, which no record lists: both here.
    assert manifest["files"]["weights.safetensors"] == {"sha256": sha(b"weights v1"), "blake3": blake3(b"weights v1").hexdigest(), "size": 10}
    assert manifest["files"]["golden.json"]["sha256"] == export["inputs"][GOLDEN_PATH]
    assert manifest["files"]["tokenizer.json"]["sha256"] == sha(b'{"vocab": []}')
    # One read per file; one digest (blake3) but for the file no record lists (sha256 and blake3).
    assert sorted(hashed) == [("golden.json", 1), ("tok.json", 2), ("w.bin", 1)]


def test_a_file_that_is_not_the_one_the_export_recorded_is_refused_in_one_line(tmp_path):
    line = _one_line(_action(tmp_path, weights=b"weights v22"))
    assert line == f"release {MODEL} refused: weights.safetensors is 11 bytes, the export recorded 10: not the file the build made"
    missing = _action(tmp_path, files=[f"weights.safetensors={WEIGHTS_PATH}={tmp_path / 'nowhere'}"])
    assert _one_line(missing) == f"release {MODEL}: cannot read weights.safetensors ({tmp_path / 'nowhere'}): No such file or directory"
    absent = _action(tmp_path, files=[f"golden.json={GOLDEN_PATH}={tmp_path / 'golden.json'}"])
    assert _one_line(absent) == f"release {MODEL} refused: the export's weights.safetensors was not given"


def test_a_failing_receipt_or_a_garbled_one_refuses_the_release_in_one_line(tmp_path):
    failed = _action(tmp_path, receipt_docs=[_receipt("failed", ["m::test_x"])])
    assert _one_line(failed) == (
        f"release {MODEL} refused: receipt //models/{MODEL}:model_test_cpu: failed (2 passed, 1 failed, 0 skipped): m::test_x; "
        f"see: bazel test //models/{MODEL}:model_test_cpu"
    )
    assert failed.returncode == 1
    garbled = _action(tmp_path, raw_receipt="{not json")
    assert _one_line(garbled).startswith(f"release {MODEL}: receipt r0.receipt.json is not readable JSON")
    other = _action(tmp_path, raw_receipt=json.dumps({"schema": "x"}))
    assert _one_line(other) == f"release {MODEL}: receipt r0.receipt.json: not a {receipts.RECEIPT_SCHEMA} receipt"


def test_a_verdict_of_another_build_or_of_a_failed_gate_writes_no_manifest(tmp_path):
    export = _export()
    other = _action(tmp_path, verdict=dict(_verdict(export), build_hash=sha(b"build-0")))
    assert _one_line(other) == f"release {MODEL}: the gate's verdict is for build {sha(b'build-0')[:12]}, not {sha(b'build-1')[:12]}"
    failed = _action(tmp_path, verdict=_verdict(export, passed=False))
    assert _one_line(failed) == f"release {MODEL}: its release gate did not pass"
    assert not (tmp_path / "release/manifest.json").exists()
    bad_flag = _action(tmp_path, files=["weights.safetensors"])
    assert _one_line(bad_flag) == "--file=weights.safetensors: expected NAME=WORKSPACE_PATH=PATH" and bad_flag.returncode == 2


def test_a_bundle_file_that_would_replace_a_release_file_is_refused(tmp_path):
    paths = _release_files(tmp_path)
    export = _export()
    files = [manifests.BundleFile("weights.safetensors", paths["weights.safetensors"]), manifests.BundleFile("golden.json", paths["golden.json"]),
             manifests.BundleFile("golden.json", paths["tokenizer.json"])]  # fmt: skip
    with pytest.raises(BundleError, match="bundle file 'golden.json' would replace the bundle's own golden.json"):
        manifests.compose(export, _verdict(export), files)


def test_read_json_says_what_is_missing_or_garbled_in_one_line(tmp_path):
    with pytest.raises(BundleError, match=r"^the thing is missing$"):
        manifests.read_json(tmp_path / "nowhere.json", "the thing", BundleError)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BundleError, match=r"^the thing is not readable JSON: "):
        manifests.read_json(tmp_path / "bad.json", "the thing", BundleError)
