"""The storage interface every backend implements, its optional capabilities with their defaults,
and the types the scheme table is made of (RegistryURI, Scheme).

The registry needs only a few primitives, and every write is conditional:

- `create(key, data)`: create-only. Manifests and history events are written once.
- `swap(key, data, expected)`: compare-and-swap on a small object (tag pointers). `expected` is the
  version returned by `read_versioned`, or None for "must not exist yet".
- `put_file(key, path, ...)`: create-only upload of a (possibly large) file; bytes appear all at once.

Readers never see a partial object: a backend makes an object visible only once it is complete.

Whoever can write to a registry can put anything there, so reading is defensive. `read` loads an
object whole, and never more than `limit` bytes of it (a larger object is refused in one line,
ObjectRefused, before its bytes are read or downloaded).

Capabilities a backend may do better than the default, and callers use without asking which
backend they have: `staged_copy`/`put_staged` (check a file's bytes before anything is written;
by default the file is hashed where it is and uploaded from there), `read_hashed_into`,
`free_bytes` (default: unknown), `sweep_temporaries` (default: nothing to sweep) and
`source_uri` (the checkpoint source naming an object).
"""

from __future__ import annotations

import abc
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from modelgate import digests
from modelgate.errors import RegistryContentError

from .. import transfer

CHUNK = 1 << 20
# What `read` loads at most when its caller names no smaller limit (the registry names one per kind
# of object: modelgate.registry.registry).
DEFAULT_READ_LIMIT = 4 << 20
Progress = Callable[[int], None]  # called with the number of bytes just transferred
Write = Callable[[bytes], None]  # a sink for bytes read from a source


class ObjectRefused(RegistryContentError):
    """An object that is not read: not a regular file, a link, or larger than its kind may be."""


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def too_large(key: str, uri: str, limit: int, size: int | None) -> ObjectRefused:
    what = f"is {human_size(size)}, over" if size is not None else "is larger than"
    return ObjectRefused(f"{key} in {uri} {what} the {human_size(limit)} limit for this kind of object: not read (tampered?)")


@dataclass(frozen=True)
class RegistryURI:
    """A parsed registry URI (modelgate.registry.uri.parse): what open_storage opens."""

    scheme: str  # a key of the scheme table with a registry backend ("gs", "file")
    bucket: str = ""  # a bucket store's bucket
    prefix: str = ""  # a bucket store's object-name prefix, without leading or trailing '/'
    path: Path | None = None  # a directory's absolute path
    is_default: bool = False  # the workspace's own registry (dev signing keys are allowed for it)

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.scheme}://{self.path}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}" if self.prefix else f"{self.scheme}://{self.bucket}"


@dataclass(frozen=True)
class Scheme:
    """One row of the scheme table (modelgate.registry.storage.SCHEMES): what a URI scheme is
    good for. A scheme can hold a registry, be a checkpoint source, or both."""

    # As a registry: how its URI is written (for messages), parse(text, rest, form) -> RegistryURI
    # (`rest` follows "scheme:"; UsageError in one line if malformed), and the storage it opens.
    registry: str = ""
    parse: Callable[[str, str, str], RegistryURI] | None = None
    open: Callable[[RegistryURI], "Storage"] | None = None
    # As a checkpoint source: how it is written, and read(source, write, **context), which hands the
    # bytes to `write` and raises OSError with a one-line reason (context: package_files, for pip://).
    source: str = ""
    read: Callable[..., None] | None = None


@dataclass(frozen=True)
class Staged:
    """A checked copy waiting under no key (a local registry's temporary, or the file itself where
    the backend has no staging area) until put_staged gives it one."""

    path: Path
    size: int
    digest: str  # of what was written, by `algorithm`
    algorithm: str = "sha256"


