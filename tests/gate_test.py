"""The release gate's failure paths: each check fails on its own kind of damage, says which and
by how much, and a failing gate yields no release manifest."""

import json
import shutil

import pytest
import torch

from modelgate import gate, golden
from modelgate.export import EXPORT_MANIFEST, ONNX, WEIGHTS, run_export
from modelgate.formats import sha256_file
from modelgate.loading import load_weights
from modelgate.spec import MetricGate, ModelSpec, TensorSpec
from tests.toy_model import ScaledLinear


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


def _gate(spec, export_dir, manifest, golden_dir):
    checks, metrics = gate.run_gate(spec, export_dir, manifest, golden_dir)
    return {c.name: c for c in checks}, metrics


def _refresh_digest(manifest, export_dir, name):
    manifest["files"][name]["sha256"] = sha256_file(export_dir / name)


def test_a_healthy_export_passes_every_check(release):
    spec, export_dir, manifest, golden_dir = release
    checks, metrics = _gate(*release)
    assert [(c.name, c.passed) for c in checks.values()] == [("golden", True), ("onnx", True), ("metrics", True)]
    released = gate.release_manifest(manifest, list(checks.values()), metrics, golden_dir)
    assert released["gate"]["passed"] and released["schema"] == "modelgate/release@1"
    assert set(released["files"]) == {WEIGHTS, ONNX, "inputs.safetensors", "expected.safetensors", "golden.json"}


def test_flipped_weight_bytes_fail_the_digest_check_before_anything_loads(release):
    spec, export_dir, manifest, golden_dir = release
    data = bytearray((export_dir / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (export_dir / WEIGHTS).write_bytes(bytes(data))
    checks, metrics = _gate(*release)
    assert list(checks) == ["digests"] and not checks["digests"].passed and metrics == {}
    assert checks["digests"].detail == "weights.safetensors does not match the digest the export recorded"


def test_a_missing_file_is_named(release):
    spec, export_dir, manifest, golden_dir = release
    (export_dir / ONNX).unlink()
    checks, _ = _gate(*release)
    assert checks["digests"].detail == f"model.onnx is missing from {export_dir}"


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
    assert checks["onnx"].detail.startswith("y: max abs ") and "elements outside" in checks["onnx"].detail


def test_an_onnx_file_onnxruntime_cannot_read_is_reported_not_raised(release):
    spec, export_dir, manifest, golden_dir = release
    (export_dir / ONNX).write_bytes(b"not an onnx model")
    _refresh_digest(manifest, export_dir, ONNX)
    checks, _ = _gate(*release)
    assert not checks["onnx"].passed and checks["onnx"].detail.startswith("onnxruntime cannot run model.onnx: ")


@pytest.mark.parametrize(
    "spec, expected",
    [
        (_spec(accuracy=0.3), "accuracy 0.3000 misses its floor >= 0.5 by 0.2000"),
        (_spec(metrics={"loss": MetricGate(floor=0.5, max_regression=0.1, higher_is_better=False)}), "loss: not reported by evaluate()"),
    ],
)
def test_metric_floors_and_missing_metrics(release, spec, expected):
    _, export_dir, manifest, golden_dir = release
    checks, _ = _gate(spec, export_dir, manifest, golden_dir)
    assert checks["golden"].passed and not checks["metrics"].passed and checks["metrics"].detail == expected


def test_failure_text_lists_every_check_and_marks_the_failing_ones(release):
    spec, export_dir, manifest, golden_dir = release
    checks, _ = _gate(_spec(accuracy=0.3), export_dir, manifest, golden_dir)
    lines = gate.failure_text("toy", list(checks.values())).splitlines()
    assert lines[0] == "release gate failed for toy:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["ok   golden", "ok   onnx", "FAIL metrics"]


def test_the_export_manifest_on_disk_is_what_the_gate_checks(release):
    spec, export_dir, manifest, golden_dir = release
    on_disk = json.loads((export_dir / EXPORT_MANIFEST).read_text())
    assert on_disk["files"] == manifest["files"] and on_disk["build_hash"] == manifest["build_hash"]
