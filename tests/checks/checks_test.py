"""Tests of modelgate.checks: each check passes on good input and fails, with a useful message, on bad."""

import re
from typing import ClassVar

import pytest
import torch
from torch import nn

from modelgate import checks


def _raises(match: str):
    return pytest.raises(AssertionError, match=match)


# --- assert_shape -------------------------------------------------------------------------------


def test_shape_accepts_matching_shape_with_wildcards():
    checks.assert_shape(torch.zeros(3, 4, 5), (None, 4, 5), "features")
    checks.assert_shape(torch.zeros(()), (), "scalar")


def test_shape_names_the_wrong_axis():
    with _raises(re.escape("logits has shape (3, 5), expected (any, 4): axis 1 is 5, expected 4")):
        checks.assert_shape(torch.zeros(3, 5), (None, 4), "logits")


def test_shape_reports_wrong_number_of_dimensions():
    with _raises(re.escape("logits has shape (3, 4, 1) (3 dimensions), expected (any, 4) (2 dimensions)")):
        checks.assert_shape(torch.zeros(3, 4, 1), (None, 4), "logits")


def test_shape_rejects_a_malformed_expectation():
    with pytest.raises(TypeError, match="int or None"):
        checks.assert_shape(torch.zeros(3), ("3",))


# --- assert_finite ------------------------------------------------------------------------------


def test_finite_accepts_finite_and_integer_tensors():
    checks.assert_finite(torch.randn(4, 3), "logits")
    checks.assert_finite(torch.arange(5), "ids")
    checks.assert_finite({"a": torch.ones(2), "b": (torch.zeros(1),)}, "outputs")


def test_finite_names_first_bad_index_value_and_count():
    values = torch.zeros(3, 4)
    values[1, 2] = float("nan")
    values[2, 0] = float("inf")
    values[2, 3] = float("nan")
    with _raises(re.escape("logits has 3 non-finite values of 12 (2 NaN, 1 +Inf); first at index (1, 2): nan")):
        checks.assert_finite(values, "logits")


def test_finite_names_the_output_inside_a_tuple():
    with _raises(re.escape("out[1] has 1 non-finite values of 2 (1 -Inf); first at index (0,): -inf")):
        checks.assert_finite((torch.ones(2), torch.tensor([float("-inf"), 0.0])), "out")


def test_finite_checks_low_precision_dtypes():
    with _raises(re.escape("first at index (1,): inf")):
        checks.assert_finite(torch.tensor([1.0, 70000.0]).half(), "activations")


# --- assert_mask_invariance ---------------------------------------------------------------------


def _masked_mean(values, mask):
    keep = mask.unsqueeze(-1).to(values.dtype)
    return (torch.where(mask.unsqueeze(-1), values, 0.0)).sum(1) / keep.sum(1)


def _unmasked_mean(values, mask):
    return values.mean(1)


def _padded_batch():
    values = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(6)[None, :] < torch.tensor([6, 4, 1])[:, None]
    return values, mask


def test_mask_invariance_passes_when_padding_is_ignored():
    values, mask = _padded_batch()
    checks.assert_mask_invariance(_masked_mean, {"values": values, "mask": mask}, mask)
    checks.assert_mask_invariance(_masked_mean, (values, mask), mask)


def test_mask_invariance_reports_worst_difference_and_where():
    values, mask = _padded_batch()
    with _raises(
        r"pooled changed when masked-out positions of input 'values' were perturbed \(trial 1 of 3\): "
        r"\d+ of 6 compared values moved .* worst difference [\d.e+-]+ at index \(\d, \d\) \(before .*, after .*\)"
    ):
        checks.assert_mask_invariance(_unmasked_mean, {"values": values, "mask": mask}, mask, name="pooled")


def test_mask_invariance_compares_per_position_outputs_at_real_positions_only():
    values, mask = _padded_batch()
    # A causal running sum: real steps never see the padding after them, padded steps do.
    checks.assert_mask_invariance(lambda values, mask: values.cumsum(1), {"values": values, "mask": mask}, mask)
    reverse_cumsum = lambda values, mask: values.flip(1).cumsum(1).flip(1)  # sees the future
    with _raises(r"output changed .* at index \(1, \d, \d\)"):
        checks.assert_mask_invariance(reverse_cumsum, {"values": values, "mask": mask}, mask)


