"""fetch: download a build by tag or build hash into a directory, verifying every byte.

    fetch --model=NAME (--tag=TAG | --build=HASH) --out=DIR [--registry=URI] [--public-key=PEM] [--json]

The output directory receives the release files, manifest.json (the signed manifest) and
manifest.sig (its model-signing signature). On any mismatch nothing is left behind.
"""

from __future__ import annotations

import json
import sys

from modelgate.cli import Parser, add_registry_flag, human_bytes, open_registry, run, short, user_path
from modelgate.registry import api, signing
from modelgate.registry.uri import workspace_dir

PROG = "fetch"


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Fetch a build by tag or build hash; verify signature and digests.")
    p.add_argument("--model", required=True, metavar="NAME")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tag", metavar="TAG")
    which.add_argument("--build", metavar="HASH", help="a build hash, or a unique prefix of at least 8 hex digits")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) directory")
    add_registry_flag(p)
    p.add_argument("--public-key", metavar="PEM", help=f"EC public key (default: ${signing.ENV_PUBLIC_KEY})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    uri, registry = open_registry(args.registry)
    public_key = signing.public_key_setting(
        user_path(args.public_key), allow_dev_key=uri.is_default, workspace=workspace_dir()
    )
    result = api.fetch(
        registry, args.model, out=user_path(args.out), public_key=public_key, tag=args.tag, build=args.build
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        which = f" ({result.tag})" if result.tag else ""
        print(
            f"fetched {result.model} {short(result.build_hash)}{which} into {result.out}: "
            f"{result.files} file(s), {human_bytes(result.bytes)}, signature and digests verified"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
