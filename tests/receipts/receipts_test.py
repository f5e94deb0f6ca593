"""Test receipts: recorded by the pytest action, bound to a build by the release, checked by promote.

What a user sees: the release's one-line refusals (failing test, other build, missing receipt;
the release action's command line itself: tests/manifest), promote's refusals (hand-edited,
other build, missing, --require=gpu) with the registry left unchanged, and `registry show`
listing the receipts of the build a tag names.
"""

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from modelgate import manifest as manifests
from modelgate import receipts
from modelgate.cli import promote, registry as registry_cli
from modelgate.testing.releases import make_bundle

MODEL = "tiny_transformer"
ROOT = Path(os.environ.get("TEST_SRCDIR", "")) / os.environ.get("TEST_WORKSPACE", "")
if not (ROOT / "tools/bin/receipt_runner.py").is_file():
    ROOT = Path(__file__).resolve().parents[2]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


BUILD = {
    "model": MODEL,
    "build_hash": sha("build-1"),
    "inputs": {
        f"models/{MODEL}/model.py": sha("model v1"),
        f"models/{MODEL}/spec.py": sha("spec v1"),
        f"golden/{MODEL}/expected.safetensors": sha("golden v1"),
        "tools/modelgate/spec.py": sha("modelgate spec"),
    },
    "files": {"weights.safetensors": {"sha256": sha("weights v1"), "size": 10}},
    "packages": {"torch": {"version": "2.13.0+cpu", "hashes": ["sha256:aa"]}},
}
WEIGHTS_PATH = f"models/{MODEL}/weights/weights.safetensors"


def receipt(target="model_test_cpu", status="passed", variant="cpu", failures=(), **inputs_override):
    inputs = {
        f"models/{MODEL}/model.py": sha("model v1"),
        f"models/{MODEL}/spec.py": sha("spec v1"),
        f"models/{MODEL}/model_test.py": sha("tests v1"),
        "tools/modelgate/spec.py": sha("modelgate spec"),
    }
    inputs.update(inputs_override)
    failed = len(failures)
    return {
        "schema": receipts.RECEIPT_SCHEMA,
        "target": f"//models/{MODEL}:{target}",
        "variant": variant,
        "status": status,
        "counts": {"passed": 8 - failed, "failed": failed, "error": 0, "skipped": 1, "total": 9},
        "failures": list(failures),
        "test_files": {f"models/{MODEL}/model_test.py": sha("tests v1")},
        "inputs": inputs,
        "packages": {"torch": {"version": "2.13.0+cpu", "hashes": ["sha256:aa"]}, "pytest": {"version": "9.0", "hashes": []}},
    }


# ---- the release side (binding: the ReleaseManifest action, tests/manifest)


def test_a_passing_receipt_of_this_builds_files_is_bound_to_its_build_hash():
    section, bundled = receipts.bind(MODEL, BUILD, [receipt()], {WEIGHTS_PATH: "weights.safetensors"})
    entry = section["receipts"]["model_test_cpu"]
    assert entry["status"] == "passed" and entry["counts"]["passed"] == 8
    assert entry["test_files"] == {f"models/{MODEL}/model_test.py": sha("tests v1")}
    assert bundled["receipt.model_test_cpu.json"]["build_hash"] == BUILD["build_hash"]


def test_a_failing_test_refuses_the_release_naming_model_receipt_and_test():
    bad = receipt(status="failed", failures=["models.tiny_transformer.model_test::test_mask_is_applied_to_keys"])
    with pytest.raises(receipts.ReceiptError) as e:
        receipts.bind(MODEL, BUILD, [bad], {})
    message = str(e.value)
    assert message.startswith(f"release {MODEL} refused: receipt //models/{MODEL}:model_test_cpu: failed")
    assert "test_mask_is_applied_to_keys" in message and f"bazel test //models/{MODEL}:model_test_cpu" in message
    assert "\n" not in message


def test_a_receipt_of_other_model_code_is_refused():
    other = receipt(**{f"models/{MODEL}/model.py": sha("model v0")})
    with pytest.raises(receipts.ReceiptError, match=r"receipt model_test_cpu .* is not a receipt of this build: it tested models/tiny_transformer/model.py"):
        receipts.bind(MODEL, BUILD, [other], {})


