"""What modelgate writes and reads, named once: file names, schema versions, the one canonical JSON
encoding and the one file hasher.

Standard library only: the export action, the gate, the registry, the service and promote's
notifications all use it, and none of them needs torch for this.

    export dir (model_weights)  weights.safetensors  model.onnx  export.json
    release bundle              manifest.json + the export's files + the golden files under
                                their own names (inputs.safetensors, expected.safetensors, golden.json)
    fetched build               the bundle's files + manifest.json (signed bytes) + manifest.sig
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# --- file names -------------------------------------------------------------------------------

WEIGHTS = "weights.safetensors"
ONNX = "model.onnx"
EXPORT_MANIFEST = "export.json"
RELEASE_MANIFEST = "manifest.json"  # in a release bundle and in a fetched build
MANIFEST_SIGNATURE = "manifest.sig"  # beside a fetched build's manifest (model-signing's bundle)

# golden/<model>/, and the same names inside a release bundle
GOLDEN_INPUTS = "inputs.safetensors"
GOLDEN_EXPECTED = "expected.safetensors"
GOLDEN_CONFIG = "golden.json"
GOLDEN_FILES = (GOLDEN_INPUTS, GOLDEN_EXPECTED, GOLDEN_CONFIG)

# --- schema versions --------------------------------------------------------------------------

EXPORT_SCHEMA = "modelgate/export@1"  # export.json
RELEASE_SCHEMA = "modelgate/release@1"  # a release bundle's manifest.json
BUILD_SCHEMA = "modelgate/build@1"  # the registry's part of a stored build manifest
EVENT_SCHEMA = "modelgate/event@1"  # a history event
TAG_SCHEMA = "modelgate/tag@1"  # a tag pointer
SERVE_STATE_SCHEMA = "modelgate/serve-state@1"  # the service's accepted tag state

# --- bytes ------------------------------------------------------------------------------------

CHUNK = 1 << 20


def canonical_json(value) -> bytes:
    """The one byte encoding of a JSON value that is hashed, signed or MACed: sorted keys, no
    whitespace, UTF-8, and no NaN or Infinity (which are not JSON). Build hashes, manifest and
    record signatures and notification bodies are all computed over it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def file_digest(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, read once in CHUNK pieces."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path)[1]


def file_entry(path: str | Path) -> dict:
    """A manifest's entry for one file: {"sha256", "size"}."""
    size, sha256 = file_digest(path)
    return {"sha256": sha256, "size": size}
