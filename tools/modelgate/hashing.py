"""Content digests and the build hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value) -> bytes:
    """The one serialization that is hashed or compared: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_hash(inputs: Mapping[str, str], attributes: Mapping[str, object], toolchain: Mapping[str, str]) -> str:
    """The identity of a build: every input file (workspace-relative path -> sha256), the rule's
    attributes and the toolchain. No absolute paths, times or stamps go in, so two clones at
    different paths, on different days, agree."""
    return hashlib.sha256(
        canonical_json({"inputs": dict(inputs), "attributes": dict(attributes), "toolchain": dict(toolchain)})
    ).hexdigest()


def digest_inputs(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{relative path: sha256} for (relative path, path on disk) pairs."""
    return {rel: sha256_file(path) for rel, path in sorted(pairs)}
