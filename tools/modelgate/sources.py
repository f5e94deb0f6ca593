"""Fetching a pinned checkpoint: from this machine's store, else from the pin's sources, read
through the one scheme table (modelgate.registry.storage.SCHEMES: gs://, https://, file://, pip://).

Runs only in the CheckpointFetch action (tools/bin/checkpoint_tool.py, tools/private/checkpoint.bzl)
and in tests; no build hash covers it. What it produces is pinned by digest, so it cannot change a
model's weights: editing this module, or a source reader, re-runs the fetch actions, whose
outputs are the same bytes, and no export.

`fetch` looks in the store (`~/.cache/modelgate/checkpoints/sha256/<hex>`, shared by every clone),
else tries each source in turn, streamed to a temporary file while its size and sha256 are
checked; only a file whose digest matches enters the store, and the build's copy (`place`) is a
hard link to it. So a checkpoint is downloaded once per machine and is usable offline afterwards.
Every failure is one line naming the model, the pin file and what to do (CheckpointError), and
leaves nothing half-written behind, in the store or in the build's outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from modelgate.checkpoint import Pin
from modelgate.formats import file_digest
from modelgate.registry.storage import source_forms, source_reader

STORE_ENV = "MODELGATE_CHECKPOINT_STORE"


def check_sources(pin: Pin) -> None:
    """CheckpointError (one line) if a source is in a scheme the table cannot read."""
    for source in pin.sources:
        if source_reader(source) is None:
            raise pin.fail(f"source {source!r}: expected {source_forms()}")


def default_store() -> Path:
    """~/.cache/modelgate/checkpoints of the user running the build (from the password database:
    Bazel actions have no $HOME), or $MODELGATE_CHECKPOINT_STORE."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "modelgate" / "checkpoints"


class _Sink:
    """A temporary file that counts and hashes what is written, refusing more than `limit` bytes."""

    def __init__(self, directory: Path, limit: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.NamedTemporaryFile(dir=directory, prefix=".fetch-", delete=False)
        self.path = Path(self.file.name)
        self.digest = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise _TooLarge(self.size)
        self.digest.update(chunk)
        self.file.write(chunk)


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


@dataclass(frozen=True)
class Fetched:
    path: Path  # the verified file in the store
    source: str  # "store" or the source it came from
    bytes_fetched: int  # bytes read from a source (0 from the store)
    seconds: float


def fetch(pin: Pin, store: Path | None = None, package_files: Mapping[str, str] | None = None) -> Fetched:
    """The pinned checkpoint in the machine's store, fetched from a source if it is not there yet.
    Raises CheckpointError (one line) if no source gives bytes with the pinned size and sha256."""
    check_sources(pin)
    store = store or default_store()
    start = time.monotonic()
    target = store / "sha256" / pin.sha256
    if target.is_file():
        size, digest = file_digest(target)
        if digest == pin.sha256:
            if size != pin.size:
                # The bytes with this digest are known, and they are not this size: the pin is wrong.
                raise pin.fail(f"the checkpoint with sha256 {pin.sha256[:12]} has {size} bytes, the pin says {pin.size}")
            return Fetched(target, "store", 0, time.monotonic() - start)
        # A damaged store entry is never used; fetch it again.
        with contextlib.suppress(OSError):
            target.unlink()
    problems = []
    for source in pin.sources:
        read = source_reader(source)
        sink = _Sink(store / "tmp", pin.size)
        try:
            try:
                read(source, sink.write, package_files=package_files or {})
            finally:
                sink.file.close()
            if sink.size != pin.size or sink.digest.hexdigest() != pin.sha256:
                problems.append(f"{source}: {sink.size} bytes with sha256 {sink.digest.hexdigest()[:12]}, the pin says {pin.size} bytes with sha256 {pin.sha256[:12]}")
                continue
            os.chmod(sink.path, 0o444)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(sink.path, target)
            return Fetched(target, source, sink.size, time.monotonic() - start)
        except _TooLarge as e:
            problems.append(f"{source}: more than the pinned {pin.size} bytes (read {e.size})")
        except OSError as e:
            problems.append(f"{source}: {e.strerror if e.strerror else e}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                sink.path.unlink()
    raise pin.fail(f"no source gave the pinned checkpoint ({pin.size} bytes, sha256 {pin.sha256[:12]}): " + "; ".join(problems))


def place(fetched: Fetched, out: Path) -> None:
    """The build's copy of a fetched checkpoint: a hard link into the store, else a copy."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    try:
        os.link(fetched.path, out)
    except OSError:
        partial = out.with_name(f".{out.name}.partial")
        try:
            shutil.copyfile(fetched.path, partial)
            os.replace(partial, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