def test_a_golden_test_receipt_of_other_weights_is_refused():
    golden = receipt("golden_test_cpu", **{WEIGHTS_PATH: sha("weights v0")})
    with pytest.raises(receipts.ReceiptError, match="it tested models/tiny_transformer/weights/weights.safetensors"):
        receipts.bind(MODEL, BUILD, [golden], {WEIGHTS_PATH: "weights.safetensors"})
    ok = receipt("golden_test_cpu", **{WEIGHTS_PATH: sha("weights v1")})
    receipts.bind(MODEL, BUILD, [ok], {WEIGHTS_PATH: "weights.safetensors"})


def test_a_golden_only_change_keeps_the_model_test_receipt_valid():
    # New golden data: a new build hash, the same model code. The model-logic receipt (which
    # never read golden data) binds to the new build without re-running.
    new_build = json.loads(json.dumps(BUILD))
    new_build["inputs"][f"golden/{MODEL}/expected.safetensors"] = sha("golden v2")
    new_build["build_hash"] = sha("build-2")
    _, bundled = receipts.bind(MODEL, new_build, [receipt()], {})
    assert bundled["receipt.model_test_cpu.json"]["build_hash"] == sha("build-2")


def test_a_receipt_that_tested_none_of_the_models_code_is_refused():
    unrelated = receipt()
    unrelated["inputs"] = {"tools/other.py": sha("x")}
    with pytest.raises(receipts.ReceiptError, match="did not test this build's code"):
        receipts.bind(MODEL, BUILD, [unrelated], {})


def test_a_gpu_variant_that_did_not_run_is_listed_but_a_cpu_one_is_refused():
    gpu = {"schema": receipts.RECEIPT_SCHEMA, "target": f"//models/{MODEL}:model_test_gpu", "variant": "gpu", "status": "not-run", "reason": "CPU torch"}
    section, _ = receipts.bind(MODEL, BUILD, [receipt(), gpu], {})
    assert section["receipts"]["model_test_gpu"]["status"] == "not-run"
    cpu = dict(gpu, target=f"//models/{MODEL}:model_test_cpu", variant="cpu")
    with pytest.raises(receipts.ReceiptError, match="only a GPU variant may be absent"):
        receipts.bind(MODEL, BUILD, [cpu], {})


# ---- recording (the ModelTest action)


