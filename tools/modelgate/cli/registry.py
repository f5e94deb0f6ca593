"""registry: what is where, and since when; roll a channel back.

    registry ls [--json]
    registry show MODEL [--json]
    registry history MODEL [--limit=N] [--oldest-first] [--json]
    registry verify MODEL [--json]      (the whole hash chain, for audits)
    registry rollback MODEL --tag=TAG [--reason=TEXT] [--notify=URL ...] [--signing-key=PEM] [--json]
    registry report --out=DIR [--model=M ...] [--release=BUNDLE ...] [--tag=TAG]   (modelgate.report)
"""

from __future__ import annotations

import argparse
import json
import sys

from modelgate.cli import Parser, add_registry_flag, git_commit, open_registry, run, short, user_path, warner
from modelgate.errors import EXIT_COMMITTED_TAG_PENDING, UsageError
from modelgate import receipts
from modelgate.registry import api, signing
from modelgate.registry.uri import workspace_dir

PROG = "registry"


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    add_registry_flag(common)
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument(
        "--public-key", metavar="PEM",
        help=f"verify the signatures of history events and tag pointers (default: ${signing.ENV_PUBLIC_KEY}; without one, their schema only)",
    )  # fmt: skip
    p = Parser(prog=PROG, description="Inspect the model registry; roll a channel tag back.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{ls,show,history,verify,rollback,report}", parser_class=Parser)
    sub.add_parser("ls", parents=[common], help="models and their tags")
    show = sub.add_parser("show", parents=[common], help="a model's tags and the builds they name")
    show.add_argument("model", metavar="MODEL")
    history = sub.add_parser("history", parents=[common], help="a model's promotions, newest first")
    history.add_argument("model", metavar="MODEL")
    history.add_argument("--limit", type=int, default=None, metavar="N", help="only the newest N events (reads N events, not the history)")
    history.add_argument("--oldest-first", action="store_true", help="print oldest first")
    verify = sub.add_parser("verify", parents=[common], help="walk and check the whole history (hash chain, signatures, head, tags)")
    verify.add_argument("model", metavar="MODEL")
    rollback = sub.add_parser("rollback", parents=[common], help="move a channel tag back to its previous build")
    rollback.add_argument("model", metavar="MODEL")
    rollback.add_argument("--tag", required=True)
    rollback.add_argument("--reason", metavar="TEXT", help="why; recorded in the history")
    rollback.add_argument("--notify", action="append", default=[], metavar="URL")
    rollback.add_argument("--signing-key", metavar="PEM", help=f"EC private key that signs the rollback event (default: ${signing.ENV_SIGNING_KEY})")
    report = sub.add_parser("report", parents=[common], help="the registry as a static HTML page (and release review pages)")
    report.add_argument("--out", required=True, metavar="DIR", help="directory for index.html (created)")
    report.add_argument("--model", action="append", default=None, metavar="M", help="only this model (repeatable)")
    report.add_argument("--release", action="append", default=[], metavar="BUNDLE", help="a local release bundle: its review page against --tag's build")
    report.add_argument("--tag", default="stable", help="the champion's tag (default: stable)")
    return p


def _metrics(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(metrics.items()))


def _print_ls(uri, models: list[dict]) -> None:
    if not models:
        print(f"no models in {uri}")
    for m in models:
        tags = " ".join(f"{tag}={short(t['build_hash'])}" for tag, t in sorted(m["tags"].items())) or "(no tags)"
        print(f"{m['model']}  {tags}")


