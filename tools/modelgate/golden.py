"""Golden datasets: fixed inputs, the outputs a model must keep producing, and tolerances.

A model's golden data lives in golden/<model>/:
  inputs.safetensors    the golden inputs, one tensor per forward input
  expected.safetensors  the expected outputs, one tensor per output
  golden.json           tolerances per output and dtype, and provenance (build hash, torch, date)

`compare` reports, per output, the worst absolute and relative error and where each occurred.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

from modelgate import numerics, portable
from modelgate.errors import GoldenError
from modelgate.formats import GOLDEN_CONFIG, GOLDEN_EXPECTED, GOLDEN_INPUTS
from modelgate.numerics import FLOAT_DTYPES

INPUTS, EXPECTED, CONFIG = GOLDEN_INPUTS, GOLDEN_EXPECTED, GOLDEN_CONFIG
# What a new golden.json gets, per output (numerics.TOLERANCES["golden"]).
DEFAULT_TOLERANCES = {
    dtype: {"atol": tol.atol, "rtol": tol.rtol} for dtype, tol in numerics.TOLERANCES["golden"].items()
}
_TOP_KEYS = {"model", "tolerances", "provenance"}
_TOLERANCE_KEYS = {"atol", "rtol"}


@dataclass(frozen=True)
class Golden:
    directory: Path
    model: str
    inputs: dict[str, torch.Tensor]
    expected: dict[str, torch.Tensor]
    tolerances: dict[str, dict[str, dict[str, float]]]
    provenance: dict

    def tolerance(self, output: str, dtype: str = "float32") -> tuple[float, float]:
        tol = self.tolerances.get(output, {}).get(dtype) or DEFAULT_TOLERANCES[dtype]
        return tol["atol"], tol["rtol"]


def _validate_tolerances(path: Path, tolerances, outputs) -> dict:
    if not isinstance(tolerances, dict):
        raise GoldenError(f"{path}: 'tolerances' must be an object of output -> dtype -> {{atol, rtol}}")
    for output, per_dtype in tolerances.items():
        if output not in outputs:
            raise GoldenError(f"{path}: tolerances.{output}: unknown output; the model's outputs are {list(outputs)}")
        if not isinstance(per_dtype, dict):
            raise GoldenError(f"{path}: tolerances.{output} must map dtypes to {{atol, rtol}}")
        for dtype, tol in per_dtype.items():
            where = f"tolerances.{output}.{dtype}"
            if dtype not in FLOAT_DTYPES:
                raise GoldenError(f"{path}: {where}: unknown dtype; expected one of {list(FLOAT_DTYPES)}")
            if not isinstance(tol, dict) or set(tol) != _TOLERANCE_KEYS:
                extra = sorted(set(tol) - _TOLERANCE_KEYS) if isinstance(tol, dict) else []
                missing = sorted(_TOLERANCE_KEYS - set(tol)) if isinstance(tol, dict) else sorted(_TOLERANCE_KEYS)
                detail = f"unknown key {extra[0]!r}" if extra else f"missing {missing}"
                raise GoldenError(f"{path}: {where}: {detail}; expected exactly atol and rtol")
            for key, value in tol.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise GoldenError(f"{path}: {where}.{key}: {value!r} is not a number")
                if value < 0:
                    raise GoldenError(f"{path}: {where}.{key} is negative ({value})")
    return tolerances


def load(directory: str | Path, model: str, input_names, output_names) -> Golden:
    """Reads and validates golden/<model>/; raises GoldenError naming the file and key."""
    directory = Path(directory)
    files = {name: directory / name for name in (INPUTS, EXPECTED, CONFIG)}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise GoldenError(
            f"golden data for {model} is missing: {', '.join(missing)}; create it with: bazel run //models/{model}:golden_update"
        )
    try:
        config = json.loads(files[CONFIG].read_text())
    except json.JSONDecodeError as e:
        raise GoldenError(f"{files[CONFIG]}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise GoldenError(f"{files[CONFIG]}: expected a JSON object")
    unknown = sorted(set(config) - _TOP_KEYS)
    if unknown:
        raise GoldenError(f"{files[CONFIG]}: unknown key {unknown[0]!r}; expected {sorted(_TOP_KEYS)}")
    if config.get("model", model) != model:
        raise GoldenError(f"{files[CONFIG]}: model is {config['model']!r}, expected {model!r}")
    tolerances = _validate_tolerances(files[CONFIG], config.get("tolerances", {}), output_names)
    inputs, expected = _load_tensors(files[INPUTS]), _load_tensors(files[EXPECTED])
    for label, tensors, names, path in (("input", inputs, input_names, files[INPUTS]), ("output", expected, output_names, files[EXPECTED])):
        if set(tensors) != set(names):
            raise GoldenError(f"{path}: holds {label}s {sorted(tensors)}, the model's {label}s are {sorted(names)}")
    return Golden(directory, model, inputs, expected, tolerances, config.get("provenance", {}))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise GoldenError(f"{path}: not a readable safetensors file ({e})") from None


@dataclass(frozen=True)
class OutputReport:
    name: str
    passed: bool
    message: str
    max_abs: float = 0.0
    max_rel: float = 0.0


def compare_output(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, dtype: str = "float32") -> OutputReport:
    """Compares one output with its golden value (modelgate.numerics): |actual - expected| <= atol + rtol * |expected|."""
    if tuple(actual.shape) != tuple(expected.shape):
        return OutputReport(name, False, f"{name}: shape {tuple(actual.shape)} from the model, {tuple(expected.shape)} in golden data")
    if actual.numel() == 0:
        return OutputReport(name, True, f"{name}: empty")
    bad = numerics.nonfinite(actual)
    if bad is not None:
        return OutputReport(name, False, f"{name}: {bad.count} non-finite values, first at {bad.first} ({bad.first_value})")
    c = numerics.compare(actual, expected, rtol, atol, name)
    text = (
        f"{name}: max abs {c.max_abs:.3g} at {c.max_abs_index} (got {c.max_abs_values[0]}, expected {c.max_abs_values[1]}); "
        f"max rel {c.max_rel:.3g} at {c.max_rel_index}; tolerance atol={atol:g} rtol={rtol:g} ({dtype}); "
        f"{c.mismatched} of {c.numel} elements outside"
    )
    return OutputReport(name, c.ok, text, c.max_abs, c.max_rel)


def compare(golden: Golden, outputs: Mapping[str, torch.Tensor], dtype: str = "float32") -> list[OutputReport]:
    reports = []
    for name, expected in sorted(golden.expected.items()):
        atol, rtol = golden.tolerance(name, dtype)
        reports.append(compare_output(name, outputs[name], expected, atol, rtol, dtype))
    return reports


def platform_note(golden: Golden) -> str:
    """One line where this platform cannot reproduce the numbers the golden data was made with."""
    return portable.platform_note(golden.provenance.get("machine"))


def failure_text(model: str, golden: Golden, reports: list[OutputReport]) -> str:
    lines = [f"golden mismatch for {model} ({golden.directory}):"]
    lines += [f"  {'ok  ' if r.passed else 'FAIL'} {r.message}" for r in reports]
    note = platform_note(golden)
    if note and not all(r.passed for r in reports):
        lines.append(f"  {note}")
    return "\n".join(lines)


def write(directory: str | Path, model: str, inputs, outputs, provenance: dict, tolerances=None) -> list[str]:
    """Writes golden data; returns a per-output summary of what changed against the old files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    old = {}
    if (directory / EXPECTED).is_file():
        try:
            old = load_file(str(directory / EXPECTED))
        except Exception:
            old = {}
    summary = []
    for name, value in sorted(outputs.items()):
        value = value.detach().cpu().contiguous()
        if name not in old:
            summary.append(f"{name}: new, shape {tuple(value.shape)}")
        elif old[name].shape != value.shape:
            summary.append(f"{name}: shape {tuple(old[name].shape)} -> {tuple(value.shape)}")
        else:
            change = numerics.compare(value, old[name], rtol=0.0, atol=0.0, name=name)
            summary.append(
                f"{name}: max abs change {change.max_abs:.3g}, max rel change {change.max_rel:.3g}"
                + (" (unchanged)" if change.ok else "")
            )
    save_file({k: v.detach().cpu().contiguous() for k, v in inputs.items()}, str(directory / INPUTS))
    save_file({k: v.detach().cpu().contiguous() for k, v in outputs.items()}, str(directory / EXPECTED))
    config = {
        "model": model,
        "tolerances": tolerances or {name: dict(DEFAULT_TOLERANCES) for name in sorted(outputs)},
        "provenance": provenance,
    }
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return summary
