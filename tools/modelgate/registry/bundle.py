"""Release bundles: what a model's `release` target produces and promote uploads.

A bundle is a directory holding manifest.json and the files it lists:
    {"schema": RELEASE_SCHEMA, "model": ..., "build_hash": <64 hex>,
     "files": {"weights.safetensors": {"sha256": ..., "blake3": ..., "size": ...}, ...},
     "inputs": {...}, "toolchain": {...}, "config": {...}, "metrics": {...},
     "metric_gates": {"accuracy": {"floor": ..., "max_regression": ..., "higher_is_better": true}},
     "gate": {"passed": true, "checks": [...]}}

Each file's sha256 is its address in the registry (blobs/sha256/<hex>); its blake3, where the
release action recorded one (modelgate.digests), is what promote checks the file's bytes against,
in the pass that copies them; a manifest without blake3 is checked by sha256.
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
from modelgate.formats import RELEASE_SCHEMA, canonical_json

from . import tags


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
    path = directory / MANIFEST
    where = str(directory)
    if not directory.is_dir():
        raise UsageError(f"release bundle {where} is not a directory")
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BundleError(f"release bundle {where} has no {MANIFEST}") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"release bundle {where}: cannot read {MANIFEST}: {e}") from None
    check_manifest(manifest, where)
    return Bundle(directory, manifest)


def check_manifest(manifest, where: str) -> None:
    """Raises BundleError unless `manifest` is a promotable release manifest."""
    if not isinstance(manifest, dict):
        raise BundleError(f"release bundle {where}: {MANIFEST} is not a JSON object")
    schema = manifest.get("schema")
    if schema != RELEASE_SCHEMA:
        raise BundleError(f"release bundle {where}: unknown schema {schema!r} (this promote reads {RELEASE_SCHEMA})")
    try:
        tags.check_model_name(manifest.get("model"))
        tags.check_build_hash(manifest.get("build_hash"))
    except UsageError as e:
        raise BundleError(f"release bundle {where}: {e}") from None
    gate = manifest.get("gate")
    if not isinstance(gate, dict) or gate.get("passed") is not True:
        failed = [c.get("name") for c in (gate or {}).get("checks", []) if isinstance(c, dict) and not c.get("passed")]
        detail = f" (failed checks: {', '.join(map(str, failed))})" if failed else ""
        raise BundleError(f"release bundle {where}: its release gate did not pass{detail}; refusing to promote it")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"release bundle {where}: 'files' must list at least one file")
    for name, spec in files.items():
        try:
            tags.check_file_name(name)
        except UsageError as e:
            raise BundleError(f"release bundle {where}: {e}") from None
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("sha256"), str)
            or not tags.BUILD_HASH.fullmatch(spec["sha256"])
            or not isinstance(spec.get("size"), int)
            or spec["size"] < 0
        ):
            raise BundleError(f"release bundle {where}: files[{name!r}] needs a hex 'sha256' and an integer 'size'")
        if "blake3" in spec and (not isinstance(spec["blake3"], str) or not digests.HEX.fullmatch(spec["blake3"])):
            raise BundleError(f"release bundle {where}: files[{name!r}]: 'blake3' must be 64 lowercase hex digits")
    for field in ("metrics", "metric_gates"):
        if not isinstance(manifest.get(field, {}), dict):
            raise BundleError(f"release bundle {where}: '{field}' must be an object")
    for name, value in manifest.get("metrics", {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise BundleError(f"release bundle {where}: metric {name!r} is not a finite number")
    for name, gate_spec in manifest.get("metric_gates", {}).items():
        if not isinstance(gate_spec, dict) or not isinstance(gate_spec.get("max_regression"), (int, float)):
            raise BundleError(f"release bundle {where}: metric_gates[{name!r}] needs a numeric 'max_regression'")


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