def test_mask_invariance_perturbs_integer_tokens():
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = tokens != 0
    embed = nn.Embedding(10, 3)
    checks.assert_mask_invariance(lambda tokens: (embed(tokens) * mask.unsqueeze(-1)).sum(1), tokens, mask)
    with _raises("changed when masked-out positions of input 0"):
        checks.assert_mask_invariance(lambda tokens: embed(tokens).sum(1), tokens, mask)


def test_mask_invariance_blames_a_model_that_changes_between_calls():
    values, mask = _padded_batch()
    calls = []

    def drifting(values, mask):
        calls.append(1)
        return _masked_mean(values, mask) + 1e-3 * len(calls)

    with _raises("pooled differs between two runs on the same, unperturbed inputs .* see assert_deterministic"):
        checks.assert_mask_invariance(drifting, {"values": values, "mask": mask}, mask, name="pooled")


def test_mask_is_used_passes_for_a_model_that_reads_its_mask_and_fails_for_one_that_does_not():
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = tokens != 0
    embed = nn.Embedding(10, 3)
    reads_mask = lambda tokens, mask: (embed(tokens) * mask.unsqueeze(-1)).sum(1)
    checks.assert_mask_invariance(reads_mask, {"tokens": tokens, "mask": mask}, mask, perturb=checks.real_tokens(1, 10))
    checks.assert_mask_is_used(reads_mask, {"tokens": tokens, "mask": mask}, mask, perturb=checks.real_tokens(1, 10))
    # A model that never looks past the first token: invariant with or without its mask, so the
    # invariance check above could never fail for it.
    first_only = lambda tokens, mask: embed(tokens[:, :1]).sum(1)
    with _raises("pooled did not change when the padded positions of input 'tokens' were perturbed with 'mask' saying they are real"):
        checks.assert_mask_is_used(first_only, {"tokens": tokens, "mask": mask}, mask, perturb=checks.real_tokens(1, 10), name="pooled")


def test_real_tokens_replaces_padding_with_ids_in_range_only():
    tokens = torch.zeros(4, 50, dtype=torch.long)
    masked = torch.zeros(4, 50, dtype=torch.bool)
    masked[:, 25:] = True
    changed = checks.real_tokens(1, 5)(tokens, masked, torch.Generator().manual_seed(0))
    assert bool((changed[:, :25] == 0).all()) and bool(((changed[:, 25:] >= 1) & (changed[:, 25:] < 5)).all())


def test_mask_invariance_refuses_a_mask_with_nothing_masked():
    values = torch.randn(2, 3)
    with pytest.raises(ValueError, match="no masked-out positions"):
        checks.assert_mask_invariance(lambda v: v, values, torch.ones(2, 3, dtype=torch.bool))


# --- assert_gradients_finite --------------------------------------------------------------------


class _TwoLayer(nn.Module):
    def __init__(self, use_second: bool = True, sqrt_of_zero: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 2)
        self.use_second = use_second
        self.sqrt_of_zero = sqrt_of_zero

    def forward(self, x):
        h = self.first(x)
        if self.sqrt_of_zero:
            h = (h - h).sqrt() + h  # finite forward, NaN gradient: d sqrt(u)/du is infinite at 0
        return self.second(h) if self.use_second else h[:, :2]


def _loss(model):
    return model(torch.randn(5, 3)).square().mean()


def test_gradients_pass_for_a_healthy_model():
    model = _TwoLayer()
    checks.assert_gradients_finite(model, _loss(model))
    assert all(p.grad is not None for p in model.parameters())


def test_gradients_name_parameters_without_gradient():
    model = _TwoLayer(use_second=False)
    with _raises(re.escape("2 of 4 trainable parameters received no gradient: second.weight, second.bias")):
        checks.assert_gradients_finite(model, _loss(model))


def test_gradients_name_the_parameter_with_non_finite_gradient():
    model = _TwoLayer(sqrt_of_zero=True)
    with _raises(r"gradient of first.weight has 12 non-finite values of 12 \(12 NaN\); first at index \(0, 0\): nan"):
        checks.assert_gradients_finite(model, _loss(model))


def test_gradients_ignore_frozen_parameters_and_old_gradients():
    model = _TwoLayer(use_second=False)
    for param in model.second.parameters():
        param.requires_grad_(False)
    model.first.weight.grad = torch.full_like(model.first.weight, float("nan"))  # stale, must be cleared
    checks.assert_gradients_finite(model, _loss(model))


