"""The release gate's failure paths: each check fails on its own kind of damage, says which and
by how much, and a failing gate yields no verdict to write a release manifest from."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from modelgate import gate, golden
from modelgate import manifest as manifests
from modelgate.export import EXPORT_MANIFEST, ONNX, WEIGHTS, run_export
from modelgate.formats import GOLDEN_FILES, sha256_file
from modelgate.loading import load_weights
from modelgate.spec import MetricGate, ModelSpec, TensorSpec
from tests.export.toy_model import ScaledLinear


def _spec(scale=1.0, accuracy=0.9, metrics=None):
    def build(config):
        torch.manual_seed(0)
        return ScaledLinear(float(config["scale"]))

    return ModelSpec(
        name="toy",
        config={"seed": 0, "scale": scale},
        build=build,
        train=lambda model, config: {},
        inputs=(TensorSpec("x", "float32", (None, 4)),),
        outputs=("y",),
        golden_inputs=lambda: {"x": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10},
        evaluate=lambda model, config: {"accuracy": accuracy},
        metrics=metrics if metrics is not None else {"accuracy": MetricGate(floor=0.5, max_regression=0.1)},
    )


def _export(spec, directory):
    # In-process after torch loaded: not the portable mode, which this test is not about.
    manifest = run_export(spec, directory, {}, {"model": "toy"}, strict_numerics=False)
    return manifest


@pytest.fixture
def release(tmp_path):
    """A passing export and its golden data; tests damage one thing each."""
    spec = _spec()
    export_dir, golden_dir = tmp_path / "export", tmp_path / "golden"
    manifest = _export(spec, export_dir)
    inputs = spec.golden_inputs()
    with torch.no_grad():
        outputs = spec.forward(load_weights(spec, export_dir / WEIGHTS), inputs)
    golden.write(golden_dir, "toy", inputs, outputs, {"machine": "x86_64"})
    return spec, export_dir, manifest, golden_dir


@pytest.fixture(autouse=True)
def reports(tmp_path, monkeypatch):
    """Where a failing gate writes its report (modelgate.report), here the test's own directory."""
    directory = tmp_path / "reports"
    monkeypatch.setenv("MODELGATE_REPORT_DIR", str(directory))
    return directory


def _gate(spec, export_dir, manifest, golden_dir):
    checks, metrics = gate.run_gate(spec, export_dir, manifest, golden_dir)
    return {c.name: c for c in checks}, metrics


def _refresh_digest(manifest, export_dir, name):
    manifest["files"][name]["sha256"] = sha256_file(export_dir / name)


def test_a_healthy_export_passes_every_check(release):
    spec, export_dir, manifest, golden_dir = release
    checks, metrics = _gate(*release)
    assert [(c.name, c.passed) for c in checks.values()] == [("golden", True), ("onnx", True), ("serving", True), ("metrics", True)]
    verdict = gate.verdict(manifest, list(checks.values()), metrics)
    assert verdict["gate"]["passed"] and verdict["schema"] == "modelgate/gate@1" and verdict["build_hash"] == manifest["build_hash"]
    # The release action's manifest of it: the export's files and the golden data.
    files = [manifests.BundleFile(n, export_dir / n) for n in (WEIGHTS, ONNX)] + [manifests.BundleFile(n, golden_dir / n) for n in GOLDEN_FILES]
    released = manifests.compose(manifest, verdict, files)
    assert released["gate"]["passed"] and released["schema"] == "modelgate/release@1"
    assert set(released["files"]) == {WEIGHTS, ONNX, "inputs.safetensors", "expected.safetensors", "golden.json"}
    # What the service will run, declared by the build itself (modelgate.serve.signature).
    serving = released["serving"]
    assert serving["model_file"] == ONNX and serving["runtime"] == "onnxruntime" and serving["text"] is None
    assert serving["inputs"] == [{"name": "x", "datatype": "float32", "shape": [None, 4]}]
    assert [(o["name"], o["datatype"], o["shape"][1:]) for o in serving["outputs"]] == [("y", "float32", [2])]
    assert serving["warmup"]["tolerances"] == {"y": {"atol": 1e-05, "rtol": 0.0001}}


