"""Model-logic tests for ImageCNN: shapes, edge-case finiteness, batchnorm modes, gradients,
determinism and numerics across dtypes and devices."""

import pytest
import torch
import torch.nn.functional as F

from models.image_cnn.model import ImageCNN, ImageCNNConfig
from models.image_cnn.spec import CONFIG, SPEC, make_batch
from modelgate import checks

MODEL_CONFIG = ImageCNNConfig()
SIZE = MODEL_CONFIG.image_size


def _model(seed: int = 0) -> ImageCNN:
    torch.manual_seed(seed)
    return ImageCNN(MODEL_CONFIG).eval()


def _images(batch: int = 8, seed: int = 1) -> torch.Tensor:
    images, _ = make_batch(CONFIG, batch, torch.Generator().manual_seed(seed))
    return images


@pytest.fixture(scope="module")
def trained() -> ImageCNN:
    """The model as the export trains it: real weights and batchnorm running statistics."""
    model = SPEC.new_model()
    SPEC.train(model, SPEC.config)
    return model


def test_output_shape():
    with torch.no_grad():
        checks.assert_shape(_model()(_images(batch=5)), (5, MODEL_CONFIG.num_classes), "logits")
        # Global average pooling: other image sizes work too.
        checks.assert_shape(_model()(torch.randn(2, 1, 24, 20)), (2, MODEL_CONFIG.num_classes), "logits")


def test_golden_inputs_fit_the_spec():
    golden = SPEC.golden_inputs()
    for tensor_spec in SPEC.inputs:
        tensor_spec.check(golden[tensor_spec.name])
    assert len(golden["images"]) == 8


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"images must be \(batch, 1, height, width\), got shape \(2, 3, 16, 16\)"):
        _model()(torch.zeros(2, 3, SIZE, SIZE))


@pytest.mark.parametrize(
    "case, images",
    [
        ("all zero", torch.zeros(2, 1, SIZE, SIZE)),
        ("constant", torch.full((2, 1, SIZE, SIZE), 3.0)),
        ("extreme values", torch.tensor([1e6, -1e6]).repeat(SIZE * SIZE // 2).view(1, 1, SIZE, SIZE)),
        ("huge magnitude", torch.full((1, 1, SIZE, SIZE), 1e30)),
        ("tiny magnitude", torch.full((1, 1, SIZE, SIZE), 1e-30)),
        ("single pixel image", torch.ones(1, 1, 1, 1)),
    ],
)
def test_logits_are_finite_on_edge_cases(trained, case, images):
    with torch.no_grad():
        checks.assert_finite(trained(images), f"logits for {case} input")


def test_train_returns_model_in_eval_mode(trained):
    assert not trained.training
    assert not any(module.training for module in trained.modules())


def test_eval_output_does_not_depend_on_the_rest_of_the_batch(trained):
    """Batchnorm in eval mode uses running statistics: one image alone gives the same logits."""
    images = _images()
    with torch.no_grad():
        batched = trained(images)
        alone = torch.cat([trained(images[i : i + 1]) for i in range(len(images))])
    checks.assert_close(alone, batched, name="logits of images one at a time")


def test_gradients_are_finite_and_reach_every_parameter():
    model = _model().train()
    images, labels = make_batch(CONFIG, 8, torch.Generator().manual_seed(3))
    images[0] = 0.0  # a blank image in the batch
    checks.assert_gradients_finite(model, F.cross_entropy(model(images), labels))


def test_same_seed_same_output():
    checks.assert_seeded_model(_model, (_images(),), seeds=(7, 8))


def test_training_is_deterministic():
    checks.assert_training_deterministic(SPEC, steps=3)  # weights and buffers (batchnorm statistics)


def test_bfloat16_autocast_on_cpu_stays_close_to_float32(trained):
    checks.dtype_sweep(trained, {"images": _images()}, dtypes=("float32", "bfloat16"), device="cpu", name="logits")


@checks.cuda_test
def test_cpu_cuda_parity_in_float32(trained):
    checks.assert_cpu_cuda_parity(trained, {"images": SPEC.golden_inputs()["images"]}, name="logits")


@checks.cuda_test
def test_autocast_dtype_sweep_on_cuda(trained):
    checks.dtype_sweep(trained, {"images": SPEC.golden_inputs()["images"]}, device="cuda", name="logits")
