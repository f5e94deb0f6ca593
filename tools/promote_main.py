"""`bazel run //tools:promote -- --tag=TAG [flags]`: promote every gated release bundle.

The Bazel target depends on //models:releases, so running it builds every model's :release
first: nothing reaches the registry that the gate did not pass. This wrapper turns the index
of those bundles into --release flags for modelgate.cli.promote; every other flag is passed on.
"""

import json
import os
import sys

from modelgate.cli import promote

INDEX_FLAG = "--releases-index="


def main(argv: list[str]) -> int:
    releases = []
    rest = []
    for arg in argv:
        if arg.startswith(INDEX_FLAG):
            with open(arg[len(INDEX_FLAG):]) as f:
                index = json.load(f)
            releases += [f"--release={os.path.abspath(entry['dir'])}" for entry in index["releases"]]
        else:
            rest.append(arg)
    return promote.main(releases + rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