def test_a_missing_file_is_named(release):
    spec, export_dir, manifest, golden_dir = release
    (export_dir / ONNX).unlink()
    checks, _ = _gate(*release)
    assert list(checks) == ["files"] and checks["files"].detail == f"model.onnx is missing from {export_dir}"


def test_weights_that_moved_fail_golden_with_the_worst_error(release):
    spec, export_dir, manifest, golden_dir = release
    data = golden.load(golden_dir, "toy", ["x"], ["y"])
    golden.write(golden_dir, "toy", data.inputs, {"y": data.expected["y"] + 0.01}, data.provenance)
    checks, _ = _gate(*release)
    assert not checks["golden"].passed and checks["onnx"].passed and checks["metrics"].passed
    assert checks["golden"].detail.startswith("y: max abs 0.01 at ")
    assert "6 of 6 elements outside" in checks["golden"].detail
    assert "note:" not in checks["golden"].detail  # same architecture: no platform excuse


def test_an_onnx_file_of_another_model_fails_parity(release, tmp_path):
    spec, export_dir, manifest, golden_dir = release
    _export(_spec(scale=2.0), tmp_path / "other")
    shutil.copy(tmp_path / "other" / ONNX, export_dir / ONNX)
    _refresh_digest(manifest, export_dir, ONNX)
    checks, _ = _gate(*release)
    assert checks["golden"].passed and not checks["onnx"].passed
    assert checks["onnx"].detail.startswith("golden (x[3, 4]): y: max abs ") and "elements outside" in checks["onnx"].detail


def test_onnx_parity_is_checked_at_two_batch_sizes(release):
    checks, _ = _gate(*release)
    parts = checks["onnx"].detail.split(" | ")
    assert [p.split(": ")[0] for p in parts] == ["golden (x[3, 4])", "batch=2 (x[2, 4])"]


def _sequence_spec(onnx_fixed=False):
    """A model over (batch, seq, 4) whose ONNX must keep both axes dynamic."""

    class MeanOverSeq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x).mean(1)

    spec = _spec()
    return ModelSpec(**{
        **spec.__dict__,
        "build": lambda config: torch.manual_seed(0) and MeanOverSeq(),
        "inputs": (TensorSpec("x", "float32", (None, None, 4)),),
        "golden_inputs": lambda: {"x": torch.arange(60, dtype=torch.float32).reshape(3, 5, 4) / 60},
    })


def test_every_dynamic_axis_the_spec_declares_is_dynamic_in_onnx_and_checked_at_two_lengths(tmp_path):
    import onnx

    spec = _sequence_spec()
    manifest = _export(spec, tmp_path / "export")
    graph = onnx.load(str(tmp_path / "export" / ONNX)).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "x_1", 4]
    inputs = spec.golden_inputs()
    with torch.no_grad():
        outputs = spec.forward(load_weights(spec, tmp_path / "export" / WEIGHTS), inputs)
    golden.write(tmp_path / "golden", "toy", inputs, outputs, {"machine": "x86_64"})
    checks, _ = _gate(spec, tmp_path / "export", manifest, tmp_path / "golden")
    assert checks["onnx"].passed, checks["onnx"].detail
    labels = [p.split(": ")[0] for p in checks["onnx"].detail.split(" | ")]
    assert labels == ["golden (x[3, 5, 4])", "batch=2 (x[2, 5, 4])", "x_1=2 (x[3, 2, 4])"]


