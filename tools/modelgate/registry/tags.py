"""The names modelgate accepts, as data: tag kinds, model names, build hashes, file names.

Every tag is exactly one kind. Channel tags (stable, canary) move from build to build and each move is
checked against the metrics of the build they replace; version tags (v1.2.0, v1.2.0-rc.1) are set once
and never move. Anything else is refused, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelgate.errors import UsageError
from modelgate.formats import MANIFEST_SIGNATURE, RELEASE_MANIFEST


@dataclass(frozen=True)
class TagKind:
    name: str
    pattern: re.Pattern
    movable: bool  # channel tags move; version tags are immutable once set
    example: str


_NUMBER = r"(?:0|[1-9][0-9]*)"
CHANNEL = TagKind("channel", re.compile(r"[a-z][a-z0-9-]{0,62}"), movable=True, example="stable, canary")
VERSION = TagKind(
    "version",
    re.compile(rf"v{_NUMBER}\.{_NUMBER}\.{_NUMBER}(?:-rc\.{_NUMBER})?"),
    movable=False,
    example="v1.2.0, v1.2.0-rc.1",
)
TAG_KINDS = (VERSION, CHANNEL)

# A channel named like a version ("v1", "v2-rc1") would read as one and yet move: refuse it.
_LOOKS_LIKE_VERSION = re.compile(r"v[0-9]")

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
BUILD_HASH = re.compile(r"[0-9a-f]{64}")
# Files of a release are flat: no directories, nothing hidden, no manifest.* (fetch writes those).
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
RESERVED_FILE_NAMES = frozenset({RELEASE_MANIFEST, MANIFEST_SIGNATURE})


def tag_kind(tag: str) -> TagKind:
    """The kind of a tag, or UsageError saying what tags look like."""
    for kind in TAG_KINDS:
        if kind.pattern.fullmatch(tag):
            if kind is CHANNEL and _LOOKS_LIKE_VERSION.match(tag):
                break
            return kind
    hint = ""
    if tag.startswith("v") and re.fullmatch(r"v[0-9.]+-rc[0-9]+", tag):
        hint = " (write a dot before the rc number, e.g. v1.2.0-rc.1)"
    raise UsageError(
        f"invalid tag {tag!r}{hint}: a tag is a channel ([a-z][a-z0-9-]*, e.g. {CHANNEL.example}) "
        f"or a version (vMAJOR.MINOR.PATCH[-rc.N], e.g. {VERSION.example})"
    )


def check_model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name or ""):
        raise UsageError(f"invalid model name {name!r}: letters, digits, '_' and '-', starting with a letter or digit")
    return name


def check_build_hash(value: str) -> str:
    if not BUILD_HASH.fullmatch(value or ""):
        raise UsageError(f"invalid build hash {value!r}: expected 64 lowercase hex digits")
    return value


def check_file_name(name: str) -> str:
    if not FILE_NAME.fullmatch(name or "") or name in RESERVED_FILE_NAMES:
        raise UsageError(f"invalid release file name {name!r}: a flat name, not manifest.json or manifest.sig")
    return name
