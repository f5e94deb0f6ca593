"""The release gate: validates the *exported files*, not the in-memory model.

Checks, each reported with its numbers:
  golden   the saved safetensors, loaded into a fresh model, reproduce golden/<model>/ within tolerance
  onnx     onnxruntime on model.onnx matches torch on the saved weights for the golden inputs, and
           at a second length of every dynamic axis (each axis the spec declares None must be
           dynamic in the graph)
  text     for a model with a text front end (ModelSpec.text): its files ship in the bundle and,
           loaded from them, it turns a text into inputs the model runs on
  metrics  held-out evaluation of the saved weights meets every metric's floor
  serving  the build as the service runs it: the serving signature the manifest will carry
           (modelgate.serve.signature), model.onnx on onnxruntime warmed up on the golden data
           within its tolerances, and the declared text front end giving the same inputs as the
           model's own on sample texts (and refusing the same over-long text)
The gate hashes nothing: the files it loads are the very bytes the export recorded (Bazel hands
the gate action the export action's outputs), and their digests are carried forward from the
export's record into the release manifest (modelgate.manifest).

On success the gate action writes its verdict (`verdict`: the checks, the metrics of the saved
weights, the serving signature; modelgate.manifest.GATE_SCHEMA), from which, with the export's
record and the test receipts, the release action writes the manifest; on failure it writes
nothing, says which check failed and by how much, and writes its report (modelgate.report)
outside the sandbox, naming it in the error's first line.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelgate import golden as golden_lib
from modelgate import loading, manifest, numerics, portable
from modelgate.formats import GOLDEN_FILES, ONNX, WEIGHTS
from modelgate.spec import ModelSpec


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    data: dict | None = None  # what a check hands the manifest (the serving signature)

    def as_dict(self):
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def check_golden(spec: ModelSpec, model, golden_dir: Path) -> Check:
    try:
        result = loading.check_golden(spec, model, golden_dir)
    except golden_lib.GoldenError as e:
        return Check("golden", False, str(e))
    details = [r.message for r in result.reports] + ([golden_lib.platform_note(result.golden)] if not result.passed else [])
    return Check("golden", result.passed, "; ".join(d for d in details if d))


def _dynamic_axes(session, spec: ModelSpec) -> dict[str, list[tuple[str, int]]]:
    """{axis name in the ONNX graph: [(input, axis), ...]} of every symbolic input axis."""
    axes: dict[str, list[tuple[str, int]]] = {}
    for value in session.get_inputs():
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, str) or dim is None:
                axes.setdefault(str(dim), []).append((value.name, axis))
    return axes


def _resized(inputs: dict, places: list[tuple[str, int]], length: int) -> dict:
    """The inputs cut to `length` on the given (input, axis) places."""
    out = dict(inputs)
    for name, axis in places:
        out[name] = inputs[name].narrow(axis, 0, length).contiguous()
    return out


def _shorter(length: int) -> int:
    return length // 2 if length >= 4 else length - 1


def onnx_input_sets(spec: ModelSpec, axes: dict[str, list[tuple[str, int]]]) -> list[tuple[str, dict]]:
    """(label, inputs) for the ONNX check: the golden inputs, then the spec's shape variants, or by
    default the golden inputs cut to about half their length on each dynamic axis in turn."""
    golden = spec.golden_inputs()
    sets = [("golden", golden)]
    if spec.shape_variants is not None:
        return sets + [(f"variant {i + 1}", v) for i, v in enumerate(spec.shape_variants())]
    for axis, places in axes.items():
        name, index = places[0]
        length = golden[name].shape[index]
        if length >= 2:
            sets.append((f"{axis}={_shorter(length)}", _resized(golden, places, _shorter(length))))
    return sets


def _shape_text(inputs: dict, spec: ModelSpec) -> str:
    return ", ".join(f"{t.name}{list(inputs[t.name].shape)}" for t in spec.inputs)


def check_onnx(spec: ModelSpec, model, onnx_path: Path) -> Check:
    """onnxruntime against torch on the golden inputs and at a second length of every dynamic axis
    the ONNX graph has; the graph must keep each axis the spec declares dynamic (None) symbolic."""
    import onnxruntime as ort

    # No telemetry from a build action (it tries to persist a device id in $HOME), and only errors.
    ort.disable_telemetry_events()
    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        return Check("onnx", False, f"onnxruntime cannot run {onnx_path.name}: {str(e).splitlines()[0][:200]}")
    shapes = {value.name: value.shape for value in session.get_inputs()}
    for t in spec.inputs:
        declared = shapes.get(t.name)
        if declared is None:
            return Check("onnx", False, f"{onnx_path.name} has no input {t.name!r}")
        for axis, size in enumerate(t.shape):
            if size is None and axis < len(declared) and isinstance(declared[axis], int):
                return Check(
                    "onnx", False,
                    f"{onnx_path.name} fixes axis {axis} of input {t.name!r} at {declared[axis]}; the spec declares it dynamic",
                )
    axes = _dynamic_axes(session, spec)
    onnx_tol = numerics.tolerance("onnx", "float32")
    details, passed, seen = [], True, {axis: set() for axis in axes}
    runs = []  # per length and output, for the gate's report (modelgate.report)
    for label, inputs in onnx_input_sets(spec, axes):
        for axis, places in axes.items():
            name, index = places[0]
            if name in inputs:
                seen[axis].add(int(inputs[name].shape[index]))
        try:
            feeds = {t.name: inputs[t.name].numpy() for t in spec.inputs}
            results = dict(zip(spec.outputs, session.run(list(spec.outputs), feeds)))
        except Exception as e:
            return Check("onnx", False, f"onnxruntime cannot run {onnx_path.name} on {label} ({_shape_text(inputs, spec)}): {str(e).splitlines()[0][:200]}")
        with torch.no_grad():
            reference = spec.forward(model, inputs)
        for name in spec.outputs:
            report = golden_lib.compare_output(name, torch.from_numpy(np.asarray(results[name])), reference[name], onnx_tol.atol, onnx_tol.rtol)
            passed &= report.passed
            details.append(f"{label} ({_shape_text(inputs, spec)}): {report.message}")
            runs.append({"label": label, "shapes": _shape_text(inputs, spec), "output": name, "max_abs": report.max_abs,
                         "max_rel": report.max_rel, "passed": report.passed, "message": report.message})
    once = sorted(axis for axis, lengths in seen.items() if len(lengths) < 2)
    if once:
        passed = False
        details.append(f"dynamic axes checked at one length only: {', '.join(once)} (give the spec shape_variants that vary them)")
    return Check("onnx", passed, " | ".join(details), data={"runs": runs})


def check_metrics(spec: ModelSpec, model) -> tuple[Check, dict]:
    metrics = spec.evaluate(model, spec.config)
    failures, parts = [], []
    for name, gate in sorted(spec.metrics.items()):
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name}: not reported by evaluate()")
            continue
        relation = ">=" if gate.higher_is_better else "<="
        # Six significant digits, not four decimals: a 2.2e-6 disagreement beside a floor of 1e-4
        # must not print as 0.0000.
        text = f"{name} {value:.6g} (floor {relation} {gate.floor:g})"
        parts.append(text)
        if not gate.passes_floor(value):
            failures.append(f"{name} {value:.6g} misses its floor {relation} {gate.floor:g} by {abs(value - gate.floor):.6g}")
    if failures:
        return Check("metrics", False, "; ".join(failures)), metrics
    return Check("metrics", True, "; ".join(parts)), metrics


def check_text(spec: ModelSpec, model, bundle_files: dict[str, Path]) -> Check:
    """The text front end ships with the release: every file the spec's TextInput names is given,
    and loaded from those files it turns a text into inputs the model accepts and runs on."""
    import tempfile

    missing = [name for name in spec.text.files if name not in bundle_files]
    if missing:
        return Check("text", False, f"the spec's text input needs {', '.join(missing)} in the bundle; give it as bundle_files")
    sample = ["The release gate checks the tokenizer that ships."]
    with tempfile.TemporaryDirectory(prefix="modelgate-text-") as tmp:
        for name in spec.text.files:
            (Path(tmp) / name).symlink_to(Path(bundle_files[name]).resolve())
        try:
            inputs = spec.text.load(Path(tmp))(sample)
            for t in spec.inputs:
                t.check(inputs[t.name])
            with torch.no_grad():
                outputs = spec.forward(model, inputs)
        except Exception as e:  # noqa: BLE001 - any failure of the front end is the check's verdict
            return Check("text", False, f"{', '.join(spec.text.files)}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    if not all(torch.isfinite(v).all() for v in outputs.values() if v.is_floating_point()):
        return Check("text", False, "the model gives non-finite outputs for a text")
    shapes = ", ".join(f"{t.name}{list(inputs[t.name].shape)}" for t in spec.inputs)
    return Check("text", True, f"{', '.join(spec.text.files)} loads; a sample text -> {shapes}; max {spec.text.max_tokens} tokens, longer {spec.text.over_length}")


# ONNX element types -> the serving signature's datatype names (numpy's).
_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
TEXT_SAMPLES = ("The release gate checks the tokenizer that ships.", "a", "Two texts of other lengths pad to the longest one.")


def serving_signature(spec: ModelSpec, onnx_path: Path, golden: golden_lib.Golden) -> dict:
    """The manifest's "serving" section: inputs from the spec, outputs from the ONNX graph, the
    text front end as data, and the warm-up's tolerances from golden.json."""
    import onnxruntime as ort

    from modelgate.serve.signature import ONNX_RUNTIME, SERVING_SCHEMA

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    graph_outputs = {o.name: o for o in session.get_outputs()}
    outputs = []
    for name in spec.outputs:
        o = graph_outputs.get(name)
        if o is None:
            raise ValueError(f"{onnx_path.name} has no output {name!r}")
        if o.type not in _ONNX_TYPES:
            raise ValueError(f"output {name!r} is {o.type}, which the service cannot return")
        outputs.append({"name": name, "datatype": _ONNX_TYPES[o.type], "shape": [d if isinstance(d, int) and d > 0 else None for d in o.shape]})
    inputs = []
    for t in spec.inputs:
        entry = {"name": t.name, "datatype": t.dtype, "shape": list(t.shape)}
        if t.low is not None:
            entry["range"] = [t.low, t.high]
        inputs.append(entry)
    text = None
    if spec.text is not None:
        if spec.text.tokenizer is None:
            raise ValueError("the spec's TextInput declares no tokenizer file, so the service cannot run its text front end")
        text = {
            "kind": "tokenizers",
            "file": spec.text.tokenizer,
            "max_tokens": spec.text.max_tokens,
            "pad_id": spec.text.pad_id,
            "ids_input": spec.text.ids_input,
            "mask_input": spec.text.mask_input,
        }
    tolerances = {}
    for name in spec.outputs:
        atol, rtol = golden.tolerance(name, "float32")
        tolerances[name] = {"atol": atol, "rtol": rtol}
    return {
        "schema": SERVING_SCHEMA,
        "runtime": ONNX_RUNTIME,
        "model_file": ONNX,
        "inputs": inputs,
        "outputs": outputs,
        "text": text,
        "warmup": {"tolerances": tolerances},
    }


