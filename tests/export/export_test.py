"""Export's answers to broken models: a clear error and nothing half-written."""

import json

import pytest
import torch

from modelgate import portable
from modelgate.export import EXPORT_MANIFEST, ONNX, WEIGHTS, ExportError
from modelgate.export import run_export as strict_run_export
from modelgate.hashing import LockEntryError, build_hash, read_lock_entries
from modelgate.spec import MetricGate, ModelSpec, TensorSpec
from tests.export.toy_model import ScaledLinear


class NotExportable(ScaledLinear):
    def forward(self, x):
        # Control flow on a tensor's value: torch.export cannot capture it as one graph.
        y = self.fc(x)
        return y * 2 if y.sum() > 0 else y


def _spec(model_cls=ScaledLinear, train=None, scale=1.0):
    def build(config):
        torch.manual_seed(int(config["seed"]))
        return model_cls(float(config["scale"]))

    return ModelSpec(
        name="toy",
        config={"seed": 0, "scale": scale},
        build=build,
        train=train or (lambda model, config: {}),
        inputs=(TensorSpec("x", "float32", (None, 4)),),
        outputs=("y",),
        golden_inputs=lambda: {"x": torch.ones(3, 4)},
        evaluate=lambda model, config: {"accuracy": 1.0},
        metrics={"accuracy": MetricGate(floor=0.5, max_regression=0.1)},
    )


def run_export(*args, **kwargs):
    # This process loaded torch with the CPU's own kernels: the tests below are about what the
    # export writes, not about its numerics (tests/portability is).
    return strict_run_export(*args, strict_numerics=False, **kwargs)


def _poison(model, config):
    with torch.no_grad():
        model.fc.weight[0, 1] = float("nan")
    return {}


def _inputs(tmp_path):
    src = tmp_path / "toy.py"
    src.write_text("# model source\n")
    return {"models/toy/toy.py": str(src)}


def test_export_writes_three_files_and_a_stable_hash(tmp_path):
    first = run_export(_spec(), tmp_path / "a", _inputs(tmp_path), {"model": "toy"})
    second = run_export(_spec(), tmp_path / "b", _inputs(tmp_path), {"model": "toy"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([WEIGHTS, ONNX, EXPORT_MANIFEST])
    assert first["build_hash"] == second["build_hash"]
    assert first["files"] == second["files"]  # byte-identical weights and ONNX
    third = run_export(_spec(), tmp_path / "c", _inputs(tmp_path), {"model": "toy", "hparams": {"lr": "1"}})
    assert third["build_hash"] != first["build_hash"]


def test_nan_weights_fail_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"non-finite values in 'fc.weight'"):
        run_export(_spec(train=_poison), out, _inputs(tmp_path), {"model": "toy"})
    assert not out.exists() or not any(out.iterdir())


def test_onnx_failure_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"ONNX export of toy failed: TorchExportError: Failed to export the model with torch.export") as info:
        run_export(_spec(model_cls=NotExportable), out, _inputs(tmp_path), {"model": "toy"})
    assert "\x1b" not in str(info.value)  # no terminal colour codes in the message
    assert not out.exists() or list(out.iterdir()) == []


def test_export_refuses_to_train_outside_the_portable_mode(tmp_path):
    out = tmp_path / "out"
    # pytest loaded torch before anything could set MKL_CBWR and ATEN_CPU_CAPABILITY.
    with pytest.raises(portable.PortableModeError, match=r"refusing to train outside the portable numerics mode: ATen runs its \w+ kernels"):
        strict_run_export(_spec(), out, _inputs(tmp_path), {"model": "toy"})
    assert not out.exists()


def test_build_hash_names_the_numerics_mode_it_trained_in(tmp_path):
    manifest = run_export(_spec(), tmp_path / "a", _inputs(tmp_path), {"model": "toy"})
    toolchain = manifest["toolchain"]
    assert toolchain["numerics"] == "native"
    assert toolchain["machine"] == "x86_64" and toolchain["torch"] == torch.__version__
    assert toolchain["aten"] == torch.backends.cpu.get_cpu_capability()  # host kernels: not shared with portable builds
    assert manifest["provenance"]["cpu"] == portable.cpu_model()  # provenance, outside the hash


# --- the lock entries of the model's pip packages ------------------------------------------------

NUMPY = {"version": "2.4.6", "hashes": ["sha256:" + "a" * 64]}
HTTPX = {"version": "0.28.1", "hashes": ["sha256:" + "b" * 64, "sha256:" + "c" * 64]}


def test_build_hash_covers_the_given_lock_entries_and_records_them(tmp_path):
    inputs = _inputs(tmp_path)
    first = run_export(_spec(), tmp_path / "a", inputs, {"model": "toy"}, packages={"numpy": NUMPY})
    assert first["packages"] == {"numpy": NUMPY}
    same = run_export(_spec(), tmp_path / "b", inputs, {"model": "toy"}, packages={"numpy": dict(NUMPY)})
    assert same["build_hash"] == first["build_hash"]
    moved = run_export(_spec(), tmp_path / "c", inputs, {"model": "toy"}, packages={"numpy": NUMPY | {"hashes": NUMPY["hashes"] + ["sha256:" + "d" * 64]}})
    assert moved["build_hash"] != first["build_hash"]
    # A package the model does not depend on is simply not given: it cannot move the hash.
    assert build_hash(first["inputs"], {"model": "toy"}, first["toolchain"], {"numpy": NUMPY}) == first["build_hash"]
    assert build_hash(first["inputs"], {"model": "toy"}, first["toolchain"], {"numpy": NUMPY, "httpx": HTTPX}) != first["build_hash"]


def test_lock_entry_files_are_read_and_checked(tmp_path):
    good = tmp_path / "numpy.json"
    good.write_text(json.dumps({"name": "numpy", "version": "2.4.6", "hashes": NUMPY["hashes"]}))
    other = tmp_path / "httpx.json"
    other.write_text(json.dumps({"name": "httpx", "version": "0.28.1", "hashes": list(reversed(HTTPX["hashes"]))}))
    assert read_lock_entries([other, good]) == {"httpx": HTTPX, "numpy": NUMPY}
    for text, why in [
        ("{", "cannot read it"),
        ('{"name": "x", "version": "1"}', "expected an object with keys name, version, hashes"),
        ('{"name": "x", "version": "1", "hashes": [], "extra": 1}', "expected an object with keys name, version, hashes"),
        ('{"name": "x", "version": "1", "hashes": ["md5:00"]}', "hashes must be a non-empty list of sha256:... strings"),
        ('{"name": "", "version": "1", "hashes": ["sha256:00"]}', "name and version must be non-empty strings"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(LockEntryError, match=f"lock entry {bad}: {why}"):
            read_lock_entries([bad])
    with pytest.raises(LockEntryError, match="numpy is given twice"):
        read_lock_entries([good, good])
    with pytest.raises(LockEntryError, match="cannot read it"):
        read_lock_entries([tmp_path / "missing.json"])
