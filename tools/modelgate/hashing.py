"""Content digests and the build hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Mapping

from modelgate.errors import LockEntryError
from modelgate.formats import canonical_json, sha256_file  # noqa: F401 - export.py imports them from here


def build_hash(
    inputs: Mapping[str, str],
    attributes: Mapping[str, object],
    toolchain: Mapping[str, str],
    packages: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """The identity of a build: every input file (workspace-relative path -> sha256), the rule's
    attributes, the toolchain and the lock entries of the pip packages the model depends on
    (name -> {"version", "hashes"}; not the whole lock, so that an edit of another package's entry
    leaves the hash alone). No absolute paths, times or stamps go in, so two clones at different
    paths, on different days, agree."""
    return hashlib.sha256(
        canonical_json(
            {
                "inputs": dict(inputs),
                "attributes": dict(attributes),
                "toolchain": dict(toolchain),
                "packages": {name: dict(entry) for name, entry in (packages or {}).items()},
            }
        )
    ).hexdigest()


_ENTRY_KEYS = {"name", "version", "hashes"}
_ENTRY_OPTIONAL = {"marker"}


def read_lock_entries(paths: Iterable[str | Path]) -> dict[str, dict[str, object]]:
    """{name: {"version", "hashes"[, "marker"]}} from the pip repository's lock entry files (one
    JSON object per package: {"name", "version", "hashes"}), as the export action hashes them."""
    packages: dict[str, dict[str, object]] = {}
    for path in paths:
        try:
            entry = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LockEntryError(f"lock entry {path}: cannot read it ({e})") from None
        if not isinstance(entry, dict) or not _ENTRY_KEYS <= set(entry) or set(entry) - _ENTRY_KEYS - _ENTRY_OPTIONAL:
            raise LockEntryError(f"lock entry {path}: expected an object with keys name, version, hashes")
        name, version, hashes = entry["name"], entry["version"], entry["hashes"]
        if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
            raise LockEntryError(f"lock entry {path}: name and version must be non-empty strings")
        if not isinstance(hashes, list) or not hashes or not all(isinstance(h, str) and h.startswith("sha256:") for h in hashes):
            raise LockEntryError(f"lock entry {path}: hashes must be a non-empty list of sha256:... strings")
        if name in packages:
            raise LockEntryError(f"lock entry {path}: {name} is given twice")
        packages[name] = {k: v for k, v in entry.items() if k != "name"} | {"hashes": sorted(hashes)}
    return dict(sorted(packages.items()))


def digest_inputs(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{relative path: sha256} for (relative path, path on disk) pairs."""
    return {rel: sha256_file(path) for rel, path in sorted(pairs)}