def test_a_file_an_export_record_lists_takes_its_sha256_from_it_and_is_not_hashed_again(tmp_path, monkeypatch):
    # A golden test reads the exported weights: the receipt takes their sha256 from the export's
    # record (the same build's export hashed those very bytes) instead of hashing them again.
    weights, test_file, record = tmp_path / "weights.safetensors", tmp_path / "t.py", tmp_path / "export.json"
    weights.write_bytes(b"weights v1")
    test_file.write_text("def test_x(): pass\n")
    record.write_text(json.dumps({"files": {"weights.safetensors": {"sha256": sha("weights v1"), "size": 10}},
                                  "inputs": {"models/m/model.py": sha("model v1")}}))  # fmt: skip
    hashed = []
    real = receipts.sha256_file
    monkeypatch.setattr(receipts, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    pairs = [("models/m/weights/weights.safetensors", str(weights)), ("models/m/t.py", str(test_file))]
    digests = receipts.input_digests(pairs, [("models/m/weights/export.json", str(record))])
    assert digests == {"models/m/weights/weights.safetensors": sha("weights v1"), "models/m/t.py": real(test_file)}
    assert hashed == ["t.py"]
    # Bytes of another size than the record's are not the file it describes: hashed, so that the
    # release refuses the receipt for what it really tested.
    weights.write_bytes(b"other weights")
    assert receipts.input_digests(pairs[:1], [("models/m/weights/export.json", str(record))]) == {
        "models/m/weights/weights.safetensors": sha("other weights")
    }


def _runner():
    spec = importlib.util.spec_from_file_location("receipt_runner", ROOT / "tools/bin/receipt_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("body, status, counts", [
    ("def test_a(): pass\ndef test_b(): pass\n", "passed", (2, 0)),
    ("def test_a(): pass\ndef test_b(): assert 1 == 2\n", "failed", (1, 1)),
    ("import pytest\n@pytest.mark.gpu\ndef test_a(): pass\n", "no-tests", (0, 0)),
])  # fmt: skip
def test_the_runner_records_pytest_outcomes_and_succeeds_even_when_tests_fail(tmp_path, body, status, counts):
    test_file = tmp_path / "sample_test.py"
    test_file.write_text(body)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: gpu\n")
    out = tmp_path / "out"
    out.mkdir()
    rc = _runner().main([
        "--target=//x:sample_test_cpu", "--variant=cpu", f"--receipt={out}/r.json", f"--log={out}/r.log", f"--xml={out}/r.xml",
        "--timeout=120", f"--input=x/sample_test.py={test_file}", f"--test-file=x/sample_test.py={test_file}",
        "--", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"), "-m", "not gpu", str(test_file),
    ])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "r.json").read_text())
    assert doc["status"] == status and (doc["counts"]["passed"], doc["counts"]["failed"]) == counts
    assert doc["test_files"] == {"x/sample_test.py": hashlib.sha256(test_file.read_bytes()).hexdigest()}
    assert f"modelgate: //x:sample_test_cpu: {status}" in (out / "r.log").read_text()
    if status == "failed":
        assert doc["failures"] == ["sample_test::test_b"] or doc["failures"][0].endswith("::test_b")


def test_a_run_past_its_timeout_records_nothing_and_fails_the_action(tmp_path, capsys):
    test_file = tmp_path / "slow_test.py"
    test_file.write_text("import time\ndef test_slow(): time.sleep(30)\n")
    out = tmp_path / "out"
    out.mkdir()
    rc = _runner().main([
        "--target=//x:slow_test_cpu", "--variant=cpu", f"--receipt={out}/r.json", f"--log={out}/r.log", f"--xml={out}/r.xml",
        "--timeout=2", "--", "-p", "no:cacheprovider", str(test_file),
    ])  # fmt: skip
    assert rc == 1 and not (out / "r.json").exists()
    assert "//x:slow_test_cpu: pytest ran past its 2 s timeout" in capsys.readouterr().err


def _run_one(tmp_path, body, *extra):
    test_file = tmp_path / "one_test.py"
    test_file.write_text(body)
    out = tmp_path / "out"
    out.mkdir()
    rc = _runner().main([
        "--target=//x:one_test_cpu", "--variant=cpu", f"--receipt={out}/r.json", f"--log={out}/r.log", f"--xml={out}/r.xml",
        "--timeout=120", *extra, "--", "-p", "no:cacheprovider", str(test_file),
    ])  # fmt: skip
    assert rc == 0
    return json.loads((out / "r.json").read_text())["status"]


def test_the_tests_run_in_a_fork_of_the_runner_with_the_tests_environment(tmp_path):
    # A fork: the runner's modules are there already (no second interpreter start); the
    # environment, the temporary directory and the streams are the tests' own.
    body = (
        "import os, sys, tempfile\n"
        f"def test_fork(): assert 'modelgate.receipts' in sys.modules and os.getppid() == {os.getpid()}\n"
        "def test_env(): assert os.environ['MODELGATE_X'] == 'y' and os.environ['HOME'] == os.environ['TEST_TMPDIR']\n"
        "def test_tmp(): assert tempfile.gettempdir() == os.environ['TEST_TMPDIR']\n"
    )
    assert _run_one(tmp_path, body, "--env=MODELGATE_X=y") == "passed"


def test_an_environment_the_interpreter_reads_at_start_gets_a_fresh_interpreter(tmp_path):
    body = (
        "import sys\n"
        "def test_fresh(): assert 'modelgate.receipts' not in sys.modules and 'ignore::DeprecationWarning' in sys.warnoptions\n"
    )
    assert _run_one(tmp_path, body, "--env=PYTHONWARNINGS=ignore::DeprecationWarning") == "passed"


