"""Golden test: a model's weights reproduce golden/<model>/ within tolerance.

Under Bazel, the golden_test macro sets MODELGATE_MODEL, MODELGATE_WEIGHTS (the exported
safetensors) and MODELGATE_GOLDEN_DIR. Without them, e.g. on a CUDA machine without Bazel
(`python3 -m pytest -m gpu tools/bin/golden_test.py` from the repository root), it covers every model
with golden data and exports each one first with the export tool itself (tools/bin/model_tool.py
export, in a fresh process: the portable training mode must be in place before torch loads;
a model with a pin file exports its pinned checkpoint, fetched as the build fetches it) before
comparing. The `gpu` tests run in the `_gpu` variant.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelgate import checkpoint as checkpoints
from modelgate import golden
from modelgate.formats import WEIGHTS
from modelgate.loading import load_weights
from modelgate.spec import load_spec

MODEL = os.environ.get("MODELGATE_MODEL", "")
WEIGHTS_FILE = os.environ.get("MODELGATE_WEIGHTS", "")
MODELS = [MODEL] if MODEL else sorted(p.parent.name for p in Path("golden").glob("*/golden.json"))


@pytest.fixture(scope="module", params=MODELS)
def model_name(request):
    return request.param


@pytest.fixture(scope="module")
def spec(model_name):
    return load_spec(model_name)


@pytest.fixture(scope="module")
def data(spec, model_name):
    directory = os.environ.get("MODELGATE_GOLDEN_DIR") if MODEL else None
    try:
        return golden.load(directory or f"golden/{model_name}", model_name, [t.name for t in spec.inputs], spec.outputs)
    except golden.GoldenError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def weights(spec, tmp_path_factory):
    if WEIGHTS_FILE:
        return WEIGHTS_FILE
    out = tmp_path_factory.mktemp(spec.name)
    tool = Path(__file__).resolve().parent / "model_tool.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, str(tool), "export", "--model", spec.name, "--out-dir", str(out)]
    pin_file = Path("models") / spec.name / checkpoints.PIN_FILE
    if pin_file.is_file():
        # A pinned checkpoint: fetched as the build fetches it (the machine's store first). Only
        # outside Bazel, whose golden test is given the exported weights and no fetching code.
        from modelgate import sources
        from modelgate.registry.storage import installed

        try:
            pin = checkpoints.read_pin(pin_file, str(pin_file), spec.name)
            fetched = sources.fetch(pin, package_files=installed.package_files(pin.sources))
        except checkpoints.CheckpointError as e:
            pytest.fail(str(e), pytrace=False)
        command += ["--checkpoint", str(fetched.path), "--checkpoint-pin", f"{pin_file}={pin_file}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        pytest.fail(f"export of {spec.name} failed: {result.stderr.strip()}", pytrace=False)
    return str(out / WEIGHTS)


def _check(spec, data, weights, device: str, dtype: str = "float32"):
    model = load_weights(spec, weights, device)
    inputs = {k: v.to(device) for k, v in data.inputs.items()}
    with torch.no_grad():
        if dtype == "float32":
            outputs = spec.forward(model, inputs)
        else:
            with torch.autocast(device_type=device, dtype=getattr(torch, dtype)):
                outputs = spec.forward(model, inputs)
    outputs = {k: v.float() for k, v in outputs.items()}
    reports = golden.compare(data, outputs, dtype)
    # The picture of the comparison (modelgate.report): in the test's undeclared outputs, which
    # Bazel keeps when the test fails and CI uploads; the failure's first line names it.
    from modelgate.report import gate_report

    _, shown = gate_report.write_golden_test_report(spec, data, outputs, dtype=dtype, device=device)
    if not all(r.passed for r in reports):
        pytest.fail(f"golden test of {spec.name} failed; report: {shown}\n" + golden.failure_text(spec.name, data, reports), pytrace=False)


def test_golden_cpu(spec, data, weights):
    torch.set_num_threads(1)
    _check(spec, data, weights, "cpu")


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    # cuDNN's TF32 is on by default: convolutions would silently run at reduced precision.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.gpu
def test_golden_cuda_float32(spec, data, weights, cuda, no_tf32):
    _check(spec, data, weights, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_golden_cuda_autocast(spec, data, weights, cuda, no_tf32, dtype):
    _check(spec, data, weights, "cuda", dtype)
