"""bazel run //tools:affected -- --base=REV [--head=REV] [--tags=gpu] [--json]

Prints the test targets that the change from REV's merge base to the working tree can affect,
one label per line on stdout (a one-line summary and per-file notes go to stderr), so that

    bazel test -- $(bazel run //tools:affected -- --base=origin/main)

tests exactly those. It fails open: when it cannot answer file by file (WORKSPACE, .bazelrc, a
.bzl file or third_party/ changed (but the CPU lock: see below), an unknown or missing base revision, a failing query) it lists
every test and says why, and still exits 0. A modified third_party/requirements_lock.txt is
mapped entry by entry: the tests that depend on the @pip libraries of the changed entries.
Exit 2 is for bad arguments only.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from affected import lib


def _workspace() -> Path | None:
    env = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if env:
        return Path(env)
    here = Path.cwd()
    for d in (here, *here.parents):
        if any((d / n).is_file() for n in lib.WORKSPACE_FILE_NAMES):
            return d
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bazel run //tools:affected --",
        description="Test targets that a change can affect (reverse dependencies through bazel query); fails open.",
    )
    p.add_argument("--base", required=True, help="the revision to compare with, e.g. origin/main")
    p.add_argument(
        "--head",
        help="the revision under test; must be the checked-out commit (default HEAD, plus uncommitted changes)",
    )
    p.add_argument(
        "--tags",
        default="",
        help="comma-separated tag filter as --test_tag_filters: gpu (only GPU tests), -gpu (none of them)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of labels")
    p.add_argument("--quiet", action="store_true", help="no summary or per-file notes on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        tags = lib.TagFilter.parse(args.tags)
    except ValueError as e:
        parser.error(str(e))
    root = _workspace()
    if root is None:
        parser.error("not inside a Bazel workspace; run it with: bazel run //tools:affected -- --base=REV")

    result = lib.affected(
        git=lib.run_git(root),
        query=lib.BazelQuery(lib.run_bazel_query(root)),
        workspace=lib.Workspace(root),
        base=args.base,
        head=args.head,
        tags=tags,
    )

    if not args.quiet:
        for note in result.notes:
            print(f"affected: note: {note}", file=sys.stderr)
        for effect in result.files[:50]:
            print(f"  {effect.status} {effect.path}: {effect.note}", file=sys.stderr)
        if len(result.files) > 50:
            print(f"  ... and {len(result.files) - 50} more files (--json lists them all)", file=sys.stderr)
        print(result.summary(), file=sys.stderr)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for test in result.tests:
            print(test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
