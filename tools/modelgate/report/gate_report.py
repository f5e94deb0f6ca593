"""The gate's and the golden test's report data, from a model, its golden data and the gate's checks.

Three writers use it: the release gate when it fails (gate.run_gate -> `failure_report`: the page
goes to a stable path outside the sandbox, because Bazel discards a failed action's outputs, and
the gate's error names it), the ReleaseReport action when it passes (release_main.py: the review
page beside the bundle's manifest, with the receipts it was bound to), and the golden test
(tools/bin/golden_test.py: the test's undeclared outputs, which survive a failure).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import data as report_data

# Where a failing gate's report goes: Bazel keeps no output of a failed action, so the page is
# written outside the sandbox, under the model's name and the build's hash (MODELGATE_REPORT_DIR
# where the environment sets it; a Bazel action's environment does not).
DEFAULT_FAILED_DIR = "/tmp/modelgate-reports"


def failed_dir() -> Path:
    return Path(os.environ.get("MODELGATE_REPORT_DIR") or DEFAULT_FAILED_DIR)


def golden_section(golden, outputs: dict, *, dtype: str = "float32", device: str = "cpu", note: str = "") -> dict:
    """Every output of `golden` (modelgate.golden.Golden) against `outputs` (tensors by name)."""
    sections = []
    for name, expected in sorted(golden.expected.items()):
        atol, rtol = golden.tolerance(name, dtype)
        actual = outputs.get(name)
        if actual is None:
            sections.append({"name": name, "passed": False, "problem": "the model gave no such output", "shape": list(expected.shape)})
            continue
        sections.append(
            report_data.compare_arrays(
                name, actual.detach().float().cpu().numpy(), expected.float().numpy(), atol, rtol, dtype=dtype
            )
        )
    return {"directory": str(golden.directory), "dtype": dtype, "device": device, "note": note, "outputs": sections}


def model_golden_section(spec, model, golden_dir) -> dict:
    """The gate's golden comparison redone for the picture: the saved weights on the golden inputs."""
    import torch

    from modelgate import golden as golden_lib

    try:
        golden = golden_lib.load(golden_dir, spec.name, [t.name for t in spec.inputs], spec.outputs)
    except golden_lib.GoldenError as e:
        return {"directory": str(golden_dir), "dtype": "float32", "device": "cpu", "problem": str(e), "outputs": []}
    with torch.inference_mode():
        outputs = spec.forward(model, golden.inputs)
    return golden_section(golden, outputs)


def collect(
    *,
    kind: str,
    spec,
    model,
    golden_dir,
    manifest: dict,
    checks: list[dict],
    metrics: dict,
    onnx_runs: list[dict] | None,
    champion: dict | None = None,
    champion_note: str = "",
    generated_by: str = "",
) -> dict:
    """The report of one gate run (`manifest`: the export's, or the release's with its receipts)."""
    passed = all(c["passed"] for c in checks)
    receipts = report_data.receipts_rows(manifest)
    return {
        "kind": kind,
        "model": spec.name,
        "build_hash": manifest.get("build_hash"),
        "passed": passed,
        "title": f"{'Release review' if passed else 'Release gate FAILED'}: {spec.name} {str(manifest.get('build_hash') or '')[:12]}",
        "failed_checks": [c["name"] for c in checks if not c["passed"]],
        "checks": checks,
        "golden": model_golden_section(spec, model, golden_dir),
        "metrics": {
            "rows": report_data.metric_rows(metrics, manifest.get("metric_gates") or {}, champion),
            "champion": champion,
            "champion_note": champion_note
            or "No champion here: the build does not read the registry (its result would then depend on more than its "
            "inputs). `bazel run //tools:registry -- report --release=bazel-bin/models/<m>/release --tag=stable` draws "
            "this page against the build the tag names, with the regression budget.",
        },
        "onnx": {"runs": onnx_runs} if onnx_runs is not None else {"runs": [], "problem": "not recorded"},
        "receipts": receipts,
        "receipts_note": "No test receipts: the gate runs before the release binds them (a passing release's review page lists them).",
        "lineage": report_data.lineage(manifest),
        "generated_by": generated_by,
    }


def failure_report(spec, model, export_dir, export_manifest: dict, golden_dir, checks, metrics) -> Path:
    """A failing gate's page, written outside the sandbox; returns its path."""
    from . import render

    onnx = next((c for c in checks if c.name == "onnx"), None)
    data = collect(
        kind="gate",
        spec=spec,
        model=model,
        golden_dir=golden_dir,
        manifest=export_manifest,
        checks=[c.as_dict() for c in checks],
        metrics=metrics,
        onnx_runs=(onnx.data or {}).get("runs") if onnx is not None and onnx.data else None,
        generated_by="the release gate (failed)",
    )
    path = failed_dir() / spec.name / f"gate-{str(export_manifest.get('build_hash'))[:12]}.html"
    return render.write(path, render.gate_page(data))


def golden_test_report(spec, golden, outputs: dict, *, dtype: str = "float32", device: str = "cpu", note: str = "") -> dict:
    """A golden test's report: each output against golden data (tolerance band, heat map, worst rows)."""
    section = golden_section(golden, outputs, dtype=dtype, device=device, note=note)
    failed = [o["name"] for o in section["outputs"] if not o["passed"]]
    provenance = golden.provenance or {}
    return {
        "kind": "golden",
        "model": spec.name,
        "build_hash": provenance.get("build_hash"),
        "passed": not failed,
        "title": f"Golden test {'passed' if not failed else 'FAILED'}: {spec.name} ({dtype} on {device})",
        "failed_checks": [f"golden {name}" for name in failed],
        "checks": [],
        "golden": section,
        "metrics": None,
        "onnx": None,
        "receipts": [],
        "receipts_note": "A golden test's page: the release's review page lists the receipts.",
        "lineage": None,
        "generated_by": f"golden test of {spec.name} (golden data made by build {str(provenance.get('build_hash'))[:12]} on {provenance.get('cpu', 'unknown CPU')})",
    }


def write_golden_test_report(spec, golden, outputs: dict, *, dtype: str = "float32", device: str = "cpu") -> tuple[Path, str]:
    """Writes the golden test's page into the test's undeclared outputs ($TEST_UNDECLARED_OUTPUTS_DIR:
    kept by Bazel when the test fails, uploaded by CI), else under the failed-report directory.
    Returns (path written, path to show a person)."""
    from . import render

    directory = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
    name = f"golden_report.{spec.name}.{device}.{dtype}.html"
    path = Path(directory) / name if directory else failed_dir() / spec.name / name
    render.write(path, render.gate_page(golden_test_report(spec, golden, outputs, dtype=dtype, device=device)))
    display = os.environ.get("MODELGATE_REPORT_DISPLAY_DIR")
    return path, (f"{display}/{name}" if display and directory else str(path))
