"""Checkpoints from outside the build, pinned by digest: the pin file and strict loading.

A model whose weights come from a training job (or a published pretrained model) keeps a small,
human-readable pin file in its package, `models/<model>/checkpoint.json`:

    {
      "schema": "modelgate/checkpoint@1",
      "model": "image_cnn",
      "sha256": "<64 hex digits>",
      "size": 123456,
      "sources": ["gs://BUCKET/blobs/sha256/<hex>", "https://...", "file:///...",
                  "pip://DISTRIBUTION/PATH/INSIDE/SITE-PACKAGES"],
      "provenance": {"commit": ..., "device": ..., "torch": ..., ...},   # optional, free-form
      "metrics": {"accuracy": 0.95, ...}                                  # optional
    }

The checkpoint itself is a safetensors file (never a pickle). This module is what the export
needs of it, and is in every build hash through the export library: the pin (parse_pin,
read_pin, write_pin) and strict loading into the model (load_into). Fetching the pinned bytes
from the sources (which schemes exist, the machine's store, timeouts) is modelgate.sources, run
only by the CheckpointFetch action and in no build hash: the checkpoint is pinned by digest, so
how its bytes arrive cannot change the weights.

Every failure is one line naming the model, the pin file and what to do.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from modelgate import errors

SCHEMA = "modelgate/checkpoint@1"
PIN_FILE = "checkpoint.json"
_REQUIRED = {"schema", "model", "sha256", "size", "sources"}
_OPTIONAL = {"provenance", "metrics"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Which schemes can be fetched is the fetch's to say (modelgate.sources); a pin needs URIs.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.+")


class CheckpointError(errors.ModelgateError):
    """A pin or checkpoint that cannot be used; the message is the one line the user sees."""


@dataclass(frozen=True)
class Pin:
    model: str
    sha256: str
    size: int
    sources: tuple[str, ...]
    provenance: Mapping[str, object] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    path: str = PIN_FILE  # workspace-relative, for messages

    def to_json(self) -> dict:
        document = {"schema": SCHEMA, "model": self.model, "sha256": self.sha256, "size": self.size, "sources": list(self.sources)}
        if self.provenance:
            document["provenance"] = dict(self.provenance)
        if self.metrics:
            document["metrics"] = dict(self.metrics)
        return document

    def fix_hint(self) -> str:
        return f"fix the pin, or train and pin a new checkpoint: bazel run //models/{self.model}:train"

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"model {self.model}: {self.path}: {what}; {self.fix_hint()}")


def parse_pin(text: str, path: str, model: str | None = None) -> Pin:
    """The pin in `text` (the contents of `path`); CheckpointError with one line if it is not one."""
    who = f"model {model}: " if model else ""
    hint = f"fix the pin, or train and pin a new checkpoint: bazel run //models/{model}:train" if model else "fix the pin"

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{who}{path}: {what}; {hint}")

    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(document, dict):
        raise bad("expected a JSON object")
    unknown = sorted(set(document) - _REQUIRED - _OPTIONAL)
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_REQUIRED | _OPTIONAL))})")
    missing = sorted(_REQUIRED - set(document))
    if missing:
        raise bad(f"missing key {missing[0]!r}")
    if document["schema"] != SCHEMA:
        raise bad(f"schema {document['schema']!r}, expected {SCHEMA!r}")
    if not isinstance(document["model"], str) or (model and document["model"] != model):
        raise bad(f"pins a checkpoint of model {document['model']!r}, not {model!r}")
    sha256 = document["sha256"]
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise bad("sha256 must be 64 lowercase hex digits")
    size = document["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise bad("size must be a positive number of bytes")
    sources = document["sources"]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
        raise bad("sources must be a non-empty list of URIs")
    for source in sources:
        if not _URI.fullmatch(source):
            raise bad(f"source {source!r} is not a URI (SCHEME://...)")
    provenance = document.get("provenance", {})
    metrics = document.get("metrics", {})
    if not isinstance(provenance, dict):
        raise bad("provenance must be an object")
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise bad("metrics must be an object of numbers")
    return Pin(
        model=document["model"],
        sha256=sha256,
        size=size,
        sources=tuple(sources),
        provenance=provenance,
        metrics=metrics,
        path=path,
    )


def read_pin(path: str | Path, display: str | None = None, model: str | None = None) -> Pin:
    display = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"model {model}: {display}: cannot read it ({e.strerror or e})") from None
    return parse_pin(text, display, model)


def write_pin(path: Path, pin: Pin) -> None:
    """Writes the pin file atomically (a reader sees the old pin or the new one)."""
    text = json.dumps(pin.to_json(), indent=2, sort_keys=False) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, path)


# ---- loading into a model --------------------------------------------------------------------


def load_into(spec, path: Path, pin: Pin):
    """A fresh model of `spec` with the checkpoint's tensors, strictly: every tensor of the model
    present with its exact shape and dtype, none left over (a spec's `load_checkpoint` may rename
    a published checkpoint's tensors first). Raises CheckpointError naming the first mismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise pin.fail(f"checkpoint {pin.sha256[:12]} is not a safetensors file ({e})") from None
    model = spec.new_model()
    if spec.load_checkpoint is not None:
        try:
            tensors = spec.load_checkpoint(tensors)
        except (KeyError, ValueError) as e:
            raise pin.fail(f"checkpoint {pin.sha256[:12]} does not fit {spec.name}: {e}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
        raise pin.fail(f"checkpoint {pin.sha256[:12]} does not fit {spec.name}: " + " and ".join(parts))
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise pin.fail(
                f"checkpoint {pin.sha256[:12]} does not fit {spec.name}: tensor {name!r} is "
                f"{str(got.dtype).removeprefix('torch.')}{list(got.shape)}, the model's is {str(want.dtype).removeprefix('torch.')}{list(want.shape)}"
            )
    model.load_state_dict(tensors, strict=True)
    return model.eval()
