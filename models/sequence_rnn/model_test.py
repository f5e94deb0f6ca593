"""Model-logic tests for SequenceRNN: shapes, padding invariance, edge-case finiteness, gradients,
determinism and numerics across dtypes and devices."""

import pytest
import torch
import torch.nn.functional as F

from models.sequence_rnn.model import SequenceRNN, SequenceRNNConfig, masked_standardize, padding_mask
from models.sequence_rnn.spec import CONFIG, SPEC, make_batch
from modelgate import checks

MODEL_CONFIG = SequenceRNNConfig()
SEQ = CONFIG["max_len"]


def _model(seed: int = 0) -> SequenceRNN:
    torch.manual_seed(seed)
    return SequenceRNN(MODEL_CONFIG).eval()


def _batch(size: int = 6, seed: int = 1):
    """(series, lengths) with some short rows, so a third of the steps or more are padding."""
    series, lengths, _ = make_batch(CONFIG, size, torch.Generator().manual_seed(seed))
    lengths[:3] = torch.tensor([SEQ, 5, 1])
    series = series.masked_fill(~padding_mask(lengths, SEQ).unsqueeze(-1), 0.0)
    return series, lengths


@pytest.fixture(scope="module")
def trained() -> SequenceRNN:
    """The model as the export trains it."""
    model = SPEC.new_model()
    SPEC.train(model, SPEC.config)
    return model


def test_output_shape():
    series, lengths = _batch(size=5)
    with torch.no_grad():
        checks.assert_shape(_model()(series, lengths), (5, MODEL_CONFIG.num_classes), "logits")
        checks.assert_shape(_model()(series[:2, :7], lengths[:2].clamp(max=7)), (2, MODEL_CONFIG.num_classes), "logits")


def test_golden_inputs_fit_the_spec():
    golden = SPEC.golden_inputs()
    for tensor_spec in SPEC.inputs:
        tensor_spec.check(golden[tensor_spec.name])
    assert golden["lengths"].min() == 1, "golden data should include a length-1 series"


def test_rejects_mismatched_lengths():
    series, lengths = _batch(size=4)
    with pytest.raises(ValueError, match=r"lengths must be \(batch,\) = \(4,\), got shape \(3,\)"):
        _model()(series, lengths[:3])


def test_padding_values_do_not_change_the_logits(trained):
    series, lengths = _batch()
    checks.assert_mask_invariance(
        trained, {"series": series, "lengths": lengths}, padding_mask(lengths, SEQ), name="logits"
    )


def test_nan_and_inf_padding_do_not_leak(trained):
    series, lengths = _batch()
    for garbage in (float("nan"), float("inf"), -3e38):
        checks.assert_mask_invariance(
            trained,
            {"series": series, "lengths": lengths},
            padding_mask(lengths, SEQ),
            perturb=lambda value, masked, _, garbage=garbage: value.masked_fill(masked, garbage),
            trials=1,
            name=f"logits with padding {garbage}",
        )


def test_amount_of_padding_does_not_matter(trained):
    """The same logits for a series alone and unpadded, in the batch, and in a batch padded further.

    Perturbing padded values (above) cannot see a bug after the input normalization, which zeroes
    padding: a pooling or a last-step gather that runs over padded steps. Changing how many padded
    steps there are does.
    """
    series, lengths = _batch()
    longer = torch.cat([series, torch.randn(len(series), SEQ, 1)], dim=1)
    with torch.no_grad():
        batched = trained(series, lengths)
        alone = torch.cat([trained(series[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(len(lengths))])
        padded_further = trained(longer, lengths)
    checks.assert_close(alone, batched, name="logits of series one at a time, unpadded")
    checks.assert_close(padded_further, batched, name=f"logits of series padded to {2 * SEQ} steps")


def test_normalization_ignores_padding_and_survives_constant_series():
    series = torch.tensor([[3.0, 5.0, 100.0], [7.0, 7.0, 7.0]]).unsqueeze(-1)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    normalized = masked_standardize(series, mask)
    checks.assert_close(normalized[0, :, 0], torch.tensor([-1.0, 1.0, 0.0]), name="standardized series")
    checks.assert_close(normalized[1], torch.zeros(3, 1), name="standardized constant series")


@pytest.mark.parametrize(
    "case, series, lengths",
    [
        ("length-1 series", torch.randn(2, SEQ, 1), torch.tensor([1, 1])),
        ("all zero", torch.zeros(2, SEQ, 1), torch.tensor([SEQ, 4])),
        ("constant", torch.full((2, SEQ, 1), -2.5), torch.tensor([SEQ, 4])),
        ("extreme values", torch.tensor([3e38, -3e38]).repeat(SEQ).view(1, 2 * SEQ, 1), torch.tensor([2 * SEQ])),
        ("tiny magnitude", torch.randn(1, SEQ, 1) * 1e-30, torch.tensor([SEQ])),
        ("length 0 (treated as 1)", torch.randn(1, SEQ, 1), torch.tensor([0])),
        ("length beyond the series (treated as its length)", torch.randn(1, 4, 1), torch.tensor([9])),
    ],
)
def test_logits_are_finite_on_edge_cases(trained, case, series, lengths):
    with torch.no_grad():
        checks.assert_finite(trained(series, lengths), f"logits for {case}")


def test_train_returns_model_in_eval_mode(trained):
    assert not any(module.training for module in trained.modules())


def test_gradients_are_finite_and_reach_every_parameter():
    model = _model().train()
    series, lengths = _batch()
    series[3] = 4.0  # a constant series: zero variance in the normalization
    labels = torch.arange(len(lengths)) % MODEL_CONFIG.num_classes
    checks.assert_gradients_finite(model, F.cross_entropy(model(series, lengths), labels))


def test_same_seed_same_output():
    checks.assert_seeded_model(_model, _batch(), seeds=(7, 8))


def test_training_is_deterministic():
    checks.assert_training_deterministic(SPEC, steps=3)  # weights and buffers (batchnorm statistics)


def test_autocast_on_cpu_stays_close_to_float32(trained):
    series, lengths = _batch()
    checks.dtype_sweep(
        trained, {"series": series, "lengths": lengths}, dtypes=("float32", "bfloat16"), device="cpu", name="logits"
    )


@checks.cuda_test
def test_cpu_cuda_parity_in_float32(trained):
    checks.assert_cpu_cuda_parity(trained, SPEC.golden_inputs(), name="logits")


@checks.cuda_test
def test_autocast_dtype_sweep_on_cuda(trained):
    checks.dtype_sweep(trained, SPEC.golden_inputs(), device="cuda", name="logits")