def test_gradients_refuse_a_loss_without_graph():
    model = _TwoLayer()
    with torch.no_grad():
        loss = _loss(model)
    with _raises("loss does not require grad"):
        checks.assert_gradients_finite(model, loss)


# --- assert_deterministic -----------------------------------------------------------------------


def test_deterministic_passes_for_seeded_randomness():
    checks.assert_deterministic(lambda: nn.Linear(4, 3)(torch.randn(2, 4)), runs=3)


def test_deterministic_copies_outputs_that_alias_state():
    state = torch.zeros(2)

    def returns_its_state():  # the second call changes what the first returned, unless it was copied
        state.add_(1.0)
        return state

    with _raises("differs between run 1 and run 2"):
        checks.assert_deterministic(returns_its_state)


def test_deterministic_treats_identical_nans_as_equal():
    checks.assert_deterministic(lambda: torch.tensor([float("nan"), 1.0]))


def test_deterministic_reports_first_run_to_differ():
    calls = []

    def drifting():  # state kept between calls, like a cache or a running statistic
        calls.append(1)
        out = torch.zeros(2, 3)
        out[1, 2] = 1e-7 * len(calls)
        return {"logits": out}

    with _raises(
        re.escape(
            "output['logits'] differs between run 1 and run 2 with the same seed (0): 1 of 6 values are "
            "not bitwise equal; largest difference 1e-07 at index (1, 2)"
        )
    ):
        checks.assert_deterministic(drifting)


def _seeded_linear(seed):
    torch.manual_seed(seed)
    return nn.Linear(4, 3)(torch.ones(2, 4))


def test_seeded_passes_when_the_seed_decides_the_weights():
    checks.assert_seeded(_seeded_linear)


def test_seeded_catches_a_model_that_ignores_its_seed():
    def ignores_seed(seed):  # initialized from a fixed seed of its own, whatever the caller asks
        return _seeded_linear(0)

    with _raises("seeds 7 and 8 give bitwise-identical results"):
        checks.assert_seeded(ignores_seed)
    with _raises("differs between run 1 and run 2"):
        checks.assert_seeded(lambda seed: torch.randn(3, generator=torch.Generator().manual_seed(torch.seed())))


def test_seeded_model_builds_from_each_seed_and_runs_without_gradients():
    def build(seed):
        torch.manual_seed(seed)
        return nn.Linear(4, 3)

    inputs = (torch.ones(2, 4),)
    checks.assert_seeded_model(build, inputs)
    with _raises("seeds 7 and 8 give bitwise-identical results"):
        checks.assert_seeded_model(lambda seed: build(0), inputs)


class _Spec:
    """What assert_training_deterministic uses of a ModelSpec."""

    def __init__(self, drift=None, config=None):
        self.config, self.drift = config or {"steps": 5}, drift

    def with_config(self, overrides):
        return _Spec(self.drift, {**self.config, **overrides})

    def new_model(self):
        return nn.Linear(2, 2)

    def train(self, model, config):
        with torch.no_grad():
            for _ in range(config["steps"]):
                model.weight.add_(torch.randn(2, 2) if self.drift is None else self.drift())


def test_training_deterministic_passes_for_seeded_training_and_catches_drift():
    checks.assert_training_deterministic(_Spec(), steps=2)
    calls = []
    with _raises("state_dict"):
        checks.assert_training_deterministic(_Spec(drift=lambda: calls.append(1) or torch.full((2, 2), float(len(calls)))))


def test_deterministic_catches_unseeded_generators():
    def unseeded():
        return torch.randn(3, generator=torch.Generator().manual_seed(torch.seed()))

    with _raises("not bitwise equal"):
        checks.assert_deterministic(unseeded, seed=1)


def test_deterministic_restores_the_deterministic_algorithms_setting():
    before = torch.are_deterministic_algorithms_enabled()
    checks.assert_deterministic(lambda: torch.ones(1), deterministic_algorithms=True)
    assert torch.are_deterministic_algorithms_enabled() == before


# --- tolerances and assert_close ----------------------------------------------------------------


