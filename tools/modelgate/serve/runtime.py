"""Running one build: its model file on onnxruntime, its text front end, its golden warm-up.

A `Runner` is what the service needs from a build and nothing more: `forward` from named numpy
arrays to named numpy arrays, the build's `signature` and its `text` front end (or None). The
default runner, `OnnxRunner`, runs the bundle's model.onnx (the file the release gate compared
with torch at two lengths of every dynamic axis) on onnxruntime: no torch and no models/ in the
process. modelgate.serve.torch_runtime has the other one, for `serve --runtime=torch`.

`warm_up` runs the build's golden inputs (shipped in the bundle) through the runner and requires
its golden outputs within the tolerances the gate recorded in the signature: the same check the
gate ran on this runtime before the build could be released.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np

from modelgate.errors import RolloutError
from modelgate.formats import GOLDEN_EXPECTED, GOLDEN_INPUTS
from modelgate.serve.signature import Signature

WARMUP_ROUNDS = 3


class Runner(Protocol):
    signature: Signature
    text: Callable[[list[str]], dict[str, np.ndarray]] | None
    runtime: str

    def forward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRunner:
    runtime = "onnxruntime"

    def __init__(self, directory: Path, signature: Signature, threads: int = 1):
        import onnxruntime as ort

        ort.disable_telemetry_events()
        ort.set_default_logger_severity(3)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.signature = signature
        path = Path(directory) / signature.model_file
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise RolloutError(f"onnxruntime cannot load {signature.model_file}: {first_line(e)}") from None
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [t.name for t in signature.inputs if t.name not in graph_inputs] + [
            t.name for t in signature.outputs if t.name not in graph_outputs
        ]
        if missing:
            raise RolloutError(f"{signature.model_file} has no tensor named {missing[0]!r}, which the build's signature declares")
        self.output_names = [t.name for t in signature.outputs]
        self.text = None
        if signature.text is not None:
            from modelgate.serve.text import Tokenizer

            try:
                self.text = Tokenizer(directory, signature.text)
                self.text(["warm-up"])
            except Exception as e:  # noqa: BLE001 - a tokenizer that does not load refuses the build
                raise RolloutError(f"cannot load the build's text front end {signature.text.file}: {first_line(e)}") from None

    def forward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {t.name: np.ascontiguousarray(inputs[t.name]) for t in self.signature.inputs}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


def load_golden(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected outputs) of the build's golden data, as numpy arrays."""
    from safetensors.numpy import load_file

    out = []
    for name in (GOLDEN_INPUTS, GOLDEN_EXPECTED):
        try:
            out.append(load_file(str(Path(directory) / name)))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types for corrupt headers
            raise RolloutError(f"the build's golden data {name} is unreadable: {first_line(e)}") from None
    return out[0], out[1]


def compare(name: str, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float, datatype: str = "float32") -> str | None:
    """None where |actual - expected| <= atol + rtol * |expected| everywhere (the golden rule of
    modelgate.numerics), else one line saying where and by how much."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return f"{name}: shape {actual.shape} from the model, {expected.shape} in golden data"
    if actual.size == 0:
        return None
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not np.isfinite(a).all():
        return f"{name}: {int((~np.isfinite(a)).sum())} non-finite values"
    err = np.abs(a - e)
    bad = err > atol + rtol * np.abs(e)
    if not bad.any():
        return None
    at = np.unravel_index(int(err.argmax()), err.shape)
    return (
        f"{name}: max abs {float(err[at]):.3g} at {tuple(int(i) for i in at)} (got {a[at]:.7g}, expected {e[at]:.7g}); "
        f"tolerance atol={atol:g} rtol={rtol:g} ({datatype}); {int(bad.sum())} of {a.size} elements outside"
    )


def warm_up(runner: Runner, directory: Path, rounds: int = WARMUP_ROUNDS, timings: list[float] | None = None) -> dict[str, float]:
    """Runs the golden inputs `rounds` times; RolloutError unless the outputs match. Returns the
    worst absolute error per output; `timings` gets each round's seconds."""
    inputs, expected = load_golden(directory)
    signature = runner.signature
    names = {t.name for t in signature.inputs}
    if set(inputs) != names:
        raise RolloutError(f"the build's golden inputs are {sorted(inputs)}, its signature's inputs {sorted(names)}")
    try:
        signature.check_inputs(inputs)
        for _ in range(max(1, rounds)):
            start = time.perf_counter()
            outputs = runner.forward(inputs)
            if timings is not None:
                timings.append(time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - a model that fails on its own golden inputs is refused
        raise RolloutError(f"the model fails on its golden inputs: {type(e).__name__}: {first_line(e)}") from None
    failures, worst = [], {}
    for out in signature.outputs:
        if out.name not in expected:
            raise RolloutError(f"the build's golden data has no expected output {out.name!r}")
        tol = signature.tolerances[out.name]
        problem = compare(out.name, outputs[out.name], expected[out.name], tol["atol"], tol["rtol"], out.datatype)
        if problem:
            failures.append(problem)
        else:
            diff = np.abs(np.asarray(outputs[out.name], np.float64) - expected[out.name].astype(np.float64))
            worst[out.name] = float(diff.max()) if diff.size else 0.0
    if failures:
        raise RolloutError("warm-up output does not match the build's golden data: " + "; ".join(failures))
    return worst


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
