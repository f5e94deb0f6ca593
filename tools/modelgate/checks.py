"""Checks for model-logic tests: the properties ordinary unit tests skip.

Each `assert_*` function raises AssertionError with a message that says what went wrong, where
(an index tuple, a parameter name, a dtype) and what usually causes it, so a red test can be acted
on without a debugger. They work in any test runner; in pytest they read like plain asserts:

    from modelgate import checks

    def test_padding_does_not_leak():
        checks.assert_mask_invariance(model, {"series": x, "lengths": n}, mask=padding_mask(n, T))

What is here:
- shapes and values: `assert_shape`, `assert_finite`;
- model logic: `assert_mask_invariance` (with `real_tokens`, a perturbation for token ids) and
  `assert_mask_is_used` (its other side: the check can fail), `assert_gradients_finite`,
  `assert_deterministic`, `assert_seeded` and `assert_seeded_model` (the seed decides the
  initialization), `assert_training_deterministic`;
- numerics: `default_tolerance`, `assert_close`, `dtype_sweep` (autocast vs an fp32 reference),
  `assert_cpu_cuda_parity` (TF32 off on both cuBLAS and cuDNN);
- `cuda_test`: marks a test `gpu` and skips it where no CUDA device is visible.

Model outputs may be a tensor, or a tuple/list/dict of tensors (nested); they are compared
element by element and named like `logits`, `output[0]`, `output['probs']`.
"""

from __future__ import annotations

import contextlib
import copy
import random
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from modelgate import numerics

__all__ = [
    "Comparison",
    "assert_close",
    "assert_cpu_cuda_parity",
    "assert_deterministic",
    "assert_seeded",
    "assert_training_deterministic",
    "assert_finite",
    "assert_gradients_finite",
    "assert_mask_invariance",
    "assert_mask_is_used",
    "assert_seeded_model",
    "assert_shape",
    "real_tokens",
    "cuda_test",
    "default_tolerance",
    "dtype_sweep",
]

# --- Tolerances -------------------------------------------------------------------------------

# The default tolerances are numerics.TOLERANCES: "direct" for two results in one dtype,
# "autocast" for a run under autocast against the float32 reference (its atol is per unit of the
# output's scale: see _autocast_atol).

_DTYPE_NAMES = numerics.DTYPES


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; expected a torch.dtype or one of {sorted(_DTYPE_NAMES)}")
    return _DTYPE_NAMES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def default_tolerance(dtype: torch.dtype | str, autocast: bool = False) -> tuple[float, float]:
    """(rtol, atol) for comparing a result computed in `dtype`; values pass if |a - e| <= atol + rtol * |e|.

    autocast=False: two results in the same dtype (torch.testing.assert_close's defaults), e.g.
        CUDA vs CPU in float32, or two runs of one kernel.
    autocast=True: a forward run under torch.autocast(dtype=...) against the float32 reference of
        the same model: looser, from measured errors (numerics.TOLERANCES["autocast"]). The atol returned is
        for outputs of order one; assert_close(autocast=True) and dtype_sweep multiply it by
        max(1, max |expected|) unless atol is given.
    Integer and bool dtypes compare exactly: (0.0, 0.0).
    """
    dtype = _as_dtype(dtype)
    if not dtype.is_floating_point and not dtype.is_complex:
        return (0.0, 0.0)
    tol = numerics.tolerance("autocast" if autocast else "direct", _dtype_name(dtype))
    return (tol.rtol, tol.atol)


# --- Helpers ------------------------------------------------------------------------------------


_index = numerics.index_of
_value = numerics.value_text


