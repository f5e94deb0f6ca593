"""Release bundles: what a model's `release` target produces and promote uploads, and a
release's identity.

A bundle is a directory holding manifest.json and the files it lists (the manifest's schema,
writer and check: modelgate.manifest). Each file's sha256 is its address in the registry
(blobs/sha256/<hex>); its blake3, where the manifest lists one, is what promote checks the file's
bytes against, in the pass that copies them (`verify_files` for those it does not copy); a
manifest without blake3 is checked by sha256.

A release is a build with its gate results and test receipts, named by the sha256 of its
manifest (`release_id`); every release of one build hash must list the same bytes for what the
build made (`differing_artifacts`, `same_files`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from modelgate import digests
from modelgate.errors import BundleError, UsageError
from modelgate.formats import RELEASE_MANIFEST as MANIFEST
from modelgate.formats import canonical_json
from modelgate.manifest import check, read_json


@dataclass(frozen=True)
class ReleaseFile:
    name: str
    sha256: str
    size: int
    path: Path
    blake3: str | None = None

    @property
    def verifier(self) -> tuple[str, str]:
        """(algorithm, expected hex) its bytes are checked against: blake3 where listed, else sha256."""
        return digests.verifier({"sha256": self.sha256, "blake3": self.blake3})


@dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: dict

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def build_hash(self) -> str:
        return self.manifest["build_hash"]

    @property
    def files(self) -> list[ReleaseFile]:
        return [
            ReleaseFile(name, spec["sha256"], spec["size"], self.directory / name, spec.get("blake3"))
            for name, spec in sorted(self.manifest["files"].items())
        ]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def read(directory: Path) -> Bundle:
    """Reads and checks a bundle's manifest (not yet its files' bytes: see `verify_files`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"release bundle {directory} is not a directory")
    manifest = read_json(directory / MANIFEST, f"release bundle {directory}: {MANIFEST}", BundleError)
    check(manifest, str(directory))
    return Bundle(directory, manifest)


def verify_files(bundle: Bundle, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Hashes every listed file (but those named in `skip`: the caller checks them while it copies
    them, transfer.BlobCopies) by its blake3 where the manifest lists one, else its sha256; raises
    BundleError on a missing file or a size or digest mismatch."""
    for f in bundle.files:
        if f.name in skip:
            continue
        algorithm, expected = f.verifier
        try:
            size, digest = digests.file_digest(f.path, algorithm)
        except FileNotFoundError:
            raise BundleError(f"release bundle {bundle.directory}: {f.name} is listed but missing") from None
        if size != f.size or digest != expected:
            raise BundleError(
                f"release bundle {bundle.directory}: {f.name} does not match its manifest "
                f"(size {size} vs {f.size}, {algorithm} {digest[:12]} vs {expected[:12]})"
            )


RECEIPT_FILE = re.compile(r"receipt\.[A-Za-z0-9_.-]+\.json")


def release_id(manifest: dict) -> str:
    """A release's identity: the sha256 of its manifest as the release rule wrote it (the registry's
    own fields and the signature aside). The same build released twice with the same gate results
    and receipts is one release, whichever runner made it; with other receipts (a test added, a
    GPU runner's receipts), another release of the same build."""
    import hashlib

    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k not in ("registry", "signature")})).hexdigest()


def differing_artifacts(stored: dict, listed: dict) -> list[str]:
    """The files (receipts aside) that two manifests of one build hash list differently: what the
    build made (weights, ONNX, golden data, bundle files) must be the same bytes in every release."""
    if not isinstance(stored, dict):
        return sorted(listed)
    names = sorted((set(stored) | set(listed)) - {n for n in set(stored) | set(listed) if RECEIPT_FILE.fullmatch(n)})
    return [n for n in names if n not in stored or n not in listed or not same_files({n: stored[n]}, {n: listed[n]})]


def same_files(stored: dict, listed: dict) -> bool:
    """Whether a stored build manifest's files are the release manifest's: the same names, sizes
    and sha256s, and the same blake3 wherever both list one (a build stored before blake3 was
    recorded describes the same bytes by its sha256)."""
    if not isinstance(stored, dict) or stored.keys() != listed.keys():
        return False
    for name, spec in listed.items():
        theirs = stored[name]
        if not isinstance(theirs, dict) or (theirs.get("sha256"), theirs.get("size")) != (spec["sha256"], spec["size"]):
            return False
        if "blake3" in theirs and "blake3" in spec and theirs["blake3"] != spec["blake3"]:
            return False
    return True