# ---- promote's side


def run(capsys, main, *args):
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture
def uri(tmp_path):
    return (tmp_path / "registry").as_uri()


def _promote(capsys, uri, tmp_path, bundle, *extra):
    return run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={uri}", f"--signing-key={_key(tmp_path)}", *extra)


def _key(tmp_path):
    key = tmp_path / "key.pem"
    if not key.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        key.write_bytes(pem)
    return key


def _registry_is_empty(tmp_path):
    root = tmp_path / "registry"
    return not root.exists() or not any(p.is_file() for p in root.rglob("*") if "models" in p.parts or "blobs" in p.parts)


def _refused(rc, err, *needles):
    lines = [l for l in err.strip().splitlines() if not l.startswith("promote: warning")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_promote_refuses_a_receipt_edited_by_hand_in_the_bundle(capsys, uri, tmp_path):
    bundle = make_bundle(tmp_path / "b")
    path = bundle / "receipt.model_test_cpu.json"
    path.write_text(path.read_text().replace('"passed": 3', '"passed": 4'))
    rc, _, err = _promote(capsys, uri, tmp_path, bundle)
    _refused(rc, err, MODEL, "receipt model_test_cpu", "was changed after the release built")
    assert _registry_is_empty(tmp_path)


def test_promote_refuses_a_receipt_from_another_build(capsys, uri, tmp_path):
    bundle, other = make_bundle(tmp_path / "b", seed=1), make_bundle(tmp_path / "o", seed=2)
    name = "receipt.model_test_cpu.json"
    shutil.copy(other / name, bundle / name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    theirs = json.loads((other / "manifest.json").read_text())
    manifest["files"][name] = theirs["files"][name]
    manifest["tests"] = theirs["tests"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rc, _, err = _promote(capsys, uri, tmp_path, bundle)
    _refused(rc, err, MODEL, "receipt model_test_cpu", f"is for build {theirs['build_hash'][:12]}", f"not this bundle's {manifest['build_hash'][:12]}")
    assert _registry_is_empty(tmp_path)


def test_promote_refuses_a_missing_receipt_and_a_bundle_without_receipts(capsys, uri, tmp_path):
    bundle = make_bundle(tmp_path / "b")
    (bundle / "receipt.model_test_cpu.json").unlink()
    rc, _, err = _promote(capsys, uri, tmp_path, bundle)
    _refused(rc, err, MODEL, "receipt model_test_cpu is missing")
    bare = make_bundle(tmp_path / "c", seed=3, receipts=False)
    rc, _, err = _promote(capsys, uri, tmp_path, bare)
    _refused(rc, err, MODEL, "lists no test receipts", f"bazel build //models/{MODEL}:release")
    assert _registry_is_empty(tmp_path)


def _with_gpu_receipt(bundle: Path, status: str) -> Path:
    """A GPU variant's receipt as a CUDA run (or a not-run on a CPU build) would leave it."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in [n for n in manifest["files"] if n.startswith("receipt.")]:
        (bundle / name).unlink()
        del manifest["files"][name]
    build = {k: v for k, v in manifest.items() if k != "tests"}
    docs = [receipt(), receipt("model_test_gpu", variant="gpu")]
    if status == "not-run":
        docs[1] = {"schema": receipts.RECEIPT_SCHEMA, "target": docs[1]["target"], "variant": "gpu", "status": "not-run",
                   "reason": "this build's torch is the CPU build"}  # fmt: skip
    for doc in docs:
        doc["inputs"] = dict(build["inputs"])
    (bundle / "manifest.json").write_text(json.dumps(manifests.add_receipts(bundle, build, docs, {})))
    return bundle


def test_require_gpu_refuses_a_build_without_a_gpu_receipt_and_default_lists_its_absence(capsys, uri, tmp_path):
    bundle = _with_gpu_receipt(make_bundle(tmp_path / "b"), "not-run")
    rc, _, err = _promote(capsys, uri, tmp_path, bundle, "--require=gpu")
    _refused(rc, err, MODEL, "--require=gpu and no GPU receipt ran", "model_test_gpu (this build's torch is the CPU build)")
    assert _registry_is_empty(tmp_path)
    rc, out, err = _promote(capsys, uri, tmp_path, bundle)
    assert rc == 0, err
    assert "GPU receipts not recorded: model_test_gpu" in err and "--require=gpu would refuse it" in err


def test_require_gpu_accepts_a_build_whose_gpu_receipt_ran_and_passed(capsys, uri, tmp_path):
    bundle = _with_gpu_receipt(make_bundle(tmp_path / "b"), "passed")  # simulated: no CUDA machine here
    rc, out, err = _promote(capsys, uri, tmp_path, bundle, "--require=gpu")
    assert rc == 0 and "GPU receipts not recorded" not in err, err


def test_require_rejects_an_unknown_requirement(capsys, uri, tmp_path):
    rc, _, err = _promote(capsys, uri, tmp_path, make_bundle(tmp_path / "b"), "--require=tpu")
    _refused(rc, err, "--require=tpu: expected one of cpu, gpu")


def test_registry_show_lists_the_receipts_of_the_tagged_build(capsys, uri, tmp_path):
    bundle = _with_gpu_receipt(make_bundle(tmp_path / "b"), "not-run")
    rc, _, err = _promote(capsys, uri, tmp_path, bundle)
    assert rc == 0, err
    rc, out, err = run(capsys, registry_cli.main, "show", MODEL, f"--registry={uri}")
    assert rc == 0, err
    assert "tested: model_test_cpu: passed 8 passed, 0 failed, 1 skipped; models/tiny_transformer/model_test.py" in out
    assert "tested: model_test_gpu: not run (this build's torch is the CPU build)" in out
    rc, out, _ = run(capsys, registry_cli.main, "show", MODEL, f"--registry={uri}", "--json")
    (detail,) = json.loads(out)["tagged_builds"].values()
    assert detail["tests"]["model_test_cpu"]["status"] == "passed" and detail["tests"]["model_test_cpu"]["passed"] == 8


def test_summary_is_what_version_lists():
    manifest = {"tests": {"schema": receipts.TESTS_SCHEMA, "receipts": {"model_test_cpu": {
        "target": "//m:model_test_cpu", "variant": "cpu", "status": "passed", "sha256": "ab",
        "counts": {"passed": 2, "failed": 0, "error": 0, "skipped": 1}, "test_files": {"m/t.py": "cd"}}}}}  # fmt: skip
    assert receipts.summary(manifest) == {"model_test_cpu": {
        "target": "//m:model_test_cpu", "variant": "cpu", "status": "passed", "sha256": "ab",
        "passed": 2, "failed": 0, "skipped": 1, "test_files": {"m/t.py": "cd"}}}  # fmt: skip
    assert receipts.summary({}) == {}


def test_a_receipt_is_the_same_on_a_fast_and_a_slow_runner(tmp_path):
    # Two CI runners that test one build must make one release: nothing in a receipt depends on
    # how long the tests took (the durations go to the test log, not to what the registry compares).
    docs = []
    for seconds in ("0.010", "9.870"):
        xml = tmp_path / f"junit-{seconds}.xml"
        xml.write_text(
            f'<testsuites><testsuite><testcase classname="m" name="test_a" time="{seconds}"/>'
            f'<testcase classname="m" name="test_b" time="{seconds}"><skipped/></testcase></testsuite></testsuites>'
        )
        docs.append(receipts.make_receipt(
            target="//m:t", variant="cpu", exit_code=0, timed_out=False, timeout_s=300, results=receipts.parse_junit(xml),
            test_files={"m/t.py": "ab"}, inputs={"m/m.py": "cd"}, packages={},
        ))  # fmt: skip
    assert docs[0] == docs[1] and docs[0]["tests"] == [{"id": "m::test_a", "outcome": "passed"}, {"id": "m::test_b", "outcome": "skipped"}]
    assert receipts.one_line(docs[0], 9.87) == "//m:t: passed (1 passed, 0 failed, 1 skipped in 9.9 s)"