def test_default_tolerances_match_torch_testing_for_direct_comparisons():
    assert checks.default_tolerance(torch.float32) == (1.3e-6, 1e-5)
    assert checks.default_tolerance("bfloat16") == (1.6e-2, 1e-5)
    assert checks.default_tolerance("float16") == (1e-3, 1e-5)
    assert checks.default_tolerance(torch.int64) == (0.0, 0.0)
    assert checks.default_tolerance("bool", autocast=True) == (0.0, 0.0)


def test_autocast_tolerances_cover_errors_measured_on_a_gpu():
    # Measured on an H200 (numerics.TOLERANCES["autocast"]): bf16 autocast up to 2.1e-3 abs (0.25 rel near
    # zero); fp16 1.5e-4 abs / 2e-2 rel.
    bf16_rtol, bf16_atol = checks.default_tolerance("bfloat16", autocast=True)
    _, fp16_atol = checks.default_tolerance("float16", autocast=True)
    assert 2.1e-3 <= bf16_atol + bf16_rtol * 0.0084  # 0.25 rel error at |expected| = 0.0084
    assert 1.5e-4 <= fp16_atol
    assert bf16_atol > checks.default_tolerance("bfloat16")[1]
    assert checks.default_tolerance("float32", autocast=True) == checks.default_tolerance("float32")


def test_default_tolerance_rejects_unknown_dtypes():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        checks.default_tolerance("float8")
    with pytest.raises(ValueError, match="no default autocast tolerance for float64"):
        checks.default_tolerance(torch.float64, autocast=True)


def test_close_passes_within_dtype_tolerance():
    expected = torch.tensor([1.0, -2.0, 0.0])
    [comparison] = checks.assert_close(expected + 1e-6, expected, name="logits")
    assert comparison.ok and comparison.max_abs == pytest.approx(1e-6, rel=1e-3)
    checks.assert_close(expected + 5e-3, expected, dtype="bfloat16", autocast=True)


def test_close_reports_worst_abs_and_rel_errors_with_indices():
    expected = torch.tensor([[10.0, 0.001], [-3.0, 2.0]])
    actual = expected.clone()
    actual[0, 0] += 0.5  # largest absolute error
    actual[0, 1] += 0.01  # largest relative error, near zero
    with _raises(
        re.escape(
            "logits (float32): 2 of 4 values differ beyond atol=1e-05 + rtol=1.3e-06*|expected|; "
            "worst abs error 0.5 at index (0, 0) (actual 10.5, expected 10); "
            "worst rel error 10 at index (0, 1) (actual 0.011, expected 0.001)"
        )
    ):
        checks.assert_close(actual, expected, name="logits")


def test_close_uses_looser_tolerance_under_autocast_but_still_fails():
    expected = torch.tensor([1.0, 2.0])
    checks.assert_close(expected + 0.02, expected, dtype="bfloat16", autocast=True)
    with _raises(r"bfloat16 under autocast vs a float32 reference"):
        checks.assert_close(expected + 0.1, expected, dtype="bfloat16", autocast=True)


def test_autocast_atol_scales_with_the_output():
    """Low-precision error is a share of the output's scale: 0.5 off on logits of size 100 is fine."""
    expected = torch.tensor([100.0, 0.0])
    checks.assert_close(torch.tensor([100.5, 0.5]), expected, dtype="bfloat16", autocast=True)
    with _raises(re.escape("atol=2 + rtol=0.016*|expected|")):
        checks.assert_close(torch.tensor([100.0, 2.5]), expected, dtype="bfloat16", autocast=True)
    checks.assert_close(torch.tensor([0.5]), torch.tensor([0.0]), dtype="bfloat16", autocast=True, atol=0.6)