def _print_show(info: dict) -> None:
    print(f"{info['model']} in {info['registry']}: {len(info['tags'])} tag(s), {len(info['tagged_builds'])} tagged build(s)")
    for tag, t in sorted(info["tags"].items()):
        detail = info["tagged_builds"].get(t["build_hash"], {})
        commit = f"  commit {detail['git_commit'][:12]}" if detail.get("git_commit") else ""
        pending = "  (pointer update pending; the next promote completes it)" if t["pending"] else ""
        if t.get("problem"):
            pending += f"  (PROBLEM: {t['problem']})"
        if detail.get("problem"):
            pending += f"  (PROBLEM: {detail['problem']}; its metrics are not shown)"
        elif detail.get("verified") is None and t["build_hash"]:
            pending += "  (manifest not verified: no public key)"
        print(f"  {tag:<14} {short(t['build_hash'])}  since {t['since']}  {_metrics(detail.get('metrics', {}))}{commit}{pending}")
        for line in receipts.describe(detail.get("tests") or {}) or ["no test receipts (built before receipts)"]:
            print(f"  {'':<14} tested: {line}")


def _print_history(events: list[dict]) -> None:
    for e in events:
        was = f"was {short(e.get('previous'))}" if e.get("previous") else "first"
        forced = "  FORCED" if e.get("forced") else ""
        reason = f"  reason: {e['reason']}" if e.get("reason") else ""
        print(f"{e['seq']:>5}  {e['time']}  {e['action']:<8} {e['tag']:<14} {short(e['build_hash'])}  ({was})  by {e.get('user')}{forced}{reason}")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    uri, registry = open_registry(args.registry)
    if args.command != "rollback":
        try:
            key = signing.public_key_setting(user_path(args.public_key), allow_dev_key=uri.is_default, workspace=workspace_dir())
        except UsageError:
            key = None  # nothing to verify with: schema checks only
        if key:
            registry.use_keys(verifier=signing.RecordVerifier(key))
    if args.command == "ls":
        models = api.list_models(registry)
        if args.json:
            print(json.dumps({"registry": str(uri), "models": models}, indent=2))
        else:
            _print_ls(uri, models)
    elif args.command == "show":
        info = api.show(registry, args.model)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_show(info)
        problems = [f"tag {tag}: {t['problem']}" for tag, t in sorted(info["tags"].items()) if t.get("problem")]
        problems += [f"build {h[:12]}: {d['problem']}" for h, d in sorted(info["tagged_builds"].items()) if d.get("problem")]
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        if problems:
            return 1
    elif args.command == "report":
        from modelgate.report import cli as report_cli

        written = report_cli.write_reports(
            registry, out=user_path(args.out), models=args.model, releases=[user_path(r) for r in args.release], tag=args.tag
        )
        if args.json:
            print(json.dumps({"registry": str(uri), "pages": [str(p) for p in written]}, indent=2))
        else:
            print(f"wrote {len(written)} page(s) for {uri}: {written[0]}")
    elif args.command == "history":
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit must be at least 1")
        events = api.history(registry, args.model, args.limit, oldest_first=args.oldest_first)
        if args.json:
            print(json.dumps({"model": args.model, "events": events}, indent=2))
        else:
            _print_history(events)
    elif args.command == "verify":
        summary = api.verify(registry, args.model)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            chained = f"hash chain from event {summary['chained_from']}" if summary["chained_from"] else "no hash chain yet"
            print(f"{args.model}: {summary['events']} event(s) verified, {chained}, head {'matches' if summary['head'] else 'absent'}")
    else:
        warn = warner(PROG)

        def signing_key() -> str:
            return signing.signing_key_setting(
                user_path(args.signing_key), allow_dev_key=uri.is_default, workspace=workspace_dir(), warn=warn
            )

        result = api.rollback(
            registry,
            args.model,
            args.tag,
            signing_key=signing_key,
            reason=args.reason,
            commit=git_commit(workspace_dir()),
            notify_urls=tuple(args.notify),
            warn=warn,
        )
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
        else:
            print(f"rolled {result.model} {result.tag} back to {short(result.build_hash)} (was {short(result.previous)})")
        if result.status == "committed":
            warn(f"{result.model}: {api.COMMITTED_MESSAGE} (the pointer write failed: {result.pending})")
            return EXIT_COMMITTED_TAG_PENDING
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
