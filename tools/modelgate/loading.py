"""Loading saved weights and checking them on golden data: what the release gate and the inference
service both do before they trust a build.

torch, safetensors and modelgate.golden only: the service imports this and not the export path,
so it needs no onnx, onnxruntime or onnxscript.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from modelgate import golden as golden_lib
from modelgate.errors import WeightsError
from modelgate.spec import ModelSpec


def load_weights(spec: ModelSpec, path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """A fresh model with the saved weights loaded (strictly: every tensor, no extras), in eval mode."""
    model = spec.new_model()
    state = load_file(str(path), device="cpu")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{path}: weights do not fit {spec.name}: missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.to(device).eval()


@dataclass(frozen=True)
class GoldenCheck:
    """A model run on its golden inputs and compared, output by output, with the expected outputs."""

    golden: golden_lib.Golden
    reports: list[golden_lib.OutputReport]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def failures(self) -> list[golden_lib.OutputReport]:
        return [r for r in self.reports if not r.passed]


def check_golden(spec: ModelSpec, model: torch.nn.Module, golden_dir: str | Path, *, rounds: int = 1, dtype: str = "float32") -> GoldenCheck:
    """Runs the golden inputs `rounds` times (a warm-up) and compares the last outputs with the
    golden data in `golden_dir` (golden/<model>/, or a release bundle: the same file names).

    Raises GoldenError for golden data that cannot be used; an exception of the model's own
    (a forward that fails on its inputs) propagates."""
    data = golden_lib.load(golden_dir, spec.name, [t.name for t in spec.inputs], spec.outputs)
    with torch.inference_mode():
        for _ in range(max(1, rounds)):
            outputs = spec.forward(model, data.inputs)
    return GoldenCheck(data, golden_lib.compare(data, outputs, dtype))