def test_close_fails_on_nan_and_on_shape_mismatch():
    with _raises(r"1 of 2 values differ .* worst abs error inf at index \(1,\) \(actual nan, expected 2\)"):
        checks.assert_close(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    with _raises(re.escape("shape (2,), expected (3,)")):
        checks.assert_close(torch.zeros(2), torch.zeros(3))


def test_close_accepts_explicit_tolerances():
    checks.assert_close(torch.tensor([1.1]), torch.tensor([1.0]), atol=0.2)
    with _raises("atol=0.05"):
        checks.assert_close(torch.tensor([1.1]), torch.tensor([1.0]), atol=0.05, rtol=0.0)


# --- dtype_sweep ----------------------------------------------------------------------------------


def _cancellation_model():
    """x @ [1000, -999]: exact in float32, 0 in bfloat16 (999 rounds to 1000)."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1000.0, -999.0]]))
    return model


def test_dtype_sweep_passes_for_a_well_conditioned_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    report = checks.dtype_sweep(model, {"input": torch.randn(5, 8)}, device="cpu")
    assert sorted(report) == ["bfloat16", "float16", "float32"]
    assert report["float32"][0].max_abs == 0.0
    assert report["bfloat16"][0].max_abs > 0.0, "autocast had no effect: the sweep compared float32 with itself"


def test_dtype_sweep_names_the_failing_dtype():
    with _raises(
        r"dtype sweep failed for output \(autocast bfloat16 on cpu vs float32\): 1 of 1 values differ .* "
        r"worst abs error 1 at index \(0, 0\) \(actual 0, expected 1\)"
    ):
        checks.dtype_sweep(_cancellation_model(), torch.ones(1, 2), dtypes=("float32", "bfloat16"))


def test_dtype_sweep_blames_a_model_that_changes_between_calls():
    model = nn.Linear(2, 1)
    model.register_forward_hook(lambda module, args, out: module.bias.data.add_(1e-3) and None)
    with _raises(r"a second float32 run on cpu, no autocast.* does not give the same answer twice"):
        checks.dtype_sweep(model, torch.ones(1, 2), dtypes=("float32",))


def test_dtype_sweep_refuses_dtypes_autocast_cannot_use():
    with pytest.raises(ValueError, match="float64 is not an autocast dtype"):
        checks.dtype_sweep(nn.Linear(2, 1), torch.ones(1, 2), dtypes=("float64",))


def test_dtype_sweep_leaves_the_callers_model_alone():
    model = _cancellation_model()
    checks.dtype_sweep(model, torch.ones(1, 2), dtypes=("float32",), device="cpu")
    assert model.weight.dtype == torch.float32 and model.weight.device.type == "cpu"


# --- assert_cpu_cuda_parity -------------------------------------------------------------------------


class _RecordsTf32(nn.Module):
    """Records the TF32 flags each forward runs under (in a class attribute: the check runs copies)."""

    seen: ClassVar[list] = []

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        type(self).seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return self.linear(x)


class _Drifting(nn.Module):
    """Answers slightly differently on every call, as a broken kernel would on the other device."""

    calls = 0

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        type(self).calls += 1
        return self.linear(x) + 1e-3 * type(self).calls


@pytest.fixture
def tf32_on():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_parity_turns_both_tf32_flags_off_while_running_and_restores_them(tf32_on):
    _RecordsTf32.seen = []
    # device="cpu" stands in for CUDA here: the flags are plain settings, readable without a GPU.
    checks.assert_cpu_cuda_parity(_RecordsTf32().eval(), torch.randn(4, 3), device="cpu")
    assert _RecordsTf32.seen == [(False, False), (False, False)]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


def test_parity_reports_the_difference_and_restores_flags_on_failure(tf32_on):
    with _raises(r"logits on cpu vs cpu \(float32\): 8 of 8 values differ .* worst abs error 0.001 at index"):
        checks.assert_cpu_cuda_parity(_Drifting().eval(), torch.randn(4, 3), device="cpu", name="logits")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_parity_explains_a_missing_cuda_device():
    with pytest.raises(RuntimeError, match="needs a CUDA device and none is visible"):
        checks.assert_cpu_cuda_parity(nn.Linear(2, 2), torch.ones(1, 2))


@checks.cuda_test
def test_parity_on_cuda_for_a_convolution(tf32_on):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    checks.assert_cpu_cuda_parity(model, torch.randn(2, 3, 16, 16))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


def test_cuda_test_marks_gpu_and_skips_without_cuda():
    def test_something():
        pass

    marks = {mark.name: mark for mark in checks.cuda_test(test_something).pytestmark}
    assert "gpu" in marks
    assert marks["skipif"].args[0] is (not torch.cuda.is_available())


def test_deterministic_reports_integer_outputs_exactly():
    outputs = iter([torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])])
    with _raises(
        re.escape(
            "ids differs between run 1 and run 2 with the same seed (0): 1 of 3 values are not bitwise "
            "equal; first difference at index (2,) (run 1: 3, run 2: 4)"
        )
    ):
        checks.assert_deterministic(lambda: next(outputs), name="ids")
