"""Canary builds with a fault the release gate and the service's warm-up cannot see.

Each is a copy of a real release bundle whose model.onnx is edited (onnx.helper, no torch) so that
the golden inputs give exactly the golden outputs, and other inputs do not:

    nan      logits are NaN for rows outside the golden set whose token sum is 7 mod 20 (~5% of
             random one-row requests)
    shifted  logits + 0.05 for every row outside the golden set (beyond the golden tolerances,
             atol 1e-5 + rtol 1e-4, so the shadow comparison with stable sees it)
    slow     the same answers, after a chain of 128x128 matrix products that depends on the input
             (so onnxruntime cannot fold it away) and adds 0 x its sum, calibrated here to add
             `slow_seconds` to a one-row forward. The canary tests set it to 4x the median latency
             clients measured from stable just before, so the canary answers 5x slower as a client
             sees it. (The model alone is ~0.05 ms of a request's ~1 ms: a model merely 5x slower
             would be invisible to everyone.)
    healthy  the same answers (an Identity node more): a new build hash, nothing wrong

"Outside the golden set" is decided in the graph: a row is golden when its token sum equals one
of the golden rows' sums. The edit is at the ONNX level, not in a test-only runtime, so the
service runs each faulty canary exactly as it would a real one: fetched, verified, warmed up on
its golden data (which it passes), then served. The bundle keeps the original's gate record, with
its own build hash, the edited file's digest and a passing test receipt bound to that build in its
manifest (like bundles.with_golden_expected_of): it is what a gate that checks only golden data
would release, and promote's receipt policy accepts it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from tests.serve.bundles import rebound_receipts

FAULTS = ("nan", "shifted", "slow", "healthy")
NAN_MODULUS, NAN_RESIDUE = 20, 7
SHIFT = 0.05


def _golden_inputs(bundle: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(Path(bundle) / "inputs.safetensors"))


def _edit(model, fault: str, golden_sums: np.ndarray, chain: int = 0):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    [output] = [o for o in graph.output if o.name == "logits"]
    raw = "logits_raw"
    for node in graph.node:
        node.output[:] = [raw if name == "logits" else name for name in node.output]
        node.input[:] = [raw if name == "logits" else name for name in node.input]

    def const(name: str, value) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    nodes = []

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=f"fault_{output}", **attrs))
        return output

    if fault == "healthy":
        node("Identity", [raw], "logits")
    else:
        row_sum = node("ReduceSum", ["tokens", const("fault_axis1", np.array([1], np.int64))], "fault_row_sum", keepdims=0)
        column = node("Unsqueeze", [row_sum, "fault_axis1"], "fault_row_sum_column")
        equal = node("Equal", [column, const("fault_golden_sums", golden_sums.astype(np.int64)[None, :])], "fault_equal")
        hits = node("ReduceMax", [node("Cast", [equal], "fault_equal_int", to=TensorProto.INT32), "fault_axis1"], "fault_hits", keepdims=0)
        off_golden = node("Not", [node("Cast", [hits], "fault_is_golden", to=TensorProto.BOOL)], "fault_off_golden")
        if fault == "nan":
            residue = node("Mod", [row_sum, const("fault_modulus", np.array(NAN_MODULUS, np.int64))], "fault_residue")
            chosen = node("Equal", [residue, const("fault_residue_value", np.array(NAN_RESIDUE, np.int64))], "fault_chosen")
            rows = node("And", [off_golden, chosen], "fault_rows")
            node("Where", [node("Unsqueeze", [rows, "fault_axis1"], "fault_rows_column"), const("fault_nan", np.array(np.nan, np.float32)), raw], "logits")
        elif fault == "shifted":
            shift = node("Where", [off_golden, const("fault_shift", np.array(SHIFT, np.float32)), const("fault_zero", np.array(0.0, np.float32))], "fault_row_shift")
            node("Add", [raw, node("Unsqueeze", [shift, "fault_axis1"], "fault_shift_column")], "logits")
        elif fault == "slow":
            rng = np.random.default_rng(0)
            q, _ = np.linalg.qr(rng.standard_normal((128, 128)))  # orthogonal: products stay finite
            total = node("Cast", [node("ReduceSum", ["tokens"], "fault_all_sum", keepdims=0)], "fault_all_sum_f", to=TensorProto.FLOAT)
            one = node("Add", [node("Mul", [total, const("fault_zero", np.array(0.0, np.float32))], "fault_input_zero"), const("fault_one", np.array(1.0, np.float32))], "fault_input_one")
            current = node("Mul", [const("fault_q", q.astype(np.float32)), one], "fault_m0")
            for i in range(chain):
                current = node("MatMul", [current, "fault_q"], f"fault_m{i + 1}")
            extra = node("Mul", [node("ReduceSum", [current], "fault_chain_sum", keepdims=0), "fault_zero"], "fault_extra")
            node("Add", [raw, extra], "logits")
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    graph.node.extend(nodes)
    output.name = "logits"
    onnx.checker.check_model(model)
    return model


def _forward_seconds(path: Path, feeds: dict, rounds: int = 300) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(20):
        session.run(None, feeds)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def one_row(golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[:1] for k, v in golden.items()}


def make_faulty(bundle: Path, fault: str, out: Path, slow_seconds: float = 0.004) -> tuple[Path, dict]:
    """A copy of `bundle` at `out` whose model.onnx carries `fault`; returns (directory, facts),
    facts saying what was measured (the slow chain's length and forward times)."""
    import onnx

    bundle, out = Path(bundle), Path(out)
    facts: dict = {"fault": fault}
    if fault != "slow" and (out / "manifest.json").is_file() and (out / "fault.json").is_file():
        return out, json.loads((out / "fault.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    golden = _golden_inputs(bundle)
    golden_sums = np.unique(golden["tokens"].sum(axis=1))
    chain = 0
    if fault == "slow":
        base = _forward_seconds(bundle / "model.onnx", one_row(golden))
        probe = out / "probe.onnx"
        onnx.save(_edit(onnx.load(str(bundle / "model.onnx")), fault, golden_sums, chain=100), str(probe))
        per_matmul = max((_forward_seconds(probe, one_row(golden), rounds=50) - base) / 100, 1e-7)
        chain = max(1, round(slow_seconds / per_matmul))
        probe.unlink()
        facts.update(chain=chain, base_forward_ms=round(base * 1000, 4), asked_extra_ms=round(slow_seconds * 1000, 3))
    onnx.save(_edit(onnx.load(str(bundle / "model.onnx")), fault, golden_sums, chain=chain), str(out / "model.onnx"))
    if fault == "slow":
        slow = _forward_seconds(out / "model.onnx", one_row(golden), rounds=50)
        facts.update(slow_forward_ms=round(slow * 1000, 4))
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "model.onnx").read_bytes()
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["build_hash"] = hashlib.sha256(f"{manifest['build_hash']}/fault/{fault}/{chain}".encode()).hexdigest()
    manifest = rebound_receipts(out, manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / "fault.json").write_text(json.dumps(facts, sort_keys=True) + "\n")
    return out, facts


def random_rows(count: int, seed: int = 0, length: int = 16, vocab: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of `count` one-row requests like production traffic: random lengths and tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, length + 1, count)
    tokens = rng.integers(1, vocab, (count, length))
    mask = np.arange(length)[None, :] < lengths[:, None]
    return np.where(mask, tokens, 0).astype(np.int64), mask
