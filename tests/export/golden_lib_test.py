"""Golden data that cannot be used fails clearly, naming the file and the key; mismatches report
the worst errors and where they are."""

import json

import pytest
import torch

from modelgate import golden


def _write(tmp_path, tolerances=None, **extra):
    inputs = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    outputs = {"y": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    golden.write(tmp_path, "m", inputs, outputs, {"build_hash": "0" * 64}, tolerances)
    if extra:
        config = json.loads((tmp_path / golden.CONFIG).read_text())
        config.update(extra)
        (tmp_path / golden.CONFIG).write_text(json.dumps(config))
    return tmp_path


def _load(path):
    return golden.load(path, "m", ["x"], ["y"])


def test_round_trip(tmp_path):
    data = _load(_write(tmp_path))
    assert torch.equal(data.expected["y"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert data.tolerance("y", "float32") == (1e-5, 1e-4)


def test_missing_files_name_the_file_and_the_fix(tmp_path):
    _write(tmp_path)
    (tmp_path / golden.EXPECTED).unlink()
    with pytest.raises(golden.GoldenError, match=r"expected\.safetensors.*bazel run //models/m:golden_update"):
        _load(tmp_path)


@pytest.mark.parametrize(
    "tolerances, message",
    [
        ({"y": {"float32": {"atol": -1, "rtol": 0}}}, r"tolerances\.y\.float32\.atol is negative \(-1\)"),
        ({"y": {"float32": {"atol": 0, "rtol": 0, "btol": 1}}}, r"tolerances\.y\.float32: unknown key 'btol'"),
        ({"y": {"float64": {"atol": 0, "rtol": 0}}}, r"tolerances\.y\.float64: unknown dtype"),
        ({"z": {"float32": {"atol": 0, "rtol": 0}}}, r"tolerances\.z: unknown output"),
        ({"y": {"float32": {"atol": "big", "rtol": 0}}}, r"tolerances\.y\.float32\.atol: 'big' is not a number"),
    ],
)
def test_bad_tolerance_file(tmp_path, tolerances, message):
    _write(tmp_path, tolerances)
    with pytest.raises(golden.GoldenError, match=message) as info:
        _load(tmp_path)
    assert str(tmp_path / golden.CONFIG) in str(info.value)


def test_unknown_top_level_key(tmp_path):
    _write(tmp_path, tolerance={"y": 1})
    with pytest.raises(golden.GoldenError, match=r"golden\.json: unknown key 'tolerance'"):
        _load(tmp_path)


def test_outputs_that_do_not_match_the_model(tmp_path):
    _write(tmp_path, tolerances={"y": {}})
    with pytest.raises(golden.GoldenError, match=r"expected\.safetensors: holds outputs \['y'\], the model's outputs are \['logits', 'y'\]"):
        golden.load(tmp_path, "m", ["x"], ["logits", "y"])


def test_shape_mismatch_is_reported():
    report = golden.compare_output("y", torch.zeros(2, 3), torch.zeros(2, 2), 1e-5, 1e-4)
    assert not report.passed
    assert report.message == "y: shape (2, 3) from the model, (2, 2) in golden data"


def test_mismatch_names_worst_errors_and_indices():
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    actual = expected.clone()
    actual[1, 0] += 0.5  # worst absolute error
    actual[0, 0] += 0.2  # worst relative error (0.2 / 1.0)
    report = golden.compare_output("y", actual, expected, 1e-5, 1e-4)
    assert not report.passed
    assert "max abs 0.5 at (1, 0)" in report.message
    assert "max rel 0.2 at (0, 0)" in report.message
    assert "2 of 4 elements outside" in report.message


def test_within_tolerance_passes():
    expected = torch.tensor([1.0, 2.0])
    assert golden.compare_output("y", expected + 5e-6, expected, 1e-5, 1e-4).passed


def test_nan_fails_naming_the_index():
    actual = torch.tensor([1.0, float("nan"), 2.0])
    report = golden.compare_output("y", actual, torch.ones(3), 1.0, 1.0)
    assert not report.passed and "first at (1,)" in report.message


def _failing_reports(data):
    return golden.compare(data, {"y": data.expected["y"] + 1.0})


def test_failure_on_another_architecture_says_training_numbers_differ_there(tmp_path, monkeypatch):
    data = golden.load(_write(tmp_path), "m", ["x"], ["y"])
    data = golden.Golden(data.directory, "m", data.inputs, data.expected, data.tolerances, {"machine": "x86_64"})
    assert "note:" not in golden.failure_text("m", data, _failing_reports(data))  # x86-64 here too
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    text = golden.failure_text("m", data, _failing_reports(data))
    note = text.splitlines()[-1].strip()
    assert note.startswith("note: this machine is aarch64 and golden data was made on x86_64;")
    assert "same weights on every x86_64 CPU only" in note
    # A passing comparison needs no excuse.
    assert "note:" not in golden.failure_text("m", data, golden.compare(data, data.expected))