def _flatten(output: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a model output: a tensor, or nested tuples/lists/dicts."""
    if isinstance(output, torch.Tensor):
        return [(name, output)]
    if isinstance(output, Mapping):
        return [item for key, value in output.items() for item in _flatten(value, f"{name}[{key!r}]")]
    if isinstance(output, (tuple, list)):
        return [item for i, value in enumerate(output) for item in _flatten(value, f"{name}[{i}]")]
    raise TypeError(f"{name}: expected a tensor or a tuple/list/dict of tensors, got {type(output).__name__}")


def _snapshot(output: Any, name: str) -> list[tuple[str, torch.Tensor]]:
    """_flatten, with each tensor copied to the CPU: later calls cannot change it in place."""
    return [(label, tensor.detach().to("cpu", copy=True)) for label, tensor in _flatten(output, name)]


def _call(fn: Callable, inputs: Any) -> Any:
    """fn(**inputs) for a dict, fn(*inputs) for a tuple/list, fn(inputs) for a tensor."""
    if isinstance(inputs, Mapping):
        return fn(**inputs)
    if isinstance(inputs, (tuple, list)):
        return fn(*inputs)
    return fn(inputs)


def _map_tensors(inputs: Any, convert: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(inputs, torch.Tensor):
        return convert(inputs)
    if isinstance(inputs, Mapping):
        return {key: _map_tensors(value, convert) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_map_tensors(value, convert) for value in inputs)
    return inputs


def _nonfinite_summary(tensor: torch.Tensor) -> str | None:
    """'3 non-finite values of 96 (2 NaN, 1 +Inf); first at index (1, 4): nan', or None if all finite."""
    bad = numerics.nonfinite(tensor)
    if bad is None:
        return None
    kinds = ", ".join(f"{n} {label}" for n, label in ((bad.nan, "NaN"), (bad.posinf, "+Inf"), (bad.neginf, "-Inf")) if n)
    return f"{bad.count} non-finite values of {tensor.numel()} ({kinds}); first at index {bad.first}: {bad.first_value}"


# --- Shapes and values --------------------------------------------------------------------------


def assert_shape(tensor: torch.Tensor, expected_shape: Sequence[int | None], name: str = "tensor") -> None:
    """`tensor` has `expected_shape`; None in expected_shape matches any size on that axis."""
    for size in expected_shape:
        if size is not None and not isinstance(size, int):
            raise TypeError(f"expected_shape entries must be int or None, got {size!r} in {tuple(expected_shape)}")
    actual = tuple(tensor.shape)
    expected = tuple(expected_shape)
    wanted = "(" + ", ".join("any" if s is None else str(s) for s in expected) + ")"
    if len(actual) != len(expected):
        raise AssertionError(
            f"{name} has shape {actual} ({len(actual)} dimensions), expected {wanted} ({len(expected)} dimensions)"
        )
    wrong = [
        (axis, got, want) for axis, (got, want) in enumerate(zip(actual, expected)) if want is not None and got != want
    ]
    if wrong:
        axes = "; ".join(f"axis {axis} is {got}, expected {want}" for axis, got, want in wrong)
        raise AssertionError(f"{name} has shape {actual}, expected {wanted}: {axes}")


def assert_finite(tensor: Any, name: str = "tensor") -> None:
    """No NaN or Inf in `tensor` (or in any tensor of a tuple/list/dict of them).

    The message names the first offending index, its value and how many values are bad.
    Integer and bool tensors are always finite.
    """
    for label, value in _flatten(tensor, name):
        summary = _nonfinite_summary(value)
        if summary:
            raise AssertionError(
                f"{label} has {summary}. Look upstream for a division by zero (a std or count of an empty "
                "or length-1 input), log/sqrt of a non-positive value, a softmax over a fully masked row, "
                "or an overflow (float16 tops out at 65504)."
            )


# --- Model logic --------------------------------------------------------------------------------


def _expand_mask(mask: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`mask` (leading axes of `tensor`) broadcast to the full shape of `tensor`."""
    extra = tensor.dim() - mask.dim()
    return mask.reshape(tuple(mask.shape) + (1,) * extra).expand(tensor.shape)


def _covers(mask: torch.Tensor, tensor: torch.Tensor) -> bool:
    return tensor.dim() >= mask.dim() and tuple(tensor.shape[: mask.dim()]) == tuple(mask.shape)


def _default_perturbation(value: torch.Tensor, masked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Values far from the real ones (floats) or random ids from the observed range (integers)."""
    if value.dtype.is_floating_point:
        real = value[~masked]
        scale = 10.0 * float(real.abs().max()) + 1.0 if real.numel() else 10.0
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float32) * scale
        return torch.where(masked, noise.to(value.dtype), value)
    if value.dtype == torch.bool:
        return torch.where(masked, ~value, value)
    low, high = int(value.min()), int(value.max()) + 1
    if high - low < 2:
        raise ValueError(
            f"cannot perturb an integer input whose values are all {low}; pass perturb=fn(value, masked, generator)"
        )
    noise = torch.randint(low, high, value.shape, generator=generator, dtype=value.dtype)
    return torch.where(masked, noise, value)


def assert_mask_invariance(
    fn: Callable,
    inputs: Any,
    mask: torch.Tensor,
    *,
    target: str | int | None = None,
    perturb: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    output_mask: torch.Tensor | None = None,
    trials: int = 3,
    seed: int = 0,
    atol: float = 1e-6,
    rtol: float = 0.0,
    name: str = "output",
) -> None:
    """Outputs at real positions do not change when masked-out (padded) input positions change.

    fn: the model (or any callable), called as fn(**inputs) for a dict, fn(*inputs) for a tuple.
    mask: bool, True where an input position is real; its shape is the leading axes of the input
        to perturb, e.g. (batch, seq) for tokens (batch, seq) or series (batch, seq, features).
    target: which input to perturb (dict key or tuple index). Default: the first tensor whose
        leading axes match mask and which is not the mask itself.
    perturb: fn(value, masked, generator) -> new value; `masked` is True where to change it.
        Default: floats get noise ten times larger than the real values, integers random ids
        from their observed range.
    output_mask: which output values must stay put. Default: outputs whose leading axes match
        `mask` (per-position features) are compared at real positions only; any other output
        (pooled logits) is compared whole.
    atol, rtol: allowed change; a masked model is usually exact, so the default is tight.

    Changing padded values cannot reveal a leak behind a layer that zeroes padding first (a pooling
    or a last-step gather that runs over padded steps still sees the same zeros): also check that
    the amount of padding does not matter, e.g. a row alone and unpadded vs inside the batch.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real position), got {mask.dtype}")
    if not bool((~mask).any()):
        raise ValueError("mask has no masked-out positions: nothing to perturb, the check would prove nothing")
    if isinstance(inputs, torch.Tensor):
        inputs, target, wrap = [inputs], 0, "tensor"
    elif isinstance(inputs, Mapping):
        inputs, wrap = dict(inputs), "dict"
    else:
        inputs, wrap = list(inputs), "sequence"
    keys = list(inputs) if wrap == "dict" else list(range(len(inputs)))
    if target is None:
        candidates = [
            k
            for k in keys
            if isinstance(inputs[k], torch.Tensor) and inputs[k] is not mask and _covers(mask, inputs[k])
        ]
        if not candidates:
            raise ValueError(f"no input has leading axes {tuple(mask.shape)} like the mask; pass target=")
        target = candidates[0]
    original = inputs[target]
    if not _covers(mask, original):
        raise ValueError(
            f"input {target!r} has shape {tuple(original.shape)}; its leading axes must be the mask's {tuple(mask.shape)}"
        )
    masked = _expand_mask(~mask.to(original.device), original)
    perturb = perturb or _default_perturbation

    def run(values):
        args = values[0] if wrap == "tensor" else values
        with torch.no_grad():
            return _snapshot(_call(fn, args), name)

    def moved(before: torch.Tensor, after: torch.Tensor, compared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(|after - before| where compared, else 0; whether that exceeds the tolerance)."""
        before64, after64 = before.double(), after.double()
        same = (before64 == after64) | (torch.isnan(before64) & torch.isnan(after64))
        diff = (after64 - before64).abs().nan_to_num(nan=float("inf"))
        diff = torch.where(compared & ~same, diff, torch.zeros_like(diff))
        return diff, diff > atol + rtol * before64.abs().nan_to_num(nan=0.0, posinf=0.0)

    baseline = run(inputs)
    # A model that answers differently on the same inputs would read as a padding leak below.
    for (label, first), (_, again) in zip(baseline, run(inputs)):
        diff, bad = moved(first, again, torch.ones_like(first, dtype=torch.bool))
        if bool(bad.any()):
            raise AssertionError(
                f"{label} differs between two runs on the same, unperturbed inputs (by up to {float(diff.max()):.3g}), "
                "so padding invariance cannot be judged: the model keeps state between calls or draws random "
                "numbers (dropout left on, a parameter updated in forward); see assert_deterministic"
            )
    generator = torch.Generator().manual_seed(seed)
    for trial in range(1, trials + 1):
        changed = perturb(original, masked, generator)
        if torch.equal(changed[masked], original[masked]):
            raise ValueError(f"perturbation left input {target!r} unchanged at the masked positions; pass perturb=")
        if not torch.equal(changed[~masked], original[~masked]):
            raise ValueError(f"perturbation changed input {target!r} at real positions; it must touch masked ones only")
        perturbed = run(
            {**inputs, target: changed}
            if wrap == "dict"
            else [changed if k == target else v for k, v in enumerate(inputs)]
        )
        for (label, before), (_, after) in zip(baseline, perturbed):
            if output_mask is not None:
                compared = _expand_mask(output_mask.cpu(), before)
            elif _covers(mask, before):
                compared = _expand_mask(mask.cpu(), before)
            else:
                compared = torch.ones_like(before, dtype=torch.bool)
            diff, bad = moved(before, after, compared)
            if bool(bad.any()):
                worst = _index(int(diff.reshape(-1).argmax()), diff.shape)
                raise AssertionError(
                    f"{label} changed when masked-out positions of input {target!r} were perturbed "
                    f"(trial {trial} of {trials}): {int(bad.sum())} of {int(compared.sum())} compared values moved by "
                    f"more than atol={atol:g} + rtol={rtol:g}*|value|; worst difference {float(diff[worst]):.3g} at "
                    f"index {worst} (before {_value(before, worst)}, after {_value(after, worst)}). Padding leaks into the "
                    "result: check that the mask reaches every step that mixes positions (attention keys, pooling, "
                    "normalization statistics, the gather of the last valid step)."
                )


def real_tokens(low: int, high: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]:
    """A `perturb` for assert_mask_invariance on token ids: padded positions get random ids in
    [low, high), real tokens rather than the pad id, so that a leak cannot hide behind an
    embedding that zeroes the pad id."""

    def perturb(value: torch.Tensor, masked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.where(masked, torch.randint(low, high, value.shape, generator=generator), value)

    return perturb


def assert_mask_is_used(
    fn: Callable,
    inputs: Mapping[str, Any],
    mask: torch.Tensor,
    *,
    mask_input: str = "mask",
    perturb: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    atol: float = 1e-4,
    name: str = "output",
) -> None:
    """The other side of assert_mask_invariance: with the input `mask_input` saying every position
    is real, perturbing the positions `mask` marks as padding does move the output. So the model
    reads its mask (without it padding would leak in), and the invariance check can fail."""
    unmasked = {**inputs, mask_input: torch.ones_like(inputs[mask_input])}
    target = next(k for k, v in inputs.items() if k != mask_input and isinstance(v, torch.Tensor) and _covers(mask, v))
    try:
        assert_mask_invariance(fn, unmasked, mask, target=target, perturb=perturb, atol=atol, name=name)
    except AssertionError as e:
        if "changed when masked-out positions" in str(e):
            return
        raise
    raise AssertionError(
        f"{name} did not change when the padded positions of input {target!r} were perturbed with {mask_input!r} "
        "saying they are real: the mask is not what keeps padding out, so a passing assert_mask_invariance proves nothing"
    )


def assert_gradients_finite(model: torch.nn.Module, loss: torch.Tensor) -> None:
    """loss.backward() gives every trainable parameter of `model` a gradient, and all are finite.

    Clears the parameters' existing gradients first, so `loss` alone is checked. The loss must be
    a scalar computed from `model` with autograd on.
    """
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss must be a scalar tensor, got {type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
    if not loss.requires_grad:
        raise AssertionError(
            "loss does not require grad: no parameter of the model reached it (computed under torch.no_grad(), "
            "detached, or the model's parameters are all frozen)"
        )
    summary = _nonfinite_summary(loss.reshape(()))
    if summary:
        raise AssertionError(f"loss is not finite ({summary}); the gradients would be meaningless")
    model.zero_grad(set_to_none=True)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("model has no trainable parameters")
    missing = [n for n, p in trainable if p.grad is None]
    if missing:
        raise AssertionError(
            f"{len(missing)} of {len(trainable)} trainable parameters received no gradient: {', '.join(missing)}. "
            "They take no part in computing the loss (a module built but never called, a skipped branch, a "
            ".detach() or an integer cast); freeze them with requires_grad=False if that is intended."
        )
    for param_name, param in trainable:
        summary = _nonfinite_summary(param.grad)
        if summary:
            raise AssertionError(
                f"gradient of {param_name} has {summary}. The forward pass is finite, so look for an operation whose "
                "derivative is not: sqrt or norm at 0, a division by a value that can be 0, log near 0, or "
                "masked_fill with -inf on a row that is fully masked."
            )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:  # numpy is optional here
        pass


_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit pattern as integers: equal bits compare equal, NaN and -0.0 included."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype.is_floating_point and not tensor.dtype.is_complex:
        return tensor.view(_SAME_SIZE_INT[tensor.element_size()])
    return tensor


def assert_deterministic(
    fn: Callable[[], Any],
    runs: int = 2,
    *,
    seed: int = 0,
    deterministic_algorithms: bool = False,
    name: str = "output",
) -> None:
    """fn() returns bitwise-equal outputs on every run when seeded the same way.

    Before each run, Python's, NumPy's and torch's (CPU and CUDA) global generators are seeded with
    `seed`. fn should do the whole job under test, e.g. build the model and run a forward pass, or
    train a few steps and return the weights. deterministic_algorithms=True runs it under
    torch.use_deterministic_algorithms(True) (on CUDA, also set CUBLAS_WORKSPACE_CONFIG=:4096:8
    before CUDA starts, as `bazel test --config=gpu` does) and restores the setting afterwards.
    """
    if runs < 2:
        raise ValueError(f"runs must be at least 2, got {runs}")
    previous = torch.are_deterministic_algorithms_enabled()
    results = []
    try:
        if deterministic_algorithms:
            torch.use_deterministic_algorithms(True)
        for _ in range(runs):
            _seed_everything(seed)
            results.append(_snapshot(fn(), name))
    finally:
        torch.use_deterministic_algorithms(previous)
    first = results[0]
    hint = (
        "Usual causes: randomness not driven by torch's global generator (a Generator created without a seed, "
        "time-based seeds), non-deterministic kernels (deterministic_algorithms=True; on CUDA also "
        "CUBLAS_WORKSPACE_CONFIG=:4096:8), or state kept between calls (a cache, a counter, batchnorm in train mode)."
    )
    for run, result in enumerate(results[1:], start=2):
        if [label for label, _ in result] != [label for label, _ in first]:
            raise AssertionError(
                f"run {run} returned outputs {[l for l, _ in result]}, run 1 returned {[l for l, _ in first]}"
            )
        for (label, a), (_, b) in zip(first, result):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise AssertionError(
                    f"{label}: run 1 gave {a.dtype} {tuple(a.shape)}, run {run} gave {b.dtype} {tuple(b.shape)} with the same seed ({seed})"
                )
            differs = _bits(a) != _bits(b)
            if bool(differs.any()):
                a_cpu, b_cpu = a.detach().cpu(), b.detach().cpu()
                if a_cpu.dtype.is_floating_point:
                    diff = (a_cpu.double() - b_cpu.double()).abs().nan_to_num(nan=float("inf"))
                    where = _index(
                        int(torch.where(differs, diff, torch.zeros_like(diff)).reshape(-1).argmax()), a.shape
                    )
                    what = f"largest difference {float(diff[where]):.3g}"
                else:
                    where = _index(int(differs.reshape(-1).nonzero()[0]), a.shape)
                    what = "first difference"
                raise AssertionError(
                    f"{label} differs between run 1 and run {run} with the same seed ({seed}): {int(differs.sum())} of "
                    f"{a.numel()} values are not bitwise equal; {what} at index {where} "
                    f"(run 1: {_value(a_cpu, where)}, run {run}: {_value(b_cpu, where)}). {hint}"
                )


def assert_seeded(forward: Callable[[int], Any], seeds: tuple[int, int] = (7, 8), *, name: str = "output") -> None:
    """forward(seed) (build the model from `seed`, run it) is bitwise the same for the same seed and
    differs between two seeds: the seed, and nothing else, decides the model's initialization."""
    a, b = seeds
    assert_deterministic(lambda: forward(a), name=name)
    first, other = _snapshot(forward(a), name), _snapshot(forward(b), name)
    if [label for label, _ in first] == [label for label, _ in other] and all(
        x.shape == y.shape and x.dtype == y.dtype and bool((_bits(x) == _bits(y)).all()) for (_, x), (_, y) in zip(first, other)
    ):
        raise AssertionError(
            f"{name}: seeds {a} and {b} give bitwise-identical results: the seed does not reach the model's initialization"
        )


def assert_seeded_model(build: Callable[[int], Any], inputs: Any, seeds: tuple[int, int] = (7, 8), *, name: str = "output") -> None:
    """assert_seeded for the model `build(seed)` returns, run on `inputs` without gradients
    (fn(**inputs) for a dict, fn(*inputs) for a tuple): the same output for the same seed, another
    for another seed."""

    def forward(seed: int) -> Any:
        with torch.no_grad():
            return _call(build(seed), inputs)

    assert_seeded(forward, seeds, name=name)


def assert_training_deterministic(spec: Any, steps: int = 3) -> None:
    """`steps` steps of the spec's training from a new model, twice: a bitwise-equal state_dict
    (weights and buffers such as batchnorm's running statistics)."""
    short = spec.with_config({"steps": steps})

    def train() -> dict:
        model = short.new_model()
        short.train(model, short.config)
        return model.state_dict()

    assert_deterministic(train, name="state_dict")


# --- Numerics -----------------------------------------------------------------------------------


Comparison = numerics.Comparison
_compare = numerics.compare


def _tolerance(
    dtype: torch.dtype, autocast: bool, rtol: float | None, atol: float | None, expected: torch.Tensor
) -> tuple[float, float]:
    """(rtol, atol) to use: explicit values win; autocast's default atol scales with `expected`."""
    default_rtol, default_atol = default_tolerance(dtype, autocast=autocast)
    if atol is None and autocast and dtype != torch.float32:
        atol = _autocast_atol(default_atol, expected)
    return (default_rtol if rtol is None else rtol, default_atol if atol is None else atol)


def _autocast_atol(base: float, expected: torch.Tensor) -> float:
    """base * max(1, largest finite |expected|): autocast error is a share of the output's scale."""
    finite = expected.detach().abs()[torch.isfinite(expected.detach())]
    scale = float(finite.max()) if finite.numel() else 1.0
    return base * max(1.0, scale)


def assert_close(
    actual: Any,
    expected: Any,
    *,
    dtype: torch.dtype | str | None = None,
    autocast: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    name: str = "output",
) -> list[Comparison]:
    """|actual - expected| <= atol + rtol * |expected| everywhere, with tolerances chosen by dtype.

    dtype: the precision `actual` was computed in (default: actual's dtype); with autocast=True,
        the autocast dtype of a run compared against a float32 reference, and the default atol is
        scaled by max(1, max |expected|). rtol/atol override default_tolerance(dtype, autocast)
        one at a time.
    The message gives the worst absolute and the worst relative error, each with its index and the
    two values. Returns one Comparison per output tensor (worst errors even when it passes).
    """
    actual_items, expected_items = _flatten(actual, name), _flatten(expected, name)
    if [l for l, _ in actual_items] != [l for l, _ in expected_items]:
        raise AssertionError(
            f"outputs {[l for l, _ in actual_items]} do not match expected {[l for l, _ in expected_items]}"
        )
    comparisons = []
    for (label, a), (_, e) in zip(actual_items, expected_items):
        precision = _as_dtype(dtype) if dtype is not None else a.dtype
        r, t = _tolerance(precision, autocast, rtol, atol, e)
        comparison = _compare(a, e, r, t, label)
        if not comparison.ok:
            mode = (
                f"{_dtype_name(precision)} under autocast vs a float32 reference"
                if autocast
                else _dtype_name(precision)
            )
            raise AssertionError(
                comparison.describe(f" ({mode})") + ". Many small errors suggest the tolerance is too tight for this "
                "dtype (pass rtol=/atol=); a few large ones usually mean a real difference in the computation."
            )
        comparisons.append(comparison)
    return comparisons


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: only CUDA's flag is queryable this way
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _on_device(model_fn: Callable, device: torch.device) -> Callable:
    """A copy of an nn.Module moved to `device` (the caller's module is left where it is)."""
    if isinstance(model_fn, torch.nn.Module):
        return copy.deepcopy(model_fn).to(device)
    return model_fn


def dtype_sweep(
    model_fn: Callable,
    inputs: Any,
    dtypes: Iterable[str | torch.dtype] = ("float32", "bfloat16", "float16"),
    device: str | torch.device = "cpu",
    *,
    rtol: float | None = None,
    atol: float | None = None,
    name: str = "output",
) -> dict[str, list[Comparison]]:
    """Runs model_fn under torch.autocast for each dtype and compares with the float32 run.

    model_fn: an nn.Module (copied to `device`; put it in eval mode first) or any callable taking
        the inputs (fn(**inputs) for a dict). Inputs are moved to `device`.
    "float32" reruns without autocast and must match the reference within float32 tolerances; every
    other dtype must match within default_tolerance(dtype, autocast=True), its atol scaled by
    max(1, max |reference|), unless rtol/atol are given.
    A dtype autocast does not support on `device` is an error rather than a silent float32 run.
    Every dtype is tried; one AssertionError lists all that failed. Returns the comparisons by dtype.
    """
    device = torch.device(device)
    fn = _on_device(model_fn, device)
    inputs = _map_tensors(inputs, lambda t: t.to(device))
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        reference = _snapshot(_call(fn, inputs), name)
    report: dict[str, list[Comparison]] = {}
    failures = []
    for requested in dtypes:
        dtype = _as_dtype(requested)
        if _dtype_name(dtype) not in numerics.TOLERANCES["autocast"]:
            raise ValueError(
                f"dtype_sweep: {_dtype_name(dtype)} is not an autocast dtype; use float32, bfloat16 or float16"
            )
        if dtype == torch.float32:
            context = torch.autocast(device.type, enabled=False)
        else:
            context = torch.autocast(device.type, dtype=dtype)
        with torch.no_grad(), warnings.catch_warnings():
            # An unsupported dtype makes torch warn and run in float32: turned into an error below.
            warnings.filterwarnings("ignore", message=".*autocast.*", category=UserWarning)
            with context:
                if dtype != torch.float32 and not _autocast_enabled(device.type):
                    raise ValueError(
                        f"dtype_sweep: autocast to {_dtype_name(dtype)} is not supported on {device.type} "
                        f"(torch {torch.__version__}); drop it from dtypes for this device"
                    )
                outputs = _snapshot(_call(fn, inputs), name)
        comparisons = []
        for (label, out), (_, ref) in zip(outputs, reference):
            r, t = _tolerance(dtype, True, rtol, atol, ref)
            comparison = _compare(out.float(), ref, r, t, label)
            comparisons.append(comparison)
            if comparison.ok:
                continue
            if dtype == torch.float32:
                failures.append(
                    comparison.describe(f" (a second float32 run on {device.type}, no autocast)")
                    + " - the model does not give the same answer twice: it keeps state between calls or draws "
                    "random numbers (see assert_deterministic)"
                )
            else:
                failures.append(comparison.describe(f" (autocast {_dtype_name(dtype)} on {device.type} vs float32)"))
        report[_dtype_name(dtype)] = comparisons
    if failures:
        raise AssertionError(
            "dtype sweep failed for " + "; ".join(failures) + ". If the error is inherent to the dtype, pass looser "
            "rtol=/atol=; otherwise look for an op that loses precision under autocast (a large sum, a cancellation, "
            "a softmax or norm computed in low precision)."
        )
    return report


@contextlib.contextmanager
def _tf32_disabled():
    """cuBLAS and cuDNN TF32 off (cuDNN's is on by default), restored on exit."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def assert_cpu_cuda_parity(
    model: torch.nn.Module,
    inputs: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    device: str | torch.device = "cuda",
    name: str = "output",
) -> list[Comparison]:
    """The model gives the same float32 outputs on CUDA as on the CPU, with TF32 off.

    Sets torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32 to False for the
    duration (cuDNN's TF32 is on by default and would silently round convolutions to 10-bit
    mantissas) and restores both afterwards. The model is copied to each device; put it in eval mode
    first (dropout draws differ between devices). Tolerances: default_tolerance(float32) unless given.
    `device` exists so the check itself can be tested on a CPU-only machine.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "assert_cpu_cuda_parity needs a CUDA device and none is visible "
            f"(torch {torch.__version__}); decorate the test with @checks.cuda_test"
        )
    with _tf32_disabled(), torch.no_grad():
        cpu_inputs = _map_tensors(inputs, lambda t: t.cpu())
        expected = _call(_on_device(model, torch.device("cpu")), cpu_inputs)
        actual = _call(_on_device(model, device), _map_tensors(inputs, lambda t: t.to(device)))
        actual = _map_tensors(actual, lambda t: t.cpu())
    hint = " The model is in training mode: use model.eval()." if getattr(model, "training", False) else ""
    try:
        return assert_close(
            actual, expected, dtype=torch.float32, rtol=rtol, atol=atol, name=f"{name} on {device.type} vs cpu"
        )
    except AssertionError as e:
        raise AssertionError(f"{e}{hint}") from None


def cuda_test(test: Callable) -> Callable:
    """Marks a test `gpu` (only model_test's `_gpu` variant selects it) and skips it where no CUDA
    device is visible, so a plain `pytest models/` passes on a CPU machine. The `_gpu` variant
    fails up front when CUDA is missing, so the skip cannot hide a broken GPU machine under Bazel.
    """
    import pytest  # imported here: the rest of this module works without pytest

    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return pytest.mark.gpu(skip(test))
