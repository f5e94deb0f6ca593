"""promote: upload release bundles to the registry by build hash and move a tag to them.

    promote --tag=TAG --release=DIR [--release=DIR ...] [--model=NAME ...] [--registry=URI]
            [--signing-key=PEM] [--dry-run] [--json] [--force --reason=TEXT] [--notify=URL ...]
"""

from __future__ import annotations

import json
import sys

from modelgate.cli import (
    Parser,
    add_registry_flag,
    git_commit,
    human_bytes,
    open_registry,
    release_path,
    run,
    short,
    user_path,
    warner,
)
from modelgate.errors import EXIT_COMMITTED_TAG_PENDING
from modelgate import receipts
from modelgate.registry import api, signing, tags
from modelgate.registry.uri import workspace_dir

PROG = "promote"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Upload release bundles by build hash, then move a tag to them.")
    p.add_argument("--tag", required=True, help="channel (stable, canary) or version (v1.2.0, v1.2.0-rc.1)")
    p.add_argument("--release", action="append", default=[], metavar="DIR", help="a release bundle directory (repeatable)")
    p.add_argument("--model", action="append", default=[], metavar="NAME", help="promote only these models (repeatable)")
    add_registry_flag(p)
    p.add_argument("--signing-key", metavar="PEM", help=f"EC private key (default: ${signing.ENV_SIGNING_KEY})")
    p.add_argument("--dry-run", action="store_true", help="check everything, write nothing")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--force", action="store_true", help="promote despite a metric regression (needs --reason)")
    p.add_argument("--reason", metavar="TEXT", help="why; recorded in the history")
    p.add_argument("--notify", action="append", default=[], metavar="URL", help="also notify this endpoint (repeatable)")
    p.add_argument(
        "--require", action="append", default=[], metavar="cpu|gpu",
        help="test receipts each build must have passed: cpu always; gpu also wants a GPU variant that ran (repeatable)",
    )  # fmt: skip
    return p


def _summary(r: api.PromoteResult) -> str:
    uploaded = f"uploaded {human_bytes(r.bytes_uploaded)} in {r.files_uploaded} file(s)"
    if r.status == "unchanged":
        return f"{r.model}: {r.tag} already names {short(r.build_hash)}; nothing to move ({uploaded})"
    if r.status == "committed":
        return f"{r.model} {short(r.build_hash)} to {r.tag}: {api.COMMITTED_MESSAGE} (seq {r.seq}; the pointer write failed: {r.pending})"
    verb = "would promote" if r.status == "dry-run" else "promoted"
    if r.status == "dry-run":
        uploaded = f"would upload {human_bytes(r.bytes_uploaded)} in {r.files_uploaded} file(s)"
    if r.first:
        was = f"first build tagged {r.tag}: no baseline to compare"
    elif r.previous:
        was = f"was {short(r.previous)}"
    else:
        was = "new version tag"
    forced = f"; FORCED past a metric regression: {r.reason}" if r.forced else ""
    return f"{verb} {r.model} {short(r.build_hash)} to {r.tag} ({was}; {uploaded}){forced}"


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    tags.tag_kind(args.tag)
    uri, registry = open_registry(args.registry)
    selected = api.select_bundles([release_path(r) for r in args.release], args.model)
    required = receipts.parse_requirements(args.require)
    workspace = workspace_dir()
    warn = warner(PROG)

    def signing_key() -> str:
        return signing.signing_key_setting(
            user_path(args.signing_key), allow_dev_key=uri.is_default, workspace=workspace, warn=warn
        )

    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        def progress(description: str, total: int):
            return tqdm(total=total, desc=description, unit="B", unit_scale=True, file=sys.stderr, leave=False)

    results = api.promote(
        registry,
        selected,
        args.tag,
        signing_key=signing_key,
        force=args.force,
        reason=args.reason,
        dry_run=args.dry_run,
        commit=git_commit(workspace),
        progress=progress,
        notify_urls=tuple(args.notify),
        warn=warn,
        require=frozenset(required),
    )
    if args.json:
        print(json.dumps({"registry": str(uri), "tag": args.tag, "dry_run": args.dry_run, "results": [r.to_json() for r in results]}, indent=2))
    else:
        for r in results:
            print(_summary(r))
    pending = [r for r in results if r.status == "committed"]
    for r in pending:
        warn(f"{r.model}: {api.COMMITTED_MESSAGE}")
    return EXIT_COMMITTED_TAG_PENDING if pending else 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