def test_an_onnx_file_with_a_fixed_dynamic_axis_fails(tmp_path):
    """The old export (batch axis only): accepted exactly the golden length."""
    spec = _sequence_spec()
    manifest = _export(spec, tmp_path / "export")
    model = load_weights(spec, tmp_path / "export" / WEIGHTS)
    torch.onnx.export(
        model, (spec.golden_inputs()["x"],), str(tmp_path / "export" / ONNX), dynamo=True, input_names=["x"],
        output_names=["y"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False,
    )
    manifest["files"][ONNX]["sha256"] = sha256_file(tmp_path / "export" / ONNX)
    check = gate.check_onnx(spec, model, tmp_path / "export" / ONNX)
    assert not check.passed
    assert check.detail == "model.onnx fixes axis 1 of input 'x' at 5; the spec declares it dynamic"


def test_a_spec_whose_variants_leave_an_axis_at_one_length_fails(release):
    spec, export_dir, manifest, golden_dir = release
    spec = ModelSpec(**{**spec.__dict__, "shape_variants": lambda: [spec.golden_inputs()]})
    checks, _ = _gate(spec, export_dir, manifest, golden_dir)
    assert not checks["onnx"].passed
    assert checks["onnx"].detail.endswith("dynamic axes checked at one length only: batch (give the spec shape_variants that vary them)")


def test_an_onnx_file_onnxruntime_cannot_read_is_reported_not_raised(release):
    spec, export_dir, manifest, golden_dir = release
    (export_dir / ONNX).write_bytes(b"not an onnx model")
    _refresh_digest(manifest, export_dir, ONNX)
    checks, _ = _gate(*release)
    assert not checks["onnx"].passed and checks["onnx"].detail.startswith("onnxruntime cannot run model.onnx: ")
    assert not checks["serving"].passed and checks["serving"].detail.startswith("onnxruntime cannot read model.onnx: ")


@pytest.mark.parametrize(
    "spec, expected",
    [
        (_spec(accuracy=0.3), "accuracy 0.3 misses its floor >= 0.5 by 0.2"),
        (_spec(metrics={"loss": MetricGate(floor=0.5, max_regression=0.1, higher_is_better=False)}), "loss: not reported by evaluate()"),
    ],
)
def test_metric_floors_and_missing_metrics(release, spec, expected):
    _, export_dir, manifest, golden_dir = release
    checks, _ = _gate(spec, export_dir, manifest, golden_dir)
    assert checks["golden"].passed and not checks["metrics"].passed and checks["metrics"].detail == expected


def test_failure_text_lists_every_check_and_marks_the_failing_ones(release, reports):
    spec, export_dir, manifest, golden_dir = release
    checks, _ = _gate(_spec(accuracy=0.3), export_dir, manifest, golden_dir)
    lines = gate.failure_text("toy", list(checks.values())).splitlines()
    page = reports / "toy" / f"gate-{manifest['build_hash'][:12]}.html"
    assert lines[0] == f"release gate failed for toy (report: {page}):"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["ok   golden", "ok   onnx", "ok   serving", "FAIL metrics", "ok   report"]


def test_a_failing_gate_writes_its_report_where_its_error_says(release, reports):
    """Bazel discards a failed action's outputs: the page goes outside the sandbox, named in the error."""
    spec, export_dir, manifest, golden_dir = release
    checks, _ = _gate(_spec(accuracy=0.3), export_dir, manifest, golden_dir)
    page = Path(checks["report"].data["path"])
    assert page.parent.parent == reports and page.is_file()
    html = page.read_text()
    assert "Release gate FAILED" in html and "accuracy" in html and "<script" not in html


def test_the_export_manifest_on_disk_is_what_the_gate_checks(release):
    spec, export_dir, manifest, golden_dir = release
    on_disk = json.loads((export_dir / EXPORT_MANIFEST).read_text())
    assert on_disk["files"] == manifest["files"] and on_disk["build_hash"] == manifest["build_hash"]


# ---- bad golden data, bad weights, malformed input: each one line in its check, never a traceback


def test_missing_golden_data_fails_golden_and_says_how_to_make_it(release):
    spec, export_dir, manifest, golden_dir = release
    (golden_dir / "golden.json").unlink()
    checks, _ = _gate(*release)
    assert not checks["golden"].passed and checks["onnx"].passed and checks["metrics"].passed
    assert checks["golden"].detail == (
        f"golden data for toy is missing: {golden_dir / 'golden.json'}; create it with: bazel run //models/toy:golden_update"
    )


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / "golden.json").write_text("{not json"), "golden.json: not valid JSON ("),
        (lambda d: (d / "golden.json").write_text('{"model": "other"}'), "golden.json: model is 'other', expected 'toy'"),
        (lambda d: (d / "expected.safetensors").write_bytes(b"\x00" * 16), "expected.safetensors: not a readable safetensors file ("),
    ],
    ids=["garbled-config", "another-model", "corrupt-tensors"],
)
def test_malformed_golden_data_fails_golden_naming_the_file(release, damage, expected):
    spec, export_dir, manifest, golden_dir = release
    damage(golden_dir)
    checks, _ = _gate(*release)
    assert not checks["golden"].passed and expected in checks["golden"].detail
    assert "\n" not in checks["golden"].detail