def check_serving(spec: ModelSpec, export_dir: Path, golden_dir: Path, bundle_files: dict[str, Path]) -> Check:
    """The release as the service will run it, from the bundle's files alone."""
    from modelgate.serve import runtime
    from modelgate.serve.signature import SignatureError, from_manifest

    try:
        golden = golden_lib.load(golden_dir, spec.name, [t.name for t in spec.inputs], spec.outputs)
        doc = serving_signature(spec, export_dir / ONNX, golden)
        signature = from_manifest({"serving": doc})
    except (golden_lib.GoldenError, SignatureError, ValueError) as e:
        return Check("serving", False, str(e).splitlines()[0][:300])
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors on a file it cannot read
        return Check("serving", False, f"onnxruntime cannot read {ONNX}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
    with tempfile.TemporaryDirectory(prefix="modelgate-serving-") as tmp:
        bundle = Path(tmp)
        for name, path in [(ONNX, export_dir / ONNX)] + [(n, Path(golden_dir) / n) for n in sorted(GOLDEN_FILES)] + sorted(bundle_files.items()):
            (bundle / name).symlink_to(Path(path).resolve())
        try:
            runner = runtime.OnnxRunner(bundle, signature, threads=1)
            worst = runtime.warm_up(runner, bundle, rounds=1)
        except Exception as e:  # noqa: BLE001 - RolloutError and onnxruntime's own: the check's verdict
            return Check("serving", False, f"the service would refuse this build: {str(e).splitlines()[0][:300]}")
        detail = "onnxruntime warm-up on the golden data: " + ", ".join(f"{k} max abs {v:.3g}" for k, v in sorted(worst.items()))
        if spec.text is not None:
            problem = _compare_front_ends(spec, runner.text, bundle)
            if problem:
                return Check("serving", False, f"the declared text front end ({spec.text.tokenizer}) differs from the model's: {problem}")
            detail += f"; the declared text front end gives the model's own inputs for {len(TEXT_SAMPLES)} texts and refuses the same over-long one"
    return Check("serving", True, detail, data=doc)


def _compare_front_ends(spec: ModelSpec, declared, bundle: Path) -> str | None:
    own = spec.text.load(bundle)
    theirs, ours = own(list(TEXT_SAMPLES)), declared(list(TEXT_SAMPLES))
    for name in (spec.text.ids_input, spec.text.mask_input):
        a, b = np.asarray(theirs[name]), np.asarray(ours.get(name))
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
            return f"input {name!r}: {b.dtype}{list(b.shape)} against the model's {a.dtype}{list(a.shape)}"
    too_long = " ".join(["word"] * (spec.text.max_tokens + 8))
    refused = []
    for front in (own, declared):
        try:
            front([too_long])
            refused.append(False)
        except ValueError:
            refused.append(True)
    if refused != [True, True]:
        who = "neither front end" if not any(refused) else "the model's front end only" if refused[0] else "the declared front end only"
        return f"a text of {spec.text.max_tokens + 8} words is refused by {who}"
    return None


def run_gate(
    spec: ModelSpec, export_dir: Path, export_manifest: dict, golden_dir: Path, bundle_files: dict[str, Path] | None = None
) -> tuple[list[Check], dict]:
    portable.deterministic(int(spec.config.get("seed", 0)))
    checks = []
    for name in export_manifest["files"]:
        if not (export_dir / name).is_file():
            return [Check("files", False, f"{name} is missing from {export_dir}")], {}
    model = loading.load_weights(spec, export_dir / WEIGHTS)
    checks.append(check_golden(spec, model, golden_dir))
    checks.append(check_onnx(spec, model, export_dir / ONNX))
    if spec.text is not None:
        checks.append(check_text(spec, model, dict(bundle_files or {})))
    checks.append(check_serving(spec, export_dir, golden_dir, dict(bundle_files or {})))
    metric_check, metrics = check_metrics(spec, model)
    checks.append(metric_check)
    if not all(c.passed for c in checks):
        checks.append(_failure_report(spec, model, export_dir, export_manifest, golden_dir, checks, metrics))
    return checks, metrics


def _failure_report(spec, model, export_dir, export_manifest, golden_dir, checks, metrics) -> Check:
    """A failing gate's report (modelgate.report), written outside the sandbox: Bazel discards a
    failed action's outputs. Its path goes into the gate's error; a report that cannot be written
    is said so, and never changes the verdict."""
    try:
        from modelgate.report import gate_report

        path = gate_report.failure_report(spec, model, export_dir, export_manifest, golden_dir, checks, metrics)
    except Exception as e:  # noqa: BLE001 - the report is a picture of the verdict, not part of it
        return Check("report", True, f"not written: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    return Check("report", True, str(path), data={"path": str(path)})


def verdict(export_manifest: dict, checks: list[Check], metrics: dict) -> dict:
    """What the gate action writes: its checks, the metrics of the saved weights and the serving
    signature, for the build `export_manifest` names (modelgate.manifest.verdict)."""
    serving = next((c.data for c in checks if c.name == "serving" and c.data), None)
    return manifest.verdict(export_manifest, [c.as_dict() for c in checks], metrics, serving)


def failure_text(model: str, checks: list[Check]) -> str:
    report = next((c.data["path"] for c in checks if c.name == "report" and c.data), None)
    lines = [f"release gate failed for {model}" + (f" (report: {report})" if report else "") + ":"]
    for c in checks:
        lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}")
    return "\n".join(lines)


# ---- the gate action's main (tools/bin/gate_tool.py, with the model's library) ---------------


def _main(argv: list[str] | None) -> int:
    import argparse
    import json

    from modelgate.errors import ModelgateError
    from modelgate.spec import load_spec

    parser = argparse.ArgumentParser(prog="gate_tool", fromfile_prefix_chars="@", description="The release gate of one exported build.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--golden-dir", required=True)
    parser.add_argument("--out", required=True, help="where the verdict goes (modelgate.manifest.GATE_SCHEMA), only if every check passes")
    parser.add_argument("--hparams", default="{}")
    parser.add_argument("--bundle-file", action="append", default=[], help="NAME=PATH: a file the bundle ships (a tokenizer)")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.model).with_config(json.loads(args.hparams or "{}"))
    except (LookupError, ValueError) as e:  # no such model or hyperparameter
        raise ModelgateError(f"gate {args.model}: {e}") from None
    export_dir = Path(args.export_dir)
    export_manifest = json.loads((export_dir / "export.json").read_text())
    bundle_files = dict(f.split("=", 1) for f in args.bundle_file)
    try:
        checks, metrics = run_gate(spec, export_dir, export_manifest, Path(args.golden_dir), bundle_files)
    except ModelgateError as e:
        e.args = (f"gate {args.model}: {e}",)
        raise
    if not all(c.passed for c in checks):
        print(failure_text(args.model, checks), file=sys.stderr)
        return 1
    doc = verdict(export_manifest, checks, metrics)
    Path(args.out).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"release gate passed for {args.model} build {doc['build_hash'][:12]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The gate action: one line on stderr and a non-zero exit for bad input (modelgate.runner)."""
    from modelgate.runner import run

    return run(None, _main, argv)  # each error names the model
