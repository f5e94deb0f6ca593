"""Checkpoints from outside the build, pinned by digest: the pin file, the machine's store, fetch.

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

The checkpoint itself is a safetensors file (never a pickle). `fetch` makes it available to the
build: first from this machine's store (`~/.cache/modelgate/checkpoints/sha256/<hex>`, shared by
every clone), else from each source in turn, streamed to a temporary file while its size and
sha256 are checked; only a file whose digest matches enters the store, and the build's copy is a
hard link to it. So a checkpoint is downloaded once per machine and is usable offline afterwards;
Bazel's disk and remote caches share the fetch action's output across clones and machines.

Every failure is one line naming the model, the pin file and what to do, and leaves nothing
half-written behind (in the store or in the build's outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from modelgate import errors
from modelgate.formats import file_digest

SCHEMA = "modelgate/checkpoint@1"
PIN_FILE = "checkpoint.json"
STORE_ENV = "MODELGATE_CHECKPOINT_STORE"
TIMEOUT_ENV = "MODELGATE_FETCH_TIMEOUT"
CHUNK = 1 << 20
_REQUIRED = {"schema", "model", "sha256", "size", "sources"}
_OPTIONAL = {"provenance", "metrics"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SCHEMES = ("gs", "https", "http", "file", "pip")


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
        scheme = source.partition(":")[0].lower()
        if scheme not in _SCHEMES or "://" not in source:
            raise bad(f"source {source!r}: expected gs://, https://, file:// or pip://DISTRIBUTION/PATH")
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


# ---- the machine's store ---------------------------------------------------------------------


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


# ---- sources ---------------------------------------------------------------------------------


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "20"))
    except ValueError:
        return 20.0


def _read_file(source: str, write: Callable[[bytes], None], **_) -> None:
    parsed = urllib.parse.urlparse(source)
    if parsed.netloc not in ("", "localhost"):
        raise OSError(f"file:// URIs name a local path (got host {parsed.netloc!r})")
    path = Path(urllib.parse.unquote(parsed.path))
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                write(chunk)
    except FileNotFoundError:
        raise OSError("no such file") from None
    except IsADirectoryError:
        raise OSError("is a directory") from None


def _read_http(source: str, write: Callable[[bytes], None], **_) -> None:
    request = urllib.request.Request(source, headers={"User-Agent": "modelgate-checkpoint-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=_timeout()) as response:
            while chunk := response.read(CHUNK):
                write(chunk)
    except urllib.error.HTTPError as e:
        raise OSError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise OSError(f"unreachable ({getattr(e.reason, 'strerror', None) or e.reason})") from None
    except TimeoutError:
        raise OSError(f"no answer within {_timeout():g} s") from None


def _read_gcs(source: str, write: Callable[[bytes], None], **_) -> None:
    # The registry's GCS client: Application Default Credentials (or $STORAGE_EMULATOR_HOST), one
    # deadline per call, clear one-line errors.
    from modelgate.registry.storage import GCSStorage
    from modelgate.registry.uri import RegistryURI

    rest = source[len("gs://") :]
    bucket, _, name = rest.partition("/")
    if not bucket or not name:
        raise OSError("expected gs://BUCKET/OBJECT")
    try:
        found = GCSStorage(RegistryURI(scheme="gs", bucket=bucket)).read_into(name, write)
    except errors.ModelgateError as e:
        raise OSError(str(e)) from None
    if not found:
        raise OSError("no such object")


def _read_pip(source: str, write: Callable[[bytes], None], package_files: Mapping[str, str] = {}, **_) -> None:
    rest = source[len("pip://") :]
    distribution, _, inside = rest.partition("/")
    path = package_files.get(inside)
    if path is None:
        raise OSError(
            f"{inside!r} is not among the files of the packages given to the model's checkpoint "
            f"(model_package(checkpoint_packages = [requirement({distribution!r})]))"
        )
    _read_file(Path(path).absolute().as_uri(), write)


def installed_package_files(pin: Pin, packages: set[str] | None = None, paths: list[str] | None = None) -> dict[str, str]:
    """The files of the installed distributions (on sys.path) the pin's pip:// sources name, by
    their path inside site-packages (what the pinned_checkpoint rule passes file by file), for
    fetching outside Bazel, or in the build where a package's input is its lock entry; with
    `packages` (the lock's names of distributions), only those; with `paths`, the distributions
    installed there rather than on sys.path."""
    from importlib import metadata

    files = {}
    for source in pin.sources:
        if not source.startswith("pip://"):
            continue
        distribution = source[len("pip://") :].partition("/")[0]
        if packages is not None and re.sub(r"[-_.]+", "-", distribution).lower() not in packages:
            continue
        found = next(iter(metadata.distributions(name=distribution, path=paths if paths is not None else sys.path)), None)
        if found is None:
            continue
        for f in found.files or []:
            files[str(f)] = str(found.locate_file(f))
    return files


_READERS = {"file": _read_file, "http": _read_http, "https": _read_http, "gs": _read_gcs, "pip": _read_pip}


@dataclass(frozen=True)
class Fetched:
    path: Path  # the verified file in the store
    source: str  # "store" or the source it came from
    bytes_fetched: int  # bytes read from a source (0 from the store)
    seconds: float


def fetch(pin: Pin, store: Path | None = None, package_files: Mapping[str, str] | None = None) -> Fetched:
    """The pinned checkpoint in the machine's store, fetched from a source if it is not there yet.
    Raises CheckpointError (one line) if no source gives bytes with the pinned size and sha256."""
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
        reader = _READERS[source.partition(":")[0].lower()]
        sink = _Sink(store / "tmp", pin.size)
        try:
            try:
                reader(source, sink.write, package_files=package_files or {})
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


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


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
