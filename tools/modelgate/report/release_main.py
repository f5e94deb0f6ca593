"""The ReleaseReport action of every model_release: a passing release's review page.

    release_main @PARAMS  (tools/private/model_release.bzl)

Runs after the gate passed and the receipts were bound: the saved weights on the golden inputs
(each output against golden data, the tolerance band, the worst rows), onnxruntime against torch
at each length (the gate's own check, run again for its numbers), each metric against its floor,
the receipts and the lineage, into `<bundle>/report.html`. No champion: a build does not read
the registry (`registry report --release=...` draws the page against the tag's build).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="release_report", fromfile_prefix_chars="@")
    p.add_argument("--model", required=True)
    p.add_argument("--export-dir", required=True)
    p.add_argument("--golden-dir", required=True)
    p.add_argument("--manifest", required=True, help="the bundle's manifest.json (gate verdict, metrics, receipts)")
    p.add_argument("--hparams", default="{}")
    p.add_argument("--out", required=True)
    p.add_argument("--data-out", help="also write the report's data as JSON here")
    args = p.parse_args(argv)

    from modelgate import gate, loading, portable
    from modelgate.formats import ONNX, WEIGHTS
    from modelgate.report import gate_report, render
    from modelgate.spec import load_spec

    spec = load_spec(args.model).with_config(json.loads(args.hparams or "{}"))
    portable.deterministic(int(spec.config.get("seed", 0)))
    manifest = json.loads(Path(args.manifest).read_text())
    export_dir = Path(args.export_dir)
    model = loading.load_weights(spec, export_dir / WEIGHTS)
    onnx = gate.check_onnx(spec, model, export_dir / ONNX)
    data = gate_report.collect(
        kind="release",
        spec=spec,
        model=model,
        golden_dir=Path(args.golden_dir),
        manifest=manifest,
        checks=(manifest.get("gate") or {}).get("checks") or [],
        metrics=manifest.get("metrics") or {},
        onnx_runs=(onnx.data or {}).get("runs"),
        generated_by=f"bazel build //models/{args.model}:release",
    )
    render.write(Path(args.out), render.gate_page(data))
    if args.data_out:
        Path(args.data_out).write_text(json.dumps(data, sort_keys=True) + "\n")
    print(f"review page of {args.model} build {str(manifest.get('build_hash'))[:12]}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
