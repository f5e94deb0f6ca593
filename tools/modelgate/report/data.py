"""What a report shows, as plain JSON-able data: computed here from arrays and manifests, so that the
gate, the golden test and the registry page draw from one description (modelgate.report.render).

Nothing here changes what the gate or the golden test decide: the comparison is numerics'
(|actual - expected| <= atol + rtol * |expected|), recomputed on the same arrays for the picture.
"""

from __future__ import annotations

import math

import numpy as np

# A page stays small and quick to draw whatever the output's size: at most this many points in a
# scatter (every failing element first), this many cells in a heat map, this many worst rows.
MAX_POINTS = 4000
MAX_HEAT_ROWS = 64
MAX_HEAT_COLS = 128
WORST_ROWS = 10


def _finite_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _as_2d(a: np.ndarray) -> np.ndarray:
    """Rows are every index but the last axis's (a batch row, a token), columns the last axis."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1])


def _pool_max(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """`a` shrunk to at most rows x cols by taking the maximum of each block (a failure stays visible)."""
    r, c = a.shape
    fr, fc = max(1, math.ceil(r / rows)), max(1, math.ceil(c / cols))
    pad = np.full((math.ceil(r / fr) * fr, math.ceil(c / fc) * fc), -np.inf)
    pad[:r, :c] = a
    return pad.reshape(pad.shape[0] // fr, fr, pad.shape[1] // fc, fc).max(axis=(1, 3))


def compare_arrays(name: str, actual, expected, atol: float, rtol: float, *, dtype: str = "float32", label: str = "") -> dict:
    """One output's comparison as a report shows it: the verdict, the worst element, a sample of
    (expected, actual) points with the tolerance band, the error per element as a fraction of the
    tolerance (a heat map, > 1 outside), and the rows with the worst elements."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    out = {"name": name, "label": label, "dtype": dtype, "atol": atol, "rtol": rtol, "shape": list(expected.shape)}
    if actual.shape != expected.shape:
        out.update(passed=False, problem=f"shape {list(actual.shape)} from the model, {list(expected.shape)} expected", numel=int(expected.size))
        return out
    out["numel"] = int(expected.size)
    if expected.size == 0:
        out.update(passed=True, mismatched=0, max_abs=0.0, max_ratio=0.0, points=[], heat=None, worst=[])
        return out
    allowed = atol + rtol * np.abs(expected)
    error = np.abs(actual - expected)
    error = np.where(np.isfinite(actual), error, np.inf)
    ratio = error / np.where(allowed > 0, allowed, np.finfo(np.float64).tiny)
    outside = ~(error <= allowed)
    out["mismatched"] = int(outside.sum())
    out["nonfinite"] = int((~np.isfinite(actual)).sum())
    out["passed"] = out["mismatched"] == 0
    out["max_abs"] = _finite_float(error.max())
    out["max_ratio"] = _finite_float(ratio.max())
    flat_e, flat_a, flat_out = expected.ravel(), actual.ravel(), outside.ravel()
    # The scatter's sample: every element outside the band (up to half the budget), then an even
    # spread of the rest, so that a large output still draws quickly and a failure is never dropped.
    bad = np.flatnonzero(flat_out)[: MAX_POINTS // 2]
    good = np.flatnonzero(~flat_out)
    if good.size > MAX_POINTS - bad.size:
        good = good[np.linspace(0, good.size - 1, MAX_POINTS - bad.size).astype(np.int64)]
    pick = np.concatenate([bad, good])
    out["points"] = [[float(flat_e[i]), _finite_float(flat_a[i]), bool(flat_out[i])] for i in pick]
    out["sampled"] = int(pick.size) < int(flat_e.size)
    grid = _as_2d(np.minimum(ratio, 1e6))
    out["heat"] = {
        "rows": int(grid.shape[0]),
        "cols": int(grid.shape[1]),
        "cells": np.round(_pool_max(grid, MAX_HEAT_ROWS, MAX_HEAT_COLS), 4).tolist(),
        "pooled": grid.shape[0] > MAX_HEAT_ROWS or grid.shape[1] > MAX_HEAT_COLS,
    }
    # The worst rows: each row's worst element, rows ordered by it (error / tolerance).
    rows_e, rows_a, rows_r = _as_2d(expected), _as_2d(actual), _as_2d(ratio)
    worst_col = rows_r.argmax(axis=1)
    row_ratio = rows_r[np.arange(rows_r.shape[0]), worst_col]
    lead = expected.shape[:-1] if expected.ndim >= 2 else ()
    worst = []
    for row in np.argsort(-row_ratio, kind="stable")[:WORST_ROWS]:
        col = int(worst_col[row])
        index = (tuple(int(i) for i in np.unravel_index(int(row), lead)) if lead else ()) + ((col,) if expected.ndim else ())
        e, a = float(rows_e[row, col]), float(rows_a[row, col])
        worst.append(
            {
                "index": list(index),
                "expected": e,
                "actual": _finite_float(a),
                "abs_error": _finite_float(abs(a - e)),
                "allowed": atol + rtol * abs(e),
                "ratio": _finite_float(row_ratio[row]),
                "outside": bool(row_ratio[row] > 1.0) or not math.isfinite(a),
                "row_outside": int(_as_2d(outside)[row].sum()),
            }
        )
    out["worst"] = worst
    return out


def metric_rows(metrics: dict, gates: dict, champion: dict | None = None) -> list[dict]:
    """Each gated metric (then the others) against its floor and, where a champion is known, against
    the champion's value with the regression budget (the check promote makes, modelgate.registry.budgets)."""
    rows = []
    names = sorted(gates) + sorted(k for k in metrics if k not in gates)
    for name in names:
        gate = gates.get(name) or {}
        value = metrics.get(name)
        higher = bool(gate.get("higher_is_better", True))
        row = {"metric": name, "value": value, "higher_is_better": higher, "floor": gate.get("floor"), "budget": gate.get("max_regression")}
        if value is not None and gate.get("floor") is not None:
            row["floor_ok"] = value >= gate["floor"] if higher else value <= gate["floor"]
        if champion is not None:
            old = (champion.get("metrics") or {}).get(name)
            row["champion"] = old
            if old is not None and value is not None and gate.get("max_regression") is not None:
                regression = (old - value) if higher else (value - old)
                row["regression"] = regression
                row["budget_ok"] = regression <= float(gate["max_regression"]) + 1e-12
        rows.append(row)
    return rows


def lineage(manifest: dict, registry_info: dict | None = None) -> dict:
    """Where a build came from: its hash, commit, checkpoint, the CPU that trained it, the toolchain."""
    provenance = manifest.get("provenance") or {}
    checkpoint = provenance.get("checkpoint") or {}
    info = registry_info or manifest.get("registry") or {}
    return {
        "build_hash": manifest.get("build_hash"),
        "git_commit": info.get("git_commit"),
        "created_at": info.get("created_at"),
        "created_by": info.get("created_by"),
        "checkpoint": checkpoint.get("sha256") if isinstance(checkpoint, dict) else None,
        "cpu": provenance.get("cpu"),
        "toolchain": {k: v for k, v in sorted((manifest.get("toolchain") or {}).items()) if isinstance(v, (str, int, float))},
    }


def receipts_rows(manifest: dict) -> list[dict]:
    """The test receipts the release was bound to (manifest "tests"), one row each."""
    section = (manifest.get("tests") or {}).get("receipts") if isinstance(manifest.get("tests"), dict) else None
    rows = []
    for name, r in sorted((section or {}).items()):
        if not isinstance(r, dict):
            continue
        counts = r.get("counts") or {}
        rows.append(
            {
                "name": name,
                "target": r.get("target"),
                "variant": r.get("variant"),
                "status": r.get("status"),
                "reason": r.get("reason"),
                "passed": counts.get("passed"),
                "failed": counts.get("failed"),
                "skipped": counts.get("skipped"),
                "sha256": r.get("sha256"),
                "test_files": r.get("test_files") or {},
            }
        )
    return rows
