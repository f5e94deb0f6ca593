"""What a model package tells modelgate about itself: one ModelSpec per model.

Every model lives in models/<name>/ and defines `SPEC` in models/<name>/spec.py. The export
action, the golden tests, the release gate and the inference service all work from it, so a
model is described once:

- how to build a fresh instance from its hyperparameters (`build`),
- how to train or initialize it deterministically on data it generates itself (`train`), unless
  its weights come from a pinned checkpoint (models/<name>/checkpoint.json; modelgate.checkpoint),
  whose tensors `load_checkpoint` may rename to the model's,
- its forward signature (`inputs`, `outputs`), for ONNX export (every None axis dynamic) and for
  the service's JSON schema,
- a small, fixed set of golden inputs (`golden_inputs`),
- held-out evaluation (`evaluate`) and the floor and regression budget of each metric (`metrics`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from modelgate.numerics import DTYPES

# The dtypes a model's input may declare: names in numerics.DTYPES, the one table of dtype names.
INPUT_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")


@dataclass(frozen=True)
class TensorSpec:
    """One input of the forward pass. `shape` uses None for the batch (and any dynamic) axis."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    # For integer inputs: values must lie in [low, high).
    low: float | None = None
    high: float | None = None

    def __post_init__(self):
        if self.dtype not in INPUT_DTYPES:
            raise ValueError(f"TensorSpec {self.name}: unknown dtype {self.dtype!r}; expected one of {sorted(INPUT_DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def check(self, value: torch.Tensor) -> None:
        """Raises ValueError, naming the input, when `value` does not fit this spec."""
        if value.dtype != self.torch_dtype:
            raise ValueError(f"input {self.name!r}: dtype {str(value.dtype).removeprefix('torch.')}, expected {self.dtype}")
        if value.dim() != len(self.shape):
            raise ValueError(f"input {self.name!r}: {value.dim()} dimensions, expected {len(self.shape)} {self.shape_text()}")
        for axis, (got, want) in enumerate(zip(value.shape, self.shape)):
            if want is not None and got != want:
                raise ValueError(f"input {self.name!r}: size {got} on axis {axis}, expected {self.shape_text()}")
        if self.low is not None and value.numel() and (value.min() < self.low or value.max() >= self.high):
            raise ValueError(f"input {self.name!r}: values must lie in [{self.low}, {self.high})")

    def shape_text(self) -> str:
        return "(" + ", ".join("N" if d is None else str(d) for d in self.shape) + ")"


@dataclass(frozen=True)
class MetricGate:
    """A release gate on one evaluation metric.

    floor: the release does not build below it (above it for lower-is-better metrics).
    max_regression: promotion to a channel refuses a drop larger than this against the build the
        channel points at now (unless forced).
    """

    floor: float
    max_regression: float
    higher_is_better: bool = True

    def passes_floor(self, value: float) -> bool:
        return value >= self.floor if self.higher_is_better else value <= self.floor


@dataclass(frozen=True)
class TextInput:
    """A text front end (a tokenizer): files that ship in the release bundle, covered by its
    digests and signature, and how to turn texts into the model's inputs with them.

    files: file names in the bundle (model_package(bundle_files = [...]) puts them there).
    load: the bundle directory -> a function from a list of texts to the model's named inputs;
        it raises ValueError, with one line naming the text, for a text it refuses.
    max_tokens: the longest text the model takes, in tokens; over_length: what happens beyond it
        ("refused"), for GET /schema.
    """

    files: tuple[str, ...]
    load: Callable[[object], Callable[[list[str]], dict[str, torch.Tensor]]]
    max_tokens: int
    over_length: str = "refused"
    # The same front end as data, for the service (which runs no model code): `tokenizer` is the
    # bundle file the `tokenizers` library reads; its ids go to `ids_input` right-padded with
    # `pad_id`, a bool mask of the real tokens to `mask_input` (modelgate.serve.text). The gate
    # checks that it gives the same inputs as `load` before a build can be released.
    tokenizer: str | None = None
    pad_id: int = 0
    ids_input: str = "tokens"
    mask_input: str = "mask"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: Mapping[str, object]
    build: Callable[[Mapping[str, object]], torch.nn.Module]
    # None for a model whose weights only ever come from a pinned checkpoint.
    train: Callable[[torch.nn.Module, Mapping[str, object]], Mapping[str, float]] | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    golden_inputs: Callable[[], dict[str, torch.Tensor]]
    evaluate: Callable[[torch.nn.Module, Mapping[str, object]], dict[str, float]]
    metrics: Mapping[str, MetricGate] = field(default_factory=dict)
    # For a pinned checkpoint whose tensor names are not the model's (a published model): maps
    # the checkpoint's {name: tensor} to the model's state_dict names. Loading stays strict.
    load_checkpoint: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    # Inputs of other sizes on the dynamic (None) axes, for the gate's ONNX check, which runs every
    # dynamic axis at two lengths at least. None: the golden inputs cut to about half on each
    # dynamic axis in turn (fine where a prefix of a valid input is valid: rows, padded sequences).
    shape_variants: Callable[[], list[dict[str, torch.Tensor]]] | None = None
    # For a model that also takes text (POST /predict {"texts": [...]}): its tokenizer. Token ids
    # stay accepted as inputs.
    text: TextInput | None = None

    def with_config(self, overrides: Mapping[str, object]) -> "ModelSpec":
        """This spec with some hyperparameters replaced; unknown keys are an error."""
        unknown = sorted(set(overrides) - set(self.config))
        if unknown:
            raise ValueError(f"model {self.name}: unknown hyperparameters {unknown}; known: {sorted(self.config)}")
        merged = dict(self.config)
        for key, value in overrides.items():
            merged[key] = type(self.config[key])(value) if self.config[key] is not None else value
        return ModelSpec(**{**self.__dict__, "config": merged})

    def new_model(self) -> torch.nn.Module:
        return self.build(self.config)

    def forward(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs the model on named inputs and names its outputs."""
        missing = [t.name for t in self.inputs if t.name not in inputs]
        if missing:
            raise ValueError(f"model {self.name}: missing inputs {missing}")
        result = model(*(inputs[t.name] for t in self.inputs))
        if isinstance(result, torch.Tensor):
            result = (result,)
        if len(result) != len(self.outputs):
            raise ValueError(f"model {self.name}: forward returned {len(result)} outputs, spec names {len(self.outputs)}")
        return dict(zip(self.outputs, result))


def load_spec(model: str) -> ModelSpec:
    """The SPEC of models/<model>/spec.py."""
    try:
        module = importlib.import_module(f"models.{model}.spec")
    except ModuleNotFoundError as e:
        raise LookupError(f"no model named {model!r} (models/{model}/spec.py not found: {e})") from None
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, ModelSpec):
        raise LookupError(f"models/{model}/spec.py defines no SPEC = ModelSpec(...)")
    return spec