class Storage(abc.ABC):
    """Flat keys ("models/m/tags/stable.json") to bytes, relative to the registry root."""

    uri: str

    @abc.abstractmethod
    def read(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes | None:
        """The object's bytes, or None if it does not exist. ObjectRefused past `limit` bytes."""

    @abc.abstractmethod
    def read_versioned(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> tuple[bytes, object] | None:
        """The bytes and an opaque version for `swap`, or None if the object does not exist.
        ObjectRefused past `limit` bytes."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Writes `data` only if `key` does not exist. False if it did (nothing written)."""

    @abc.abstractmethod
    def swap(self, key: str, data: bytes, expected: object | None) -> bool:
        """Replaces the object only if its version is still `expected` (None: still absent)."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path, size: int, progress: Progress | None = None) -> bool:
        """Uploads a file to `key` unless the key exists. False if it existed (nothing uploaded)."""

    @abc.abstractmethod
    def read_into(
        self, key: str, write: Write, size: int | None = None, *, transport_checksum: bool = True
    ) -> bool:
        """Streams the object to `write` chunk by chunk. False if it does not exist. `size`, when
        known, widens the remote deadline for a large transfer. `transport_checksum=False`: the
        caller verifies every byte itself (a digest from a signed manifest), so a backend may skip
        its own check of the transfer (GCS: the client's md5 of the download)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Sorted keys under `prefix` (which ends with '/'), at any depth."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Sorted names of the immediate sub-'directories' of `prefix` (which ends with '/')."""

    # ---- tampering, for tests ---------------------------------------------------------------
    # Modelgate's commands never call these (every write they make is conditional): they are how
    # the shared test suites change a registry behind its back, as an attacker or a broken disk
    # would, on every backend alike.

    @abc.abstractmethod
    def overwrite(self, key: str, data: bytes) -> None:
        """Writes `data` to `key` unconditionally, whatever is there."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object at `key` (it must exist)."""

    # ---- optional capabilities: the defaults suit a backend with nothing better ------------------

    @contextlib.contextmanager
    def staged_copy(self, source_fd: int, limit: int, source: Path, algorithm: str = "sha256") -> Iterator[Staged]:
        """Checks the file open as `source_fd` (at `source`) before anything is written: yields a
        Staged with the size and digest (by `algorithm`) of its bytes, for `put_staged`; nothing is
        visible under any key until then. transfer.TooLarge past `limit` bytes.

        The default, for a backend whose uploads appear only once complete anyway (GCS): hashes the
        file where it is, and put_staged uploads it from there. A backend with a staging area of
        its own (LocalStorage) copies the bytes into it and hashes the copy in the same pass."""
        digest = digests.new(algorithm)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        size = 0
        while n := os.readv(source_fd, [buf]):
            size += n
            if size > limit:
                raise transfer.TooLarge(limit)
            digest.update(view[:n])
        yield Staged(Path(source), size, digest.hexdigest(), algorithm)

    def put_staged(self, key: str, staged: Staged, progress: Progress | None = None) -> bool:
        """Stores a staged copy under `key` unless the key exists (False: nothing changed)."""
        return self.put_file(key, staged.path, staged.size, progress)

    def read_hashed_into(self, key: str, target_fd: int, limit: int, algorithm: str = "sha256") -> tuple[int, str] | None:
        """Writes the object to an open file, hashing it on the way: (bytes, hex digest by
        `algorithm`, "sha256" or "blake3") of what was written, or None if it does not exist.
        transfer.TooLarge past `limit` bytes. The caller checks the digest against one it trusts,
        so no transport checksum is computed besides."""
        writer = transfer.HashingWriter(target_fd, limit, algorithm)
        try:
            if not self.read_into(key, writer.write, limit, transport_checksum=False):
                return None
            return writer.finish()
        finally:
            writer.close()

    def free_bytes(self) -> int | None:
        """Space left for new objects, where the backend can tell (a local disk); else None."""
        return None

    def sweep_temporaries(self) -> int:
        """Removes what writers killed mid-write left behind; the bytes freed. The default: a
        backend whose partial uploads never become objects has nothing to sweep."""
        return 0

    def source_uri(self, key: str) -> str:
        """The checkpoint source URI (a scheme table row that reads) that names the object `key`."""
        return f"{self.uri}/{key}"
