"""The per-model build tool behind model_weights, golden_update and model_train. In every build
hash (it runs the export); the release gate has its own main (tools/bin/gate_tool.py), outside it.

  export         train deterministically (or load the pinned checkpoint), write weights.safetensors,
                 model.onnx, export.json
  train          train outside the build, upload the checkpoint, rewrite the pin (bazel run :train)
  golden-update  regenerate golden/<model>/ from the exported weights (bazel run :golden_update)

Errors go through the one runner (modelgate.runner): one line on stderr, `<command> <model>: ...`
(a checkpoint's error names the model and the pin file itself), and a non-zero exit status; never
a traceback for bad input.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from modelgate.errors import ModelgateError, UsageError
from modelgate.runner import run


def _spec(model: str, hparams: str):
    from modelgate.spec import load_spec

    return load_spec(model).with_config(json.loads(hparams or "{}"))


def cmd_export(args) -> int:
    # main() put the portable numerics mode's settings in place before torch loaded; run_export
    # checks that they are in effect and refuses to train otherwise.
    from modelgate.export import run_export
    from modelgate.hashing import read_lock_entries

    spec = _spec(args.model, args.hparams)
    inputs = {}
    for pair in args.input:
        rel, _, path = pair.partition("=")
        inputs[rel] = path or rel
    attributes = {"model": args.model, "hparams": json.loads(args.hparams or "{}")}
    packages = read_lock_entries(args.lock_entry)
    checkpoint = None
    if args.checkpoint:
        from modelgate.checkpoint import read_pin

        path, _, display = args.checkpoint_pin.partition("=")
        checkpoint = (read_pin(path, display or path, args.model), Path(args.checkpoint))
    manifest = run_export(spec, Path(args.out_dir), inputs, attributes, packages=packages, checkpoint=checkpoint)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(manifest["metrics"].items()))
    origin = f"from checkpoint {checkpoint[0].sha256[:12]}" if checkpoint else "trained in the build"
    print(f"exported {args.model} build {manifest['build_hash'][:12]}, {origin} ({metrics})")
    return 0


def cmd_train(args) -> int:
    from modelgate import train_and_pin

    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        raise UsageError(f"run me with: bazel run //models/{args.model}:train")
    return train_and_pin.run(_spec(args.model, args.hparams), Path(workspace), args)


def cmd_golden_update(args) -> int:
    import torch

    from modelgate import golden, portable
    from modelgate.export import load_weights

    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        raise UsageError(f"run me with: bazel run //models/{args.model}:golden_update")
    spec = _spec(args.model, args.hparams)
    portable.deterministic()
    export_manifest = json.loads(Path(args.export_manifest).read_text())
    model = load_weights(spec, args.weights)
    inputs = spec.golden_inputs()
    with torch.no_grad():
        outputs = spec.forward(model, inputs)
    directory = Path(workspace) / "golden" / args.model
    tolerances = None
    config_path = directory / golden.CONFIG
    if config_path.is_file():
        tolerances = json.loads(config_path.read_text()).get("tolerances")
    toolchain = export_manifest["toolchain"]
    provenance = {
        "build_hash": export_manifest["build_hash"],
        "torch": toolchain["torch"],
        "python": toolchain["python"],
        "numerics": toolchain.get("numerics", "unknown"),
        # The CPU the weights were trained on (the export's) and the one that ran them here.
        "machine": toolchain.get("machine", "unknown"),
        "trained_on_cpu": export_manifest.get("provenance", {}).get("cpu", "unknown"),
        "cpu": portable.cpu_model(),
        "date": datetime.date.today().isoformat(),
        "generated_by": f"bazel run //models/{args.model}:golden_update",
    }
    summary = golden.write(directory, args.model, inputs, outputs, provenance, tolerances)
    print(f"golden/{args.model}: regenerated from build {export_manifest['build_hash'][:12]}")
    for line in summary:
        print(f"  {line}")
    print("review with: git diff --stat golden/ && commit golden/ with the change that moved it")
    return 0


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="model_tool", fromfile_prefix_chars="@", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export")
    p.add_argument("--model", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--input", action="append", default=[], help="REL=PATH of a declared input to hash")
    p.add_argument("--hparams", default="{}")
    p.add_argument(
        "--lock-entry",
        action="append",
        default=[],
        help="PATH of a pip package's lock entry (lock_entries/<name>.json) to hash; one per package the model depends on",
    )
    p.add_argument("--checkpoint", help="PATH of the fetched pinned checkpoint: load it instead of training")
    p.add_argument("--checkpoint-pin", help="PATH=WORKSPACE_PATH of the pin file (models/<m>/checkpoint.json)")
    p.set_defaults(run=cmd_export)
    p = sub.add_parser("train", help="train outside the build, upload the checkpoint, rewrite the pin (bazel run :train)")
    p.add_argument("--model", required=True)
    p.add_argument("--hparams", default="{}")
    p.add_argument("--registry", help="the registry the checkpoint goes to, as promote's --registry (default: as promote)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU where there is one)")
    p.add_argument(
        "--portable",
        action="store_true",
        help="train in the build's portable numerics mode (CPU): the checkpoint is then the one the build would train",
    )
    p.add_argument("--source", action="append", default=[], help="extra source URI to list in the pin (e.g. a public https mirror)")
    p.add_argument("--dry-run", action="store_true", help="train and print the metric change; upload and rewrite nothing")
    p.set_defaults(run=cmd_train)
    p = sub.add_parser("golden-update")
    p.add_argument("--model", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--export-manifest", required=True)
    p.add_argument("--hparams", default="{}")
    p.set_defaults(run=cmd_golden_update)
    args = parser.parse_args(argv)

    from modelgate import portable

    if args.command == "export" or (args.command == "train" and args.portable):
        # Before anything imports torch: MKL and ATen read these when they load.
        portable.prepare_environment()
    from modelgate.checkpoint import CheckpointError

    try:
        return args.run(args)
    except CheckpointError:
        raise  # it names the model and the pin file itself
    except ModelgateError as e:
        e.args = (f"{args.command} {args.model}: {e}",)
        raise
    except (LookupError, ValueError) as e:  # load_spec, with_config: no such model or hyperparameter
        raise ModelgateError(f"{args.command} {args.model}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    return run(None, _main, argv)  # each error names the command and the model itself


if __name__ == "__main__":
    # Resolve runfiles-relative paths for `bazel run` before anything changes directory.
    sys.exit(main())
