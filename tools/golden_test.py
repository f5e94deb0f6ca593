"""Golden test: the exported weights reproduce golden/<model>/ within tolerance.

Declared by the golden_test macro, which sets MODELGATE_MODEL, MODELGATE_WEIGHTS and
MODELGATE_GOLDEN_DIR. The `gpu` tests run in the `_gpu` variant (or `pytest -m gpu` on a CUDA box).
"""

import os

import pytest
import torch

from modelgate import golden
from modelgate.export import load_weights
from modelgate.spec import load_spec

MODEL = os.environ.get("MODELGATE_MODEL", "")
WEIGHTS = os.environ.get("MODELGATE_WEIGHTS", "")
GOLDEN_DIR = os.environ.get("MODELGATE_GOLDEN_DIR", f"golden/{MODEL}")


@pytest.fixture(scope="module")
def spec():
    if not MODEL:
        pytest.fail("MODELGATE_MODEL is not set; declare this test with golden_test() in a BUILD file")
    return load_spec(MODEL)


@pytest.fixture(scope="module")
def data(spec):
    try:
        return golden.load(GOLDEN_DIR, MODEL, [t.name for t in spec.inputs], spec.outputs)
    except golden.GoldenError as e:
        pytest.fail(str(e), pytrace=False)


def _check(spec, data, device: str, dtype: str = "float32"):
    model = load_weights(spec, WEIGHTS, device)
    inputs = {k: v.to(device) for k, v in data.inputs.items()}
    with torch.no_grad():
        if dtype == "float32":
            outputs = spec.forward(model, inputs)
        else:
            with torch.autocast(device_type=device, dtype=getattr(torch, dtype)):
                outputs = spec.forward(model, inputs)
    reports = golden.compare(data, {k: v.float() for k, v in outputs.items()}, dtype)
    if not all(r.passed for r in reports):
        pytest.fail(golden.failure_text(MODEL, GOLDEN_DIR, reports), pytrace=False)


def test_golden_cpu(spec, data):
    torch.set_num_threads(1)
    _check(spec, data, "cpu")


@pytest.fixture
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    # cuDNN's TF32 is on by default: convolutions would silently run at reduced precision.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
def test_golden_cuda_float32(spec, data, no_tf32):
    _check(spec, data, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_golden_cuda_autocast(spec, data, no_tf32, dtype):
    _check(spec, data, "cuda", dtype)