def test_golden_inputs_that_are_not_the_specs_inputs_fail_golden(release):
    spec, export_dir, manifest, golden_dir = release
    data = golden.load(golden_dir, "toy", ["x"], ["y"])
    golden.write(golden_dir, "toy", {"z": data.inputs["x"]}, data.expected, data.provenance)
    checks, _ = _gate(*release)
    assert not checks["golden"].passed
    assert checks["golden"].detail == f"{golden_dir / 'inputs.safetensors'}: holds inputs ['z'], the model's inputs are ['x']"


def test_weights_that_give_non_finite_outputs_fail_golden(release):
    from safetensors.torch import load_file, save_file

    spec, export_dir, manifest, golden_dir = release
    tensors = load_file(str(export_dir / WEIGHTS))
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, str(export_dir / WEIGHTS))
    _refresh_digest(manifest, export_dir, WEIGHTS)
    checks, _ = _gate(*release)
    assert not checks["golden"].passed and checks["golden"].detail.startswith("y: 6 non-finite values, first at (0, 0) (nan)")


def test_a_loss_above_its_ceiling_fails_metrics():
    spec = _spec(metrics={"loss": MetricGate(floor=0.5, max_regression=0.1, higher_is_better=False)})
    spec = ModelSpec(**{**spec.__dict__, "evaluate": lambda model, config: {"loss": 0.75}})
    check, metrics = gate.check_metrics(spec, spec.build(spec.config))
    assert not check.passed and metrics == {"loss": 0.75}
    assert check.detail == "loss 0.75 misses its floor <= 0.5 by 0.25"


def _text_spec(load):
    from modelgate.spec import TextInput

    return ModelSpec(**{**_spec().__dict__, "text": TextInput(files=("vocab.txt",), load=load, max_tokens=8)})


def test_a_text_model_without_its_tokenizer_in_the_bundle_fails_text():
    spec = _text_spec(lambda directory: None)
    check = gate.check_text(spec, spec.build(spec.config), {})
    assert not check.passed
    assert check.detail == "the spec's text input needs vocab.txt in the bundle; give it as bundle_files"


def test_a_tokenizer_that_fails_or_gives_malformed_inputs_fails_text(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a b c\n")

    def broken(directory):
        def encode(texts):
            raise ValueError("text 0 is longer than 8 tokens")

        return encode

    spec = _text_spec(broken)
    check = gate.check_text(spec, spec.build(spec.config), {"vocab.txt": vocab})
    assert not check.passed and check.detail == "vocab.txt: ValueError: text 0 is longer than 8 tokens"

    spec = _text_spec(lambda directory: lambda texts: {"x": torch.zeros(len(texts), 5)})  # 5 features, not 4
    check = gate.check_text(spec, spec.build(spec.config), {"vocab.txt": vocab})
    assert not check.passed and check.detail.startswith("vocab.txt: ")


def test_a_tokenizer_whose_inputs_make_the_model_non_finite_fails_text(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\n")
    spec = _text_spec(lambda directory: lambda texts: {"x": torch.full((len(texts), 4), float("inf"))})
    check = gate.check_text(spec, spec.build(spec.config), {"vocab.txt": vocab})
    assert not check.passed and check.detail == "the model gives non-finite outputs for a text"


def test_a_tiny_metric_prints_its_digits_beside_its_floor():
    # Four decimals printed a 2.2e-6 disagreement as 0.0000 beside its floor <= 0.0001.
    spec = _spec(metrics={"disagreement": MetricGate(floor=1e-4, max_regression=1e-4, higher_is_better=False)})
    spec = ModelSpec(**{**spec.__dict__, "evaluate": lambda model, config: {"disagreement": 2.2e-6}})
    check, _ = gate.check_metrics(spec, spec.build(spec.config))
    assert check.passed and check.detail == "disagreement 2.2e-06 (floor <= 0.0001)"
