"""Command-line entry points. Each module has `main(argv) -> int` and parses arguments only.

What they share: an argparse parser whose errors are one line, one way to turn a user's mistake
into one line on stderr and an exit status, and path handling for `bazel run`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from modelgate.runner import run  # noqa: F401 - the one runner, re-exported for the commands here
from modelgate.registry.registry import Registry
from modelgate.registry.storage import open_storage
from modelgate.registry.uri import RegistryURI, resolve


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def warner(prog: str) -> Callable[[str], None]:
    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    return warn


def user_path(text: str | None) -> str | None:
    """A path the user typed. Under `bazel run` the cwd is the runfiles tree, so relative paths are
    taken from where the user ran bazel ($BUILD_WORKING_DIRECTORY)."""
    if not text or text.lstrip().startswith("-----BEGIN"):
        return text
    path = Path(text).expanduser()
    base = os.environ.get("BUILD_WORKING_DIRECTORY")
    if not path.is_absolute() and base:
        path = Path(base) / path
    return str(path)


def release_path(text: str) -> Path:
    """A --release directory: relative to the cwd (the Bazel target passes runfiles paths), else to
    where the user ran `bazel run`."""
    path = Path(text)
    if path.is_absolute() or path.exists():
        return path
    return Path(user_path(text))


def open_registry(flag: str | None) -> tuple[RegistryURI, Registry]:
    uri = resolve(flag)
    return uri, Registry(open_storage(uri))


def add_registry_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        metavar="URI",
        help="gs://BUCKET[/PREFIX] or file:///ABS/PATH (default: $MODELGATE_REGISTRY, else <workspace>/.modelgate/registry)",
    )


def git_commit(workspace: Path) -> str | None:
    """HEAD of the workspace's git checkout, if there is one: recorded beside the build hash."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) in (40, 64) else None


def short(build_hash: str | None) -> str:
    return build_hash[:12] if build_hash else "-"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
