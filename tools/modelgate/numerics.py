"""How two tensors are compared, and with which tolerances: the one engine behind `checks`
(model-logic tests), `golden` (golden data, the gate, the service's warm-up) and the gate's ONNX
parity check.

A value passes when |actual - expected| <= atol + rtol * |expected|: atol plus rtol, never rtol
alone, since relative errors blow up where the reference is near zero. NaN in both, or the same
infinity in both, counts as equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

# Every dtype modelgate names, by its name (a model's inputs may declare some of them:
# modelgate.spec.INPUT_DTYPES); FLOAT_DTYPES are the ones golden data has tolerances for.
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float64", "float32", "bfloat16", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# Every default tolerance, by what is compared and the dtype of the result (all rows ordered
# atol, rtol). Where two rows differ for one dtype, it is because they compare different things.
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    # Two results computed in the same dtype (two kernels, two devices, two runs):
    # torch.testing.assert_close's defaults.
    "direct": {
        "float64": Tolerance(atol=1e-7, rtol=1e-7),
        "float32": Tolerance(atol=1e-5, rtol=1.3e-6),
        "bfloat16": Tolerance(atol=1e-5, rtol=1.6e-2),
        "float16": Tolerance(atol=1e-5, rtol=1e-3),
    },
    # A forward under torch.autocast(dtype) against the float32 reference of the same model. A
    # low-precision layer's error grows with the size of the values it adds up, so atol is per
    # unit of the output's scale, max(1, max |expected|) (checks multiplies it in).
    # Measured, as a share of that scale: on an H200 (outputs of order one) bf16 2.1e-3 abs with up
    # to 0.25 rel near zero, fp16 1.5e-4 abs / 2e-2 rel; on this CPU, the trained models/ (logits
    # up to 9.3, 512 held-out inputs) bf16 up to 7.2e-3 and fp16 up to 1.1e-3 of the scale: about
    # one unit in the last place (bf16 2^-7, fp16 2^-10) of the largest output. atol is 2.5 (bf16)
    # and 2 (fp16) of those units; rtol is two units (bf16: torch.testing's 1.6e-2).
    "autocast": {
        "float32": Tolerance(atol=1e-5, rtol=1.3e-6),  # no autocast: the reference itself
        "bfloat16": Tolerance(atol=2e-2, rtol=1.6e-2),
        "float16": Tolerance(atol=2e-3, rtol=2e-3),
    },
    # What a new golden.json gets (golden.write), per output: saved weights run on this machine
    # (or on CUDA, or under autocast) against expected outputs made on another machine, a fixed
    # atol (no output scale). float32 covers inference across x86-64 CPUs and CUDA with TF32 off
    # (about 1e-6 apart); golden.json is reviewed data, so a model may tighten or loosen it.
    "golden": {
        "float32": Tolerance(atol=1e-5, rtol=1e-4),
        "bfloat16": Tolerance(atol=2e-2, rtol=5e-2),
        "float16": Tolerance(atol=2e-3, rtol=2e-2),
    },
    # The gate: onnxruntime on model.onnx against torch on the same saved weights.
    "onnx": {
        "float32": Tolerance(atol=1e-4, rtol=1e-3),
    },
}


def tolerance(kind: str, dtype: str) -> Tolerance:
    """The default tolerance for comparing results of `kind` computed in `dtype` (a name)."""
    try:
        return TOLERANCES[kind][dtype]
    except KeyError:
        raise ValueError(f"no default {kind} tolerance for {dtype}; pass rtol= and atol= explicitly") from None


# --- the engine -------------------------------------------------------------------------------


def index_of(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    """The index tuple of element `flat` of a contiguous tensor of `shape`."""
    index = []
    for size in reversed(shape):
        flat, rest = divmod(flat, size)
        index.append(rest)
    return tuple(reversed(index))


def value_text(tensor: torch.Tensor, index: tuple[int, ...]) -> str:
    value = tensor[index].item() if tensor.dim() else tensor.item()
    return f"{value:.7g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class NonFinite:
    """The NaN and infinite values of a tensor: how many of each, and the first one."""

    count: int
    nan: int
    posinf: int
    neginf: int
    first: tuple[int, ...]
    first_value: str


def nonfinite(tensor: torch.Tensor) -> NonFinite | None:
    """None where every value is finite (integer and bool tensors always are)."""
    if not (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
        return None
    values = tensor.detach().cpu()
    bad = ~torch.isfinite(values)
    count = int(bad.sum())
    if not count:
        return None
    first = index_of(int(bad.reshape(-1).nonzero()[0]), values.shape)
    return NonFinite(
        count=count,
        nan=int(torch.isnan(values).sum()),
        posinf=int((values == float("inf")).sum()),
        neginf=int((values == float("-inf")).sum()),
        first=first,
        first_value=value_text(values, first),
    )


@dataclass(frozen=True)
class Comparison:
    """How `actual` compares with `expected`: counts, and where the worst errors are."""

    name: str
    rtol: float
    atol: float
    numel: int
    mismatched: int
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_abs_values: tuple[str, str]  # (actual, expected) at max_abs_index
    max_rel: float
    max_rel_index: tuple[int, ...]
    max_rel_values: tuple[str, str]

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def describe(self, context: str = "") -> str:
        head = f"{self.name}{context}: "
        if self.ok:
            head += f"all {self.numel} values within"
        else:
            head += f"{self.mismatched} of {self.numel} values differ beyond"
        return (
            f"{head} atol={self.atol:.2g} + rtol={self.rtol:.2g}*|expected|; "
            f"worst abs error {self.max_abs:.3g} at index {self.max_abs_index} "
            f"(actual {self.max_abs_values[0]}, expected {self.max_abs_values[1]}); "
            f"worst rel error {self.max_rel:.3g} at index {self.max_rel_index} "
            f"(actual {self.max_rel_values[0]}, expected {self.max_rel_values[1]})"
        )


class ShapeMismatch(AssertionError):
    """`compare` was given tensors of two shapes; the message names both."""

    def __init__(self, name: str, actual: tuple[int, ...], expected: tuple[int, ...]):
        super().__init__(f"{name}: shape {actual}, expected {expected}")
        self.actual, self.expected = actual, expected


def compare(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, name: str = "output") -> Comparison:
    """Compares element by element in float64 on the CPU; raises ShapeMismatch for two shapes."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise ShapeMismatch(name, tuple(actual.shape), tuple(expected.shape))
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    a, e = actual.double(), expected.double()
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    abs_err = torch.where(same, torch.zeros_like(a), (a - e).abs().nan_to_num(nan=float("inf")))
    rel_err = torch.where(same, torch.zeros_like(a), abs_err / e.abs()).nan_to_num(nan=float("inf"))
    bad = abs_err > atol + rtol * e.abs().nan_to_num(nan=0.0, posinf=0.0)
    if not a.numel():
        return Comparison(name, rtol, atol, 0, 0, 0.0, (), ("", ""), 0.0, (), ("", ""))
    abs_at = index_of(int(abs_err.reshape(-1).argmax()), a.shape)
    rel_at = index_of(int(rel_err.reshape(-1).argmax()), a.shape)
    return Comparison(
        name=name,
        rtol=rtol,
        atol=atol,
        numel=a.numel(),
        mismatched=int(bad.sum()),
        max_abs=float(abs_err[abs_at]),
        max_abs_index=abs_at,
        max_abs_values=(value_text(actual, abs_at), value_text(expected, abs_at)),
        max_rel=float(rel_err[rel_at]),
        max_rel_index=rel_at,
        max_rel_values=(value_text(actual, rel_at), value_text(expected, rel_at)),
    )
