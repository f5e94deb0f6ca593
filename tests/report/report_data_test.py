"""The report's numbers agree with the verdicts they picture, and a page is a function of its data."""

from __future__ import annotations

import numpy as np
import torch

from modelgate import golden
from modelgate.report import data, render
from modelgate.report.gate_report import golden_section


def _golden(tmp_path, expected):
    golden.write(tmp_path, "toy", {"x": torch.zeros(1)}, {"y": expected}, {"machine": "x86_64"})
    return golden.load(tmp_path, "toy", ["x"], ["y"])


def test_the_picture_agrees_with_the_golden_verdict(tmp_path):
    rng = np.random.default_rng(0)
    expected = torch.from_numpy(rng.normal(size=(6, 50)).astype(np.float32))
    g = _golden(tmp_path, expected)
    actual = expected.clone()
    actual[2, 7] *= 1.01  # one element outside
    section = golden_section(g, {"y": actual})["outputs"][0]
    report = golden.compare(g, {"y": actual})[0]
    assert section["passed"] == report.passed is False
    assert section["mismatched"] == 1
    assert section["worst"][0]["index"] == [2, 7] and section["worst"][0]["outside"]
    assert not any(w["outside"] for w in section["worst"][1:])
    assert abs(section["max_abs"] - report.max_abs) < 1e-6
    assert [p for p in section["points"] if p[2]] == [[float(expected[2, 7]), float(actual[2, 7]), True]]


def test_a_large_output_keeps_every_failure_in_the_sample_and_pools_the_heat_map():
    expected = np.linspace(-1, 1, 200 * 300).reshape(200, 300)
    actual = expected.copy()
    actual[-1, -1] += 1.0
    section = data.compare_arrays("y", actual, expected, 1e-5, 1e-4)
    assert section["sampled"] and len(section["points"]) <= data.MAX_POINTS
    assert any(p[2] for p in section["points"])
    cells = np.array(section["heat"]["cells"])
    assert cells.shape[0] <= data.MAX_HEAT_ROWS and cells.shape[1] <= data.MAX_HEAT_COLS
    assert cells[-1, -1] > 1 and (cells[:-1, :-1] <= 1).all()  # max-pooling keeps the failure visible


def test_metrics_against_floor_and_champion_with_the_budget():
    gates = {"accuracy": {"floor": 0.5, "max_regression": 0.02, "higher_is_better": True},
             "loss": {"floor": 2.0, "max_regression": 0.05, "higher_is_better": False}}  # fmt: skip
    rows = {r["metric"]: r for r in data.metric_rows({"accuracy": 0.90, "loss": 0.12}, gates, {"metrics": {"accuracy": 0.96, "loss": 0.09}})}
    assert rows["accuracy"]["floor_ok"] and not rows["accuracy"]["budget_ok"]
    assert abs(rows["accuracy"]["regression"] - 0.06) < 1e-12
    assert rows["loss"]["budget_ok"] and abs(rows["loss"]["regression"] - 0.03) < 1e-12


def test_a_page_is_the_same_bytes_for_the_same_data(tmp_path):
    expected = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    g = _golden(tmp_path, expected)
    section = golden_section(g, {"y": expected * 1.01})
    page = {"kind": "golden", "model": "toy", "passed": False, "title": "t", "failed_checks": ["golden y"], "checks": [],
            "golden": section, "receipts": [], "generated_by": '<b>"x"</b>'}  # fmt: skip
    first, second = render.gate_page(dict(page)), render.gate_page(dict(page))
    assert first == second
    assert "&lt;b&gt;&#34;x&#34;&lt;/b&gt;" in first and '<b>"x"</b>' not in first
    assert 'http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;' in first and "<script" not in first
