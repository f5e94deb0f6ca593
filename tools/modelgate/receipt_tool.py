"""The ReleaseReceipts action of every model_release: bind the test receipts to the build
(modelgate.receipts), then list each bundle file's blake3 beside its sha256 (modelgate.digests).

    receipt_tool.py bind --model M --gate-manifest GATE --out BUNDLE/manifest.json \
        [--receipt R ...] [--build-output SHORT_PATH=NAME ...] [--file NAME=PATH ...]

--file names where each bundle file the gate listed lies (weights, ONNX, golden data, bundle
files); the receipts are read from beside --out, where binding writes them. Each file is read
once: its sha256 and size are checked against the manifest and its blake3 is recorded, so the
blake3 describes the very bytes the sha256 does. The gate manifest and the build hash are
untouched: the blake3s are added after the gate, by a tool no build hash covers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from modelgate import digests, receipts
from modelgate.runner import run


def _main(argv: list[str]) -> int:
    p, b = receipts.bind_parser("Bind test receipts to a release build; list blake3s.")
    b.add_argument("--file", action="append", default=[], help="NAME=PATH: a bundle file the manifest lists, where it lies")
    args = p.parse_args(argv)
    receipts.bind_main(args)
    out = Path(args.out)
    manifest = json.loads(out.read_text())
    paths = {name: out.parent / name for name in manifest["files"]}  # the receipts lie beside it
    paths.update((name, Path(path)) for name, _, path in (pair.partition("=") for pair in args.file))
    try:
        manifest["files"] = digests.add_blake3(manifest["files"], paths)
    except ValueError as e:
        raise receipts.ReceiptError(f"release {args.model} refused: {e}") from None
    except OSError as e:
        raise receipts.ReceiptError(f"release {args.model}: cannot read {e.filename}: {e.strerror}") from None
    out.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    # The receipts' errors name the model and the receipt themselves: no program prefix.
    return run(None, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
