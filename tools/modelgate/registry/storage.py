"""One storage interface, two backends: a local directory and Google Cloud Storage.

The registry needs only a few primitives, and every write is conditional:

- `create(key, data)`: create-only. Manifests and history events are written once.
- `swap(key, data, expected)`: compare-and-swap on a small object (tag pointers). `expected` is the
  version returned by `read_versioned`, or None for "must not exist yet".
- `put_file(key, path, ...)`: create-only upload of a (possibly large) file; bytes appear all at once.

Readers never see a partial object: the local backend writes a temporary file and links or renames
it into place; GCS makes an object visible only once its upload completes.

Whoever can write to a registry can put anything there, so reading is defensive. `read` loads an
object whole, and never more than `limit` bytes of it (a larger object is refused in one line,
ObjectRefused, before its bytes are read or downloaded). The local backend opens only regular
files and follows no symbolic link below the registry's root: a FIFO, a device or a link in place
of an object is refused the same way instead of blocking the reader or reading something else.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import os
import random
import re
import shutil
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modelgate.errors import RegistryContentError, StorageError

from . import leftovers, transfer
from .uri import RegistryURI

CHUNK = 1 << 20
TEMP_DIR = ".tmp"
LOCK_DIR = ".locks"
# The only names LocalStorage gives its temporaries (leftovers.temp_name): the sweep touches nothing else.
_TEMP_NAME = re.compile(r"\d+-[0-9a-f]{16}")
# What `read` loads at most when its caller names no smaller limit (the registry names one per kind
# of object: modelgate.registry.registry).
DEFAULT_READ_LIMIT = 4 << 20
Progress = Callable[[int], None]  # called with the number of bytes just transferred


class ObjectRefused(RegistryContentError):
    """An object that is not read: not a regular file, a link, or larger than its kind may be."""


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def _too_large(key: str, uri: str, limit: int, size: int | None) -> ObjectRefused:
    what = f"is {human_size(size)}, over" if size is not None else "is larger than"
    return ObjectRefused(f"{key} in {uri} {what} the {human_size(limit)} limit for this kind of object: not read (tampered?)")


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
        self, key: str, write: Callable[[bytes], None], size: int | None = None, *, transport_checksum: bool = True
    ) -> bool:
        """Streams the object to `write` chunk by chunk. False if it does not exist. `size`, when
        known, widens the remote deadline for a large transfer. `transport_checksum=False`: the
        caller verifies every byte itself (a digest from a signed manifest), so a backend may skip
        its own check of the transfer (GCS: the client's md5 of the download)."""

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

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Sorted keys under `prefix` (which ends with '/'), at any depth."""

    @abc.abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Sorted names of the immediate sub-'directories' of `prefix` (which ends with '/')."""


def open_storage(uri: RegistryURI) -> Storage:
    if uri.scheme == "gs":
        return GCSStorage(uri)
    return LocalStorage(uri.path, str(uri))


# --------------------------------------------------------------------------------------------------
# Local directory


class LocalStorage(Storage):
    """A directory. Create-only via link(2) (fails if the name exists), swap via lock + rename.

    Temporary files live in <root>/.tmp and locks in <root>/.locks, outside every listed prefix.
    A write that fails (a full disk, an error) removes its temporary file; one killed mid-write
    leaves a file that the next writer's first write sweeps away (modelgate.registry.leftovers).
    Both must be real directories: one replaced by a symbolic link (or anything else) is refused,
    never followed, and the sweep removes only regular files named as _temp names them.

    Objects are read only as regular files reached without a symbolic link below the root (the
    root itself may be one: that is the user's configuration): see _open_object.
    """

    def __init__(self, root: Path, uri: str | None = None):
        self.root = Path(root)
        self.uri = uri or f"file://{self.root}"
        self._swept = False

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
            raise StorageError(f"{self.uri}: refusing the key {key[:120]!r}: not a plain relative name")
        return self.root / key

    @contextlib.contextmanager
    def _errors(self, what: str):
        try:
            yield
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot {what}: {e.strerror or e}") from e

    def _refuse(self, key: str, what: str) -> ObjectRefused:
        return ObjectRefused(f"{key} in {self.uri} is {what}, not a regular file: registry objects are regular files, and links are not followed (tampered?)")

    def _open_object(self, key: str) -> int | None:
        """A file descriptor open for reading on the regular file stored as `key`; None if there
        is no object there (nothing, or a directory). Each directory below the root is entered
        with O_NOFOLLOW, the object is looked at (lstat) before it is opened and opened with
        O_NOFOLLOW | O_NONBLOCK (a FIFO cannot block the open), then checked again (fstat): a
        symbolic link, FIFO, socket or device is ObjectRefused."""
        self._path(key)  # the key's grammar
        parts = key.split("/")
        try:
            dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                except FileNotFoundError:
                    return None
                except NotADirectoryError:
                    st = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise self._refuse(key, f"reached through a symbolic link ({'/'.join(parts[: i + 1])})") from None
                    return None
                os.close(dir_fd)
                dir_fd = inner
            name = parts[-1]
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if stat.S_ISDIR(st.st_mode):
                return None
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse(key, _file_kind(st.st_mode))
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise self._refuse(key, "a symbolic link") from None
                raise
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced between the two looks
                os.close(fd)
                raise self._refuse(key, _file_kind(st.st_mode))
            return fd
        finally:
            os.close(dir_fd)

    def read(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes | None:
        with self._errors(f"read {key}"):
            fd = self._open_object(key)
            if fd is None:
                return None
            with os.fdopen(fd, "rb", buffering=0) as f:
                size = os.fstat(fd).st_size
                if size > limit:
                    raise _too_large(key, self.uri, limit, size)
                data = f.read(limit + 1)  # the file may have grown since fstat
                if len(data) > limit:
                    raise _too_large(key, self.uri, limit, None)
                return data

    def read_versioned(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> tuple[bytes, object] | None:
        data = self.read(key, limit)
        # Pointers carry a sequence number, so their bytes never repeat: the digest is a safe version.
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def free_bytes(self) -> int | None:
        path = self.root
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _own_dir(self, name: str) -> Path:
        """<root>/<name>, created if missing, as a real directory: anything else there (a
        symbolic link above all) is a StorageError, never followed."""
        path = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            self._check_own_dir(name)
        return path

    def _check_own_dir(self, name: str) -> bool:
        """True if <root>/<name> is a real directory, False if it is missing; StorageError otherwise."""
        try:
            st = os.lstat(self.root / name)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            target = f" (to {os.readlink(self.root / name)})" if stat.S_ISLNK(st.st_mode) else ""
            raise StorageError(
                f"{self.uri}: {name} is {_file_kind(st.st_mode)}{target}, not a directory of the registry: "
                f"refusing to use it (remove it; modelgate creates it)"
            )
        return True

    def sweep_temporaries(self) -> int:
        """Removes temporary files whose writer is gone (killed mid-write); returns the bytes freed.
        Only regular files named as _temp names them, inside <root>/.tmp if that is a real
        directory (StorageError if it is anything else, with nothing removed)."""
        if not self._check_own_dir(TEMP_DIR):
            return 0
        return leftovers.sweep_files(self.root / TEMP_DIR, _TEMP_NAME)

    @contextlib.contextmanager
    def _temp(self):
        """A new temporary file, open for writing and flocked; removed unless the caller links or
        renames it into place (then unlinking the name is harmless: see _link_into_place)."""
        tmp = self._own_dir(TEMP_DIR)
        if not self._swept:
            self._swept = True
            self.sweep_temporaries()
        path = tmp / leftovers.temp_name()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)  # readable: copy_hashed reads it back
        f = os.fdopen(fd, "wb")
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield path, f
        finally:
            try:
                path.unlink(missing_ok=True)
            finally:
                f.close()

    @staticmethod
    def _finish(f, path: Path, mode: int) -> None:
        f.flush()
        os.fsync(f.fileno())
        os.chmod(path, mode)

    def _link_into_place(self, temp: Path, key: str) -> bool:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(temp, final)  # atomic, and fails if the name exists: create-only
        except FileExistsError:
            return False
        _fsync_dir(final.parent)
        return True

    def create(self, key: str, data: bytes) -> bool:
        with self._errors(f"write {key}"):
            if self._path(key).exists():
                return False
            with self._temp() as (temp, f):
                f.write(data)
                self._finish(f, temp, 0o444)
                return self._link_into_place(temp, key)

    @contextlib.contextmanager
    def _lock(self, key: str):
        locks = self._own_dir(LOCK_DIR)
        fd = os.open(locks / (key.replace("/", "%") + ".lock"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released by the kernel if the process dies
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def swap(self, key: str, data: bytes, expected: object | None) -> bool:
        with self._errors(f"write {key}"):
            final = self._path(key)
            with self._lock(key):
                current = self.read_versioned(key)
                if (current[1] if current else None) != expected:
                    return False
                with self._temp() as (temp, f):
                    f.write(data)
                    self._finish(f, temp, 0o644)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(temp, final)
                _fsync_dir(final.parent)
                return True

    def put_file(self, key: str, path: Path, size: int, progress: Progress | None = None) -> bool:
        with self._errors(f"write {key}"):
            if self._path(key).exists():
                return False
            with self._temp() as (temp, f), open(path, "rb") as source:
                # A kernel-side copy (sendfile): copying through Python in 1 MiB chunks made a 1 GiB
                # promote 6x slower. The bytes were verified by the caller.
                _copy(source, f)
                self._finish(f, temp, 0o444)
                if progress:
                    progress(size)
                return self._link_into_place(temp, key)

    @contextlib.contextmanager
    def staged_copy(self, source_fd: int, limit: int, what: str, algorithm: str = "sha256"):
        """Copies an open file into a new temporary, hashing it (by `algorithm`) in the same pass,
        and fsyncs it. Yields a Staged (where, and the size and digest of what was written) for
        `put_staged`; nothing is visible under any key until then, and the temporary is removed
        unless linked. transfer.TooLarge past `limit` bytes."""
        with contextlib.ExitStack() as stack:
            with self._errors(f"write a copy of {what}"):
                temp, f = stack.enter_context(self._temp())
                size, digest = transfer.copy_hashed(source_fd, f.fileno(), limit, writeback=True, algorithm=algorithm)
                self._finish(f, temp, 0o444)
            yield Staged(temp, size, digest, algorithm)

    def put_staged(self, key: str, staged: "Staged", progress: Progress | None = None) -> bool:
        """Links a staged copy into place under `key` unless the key exists (False: nothing changed)."""
        with self._errors(f"write {key}"):
            if self._path(key).exists():
                return False
            if progress:
                progress(staged.size)
            return self._link_into_place(staged.path, key)

    def read_hashed_into(self, key: str, target_fd: int, limit: int, algorithm: str = "sha256") -> tuple[int, str] | None:
        with self._errors(f"read {key}"):
            fd = self._open_object(key)
            if fd is None:
                return None
            with os.fdopen(fd, "rb", buffering=0) as source:
                return transfer.copy_hashed(source.fileno(), target_fd, limit, algorithm=algorithm)

    def read_into(
        self, key: str, write: Callable[[bytes], None], size: int | None = None, *, transport_checksum: bool = True
    ) -> bool:
        with self._errors(f"read {key}"):
            fd = self._open_object(key)
            if fd is None:
                return False
            with os.fdopen(fd, "rb") as f:
                while chunk := f.read(CHUNK):
                    write(chunk)
            return True

    def list(self, prefix: str) -> list[str]:
        if prefix and not prefix.endswith("/"):  # a prefix of names, as in GCS: list its directory, keep those
            parent = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
            return [k for k in self.list(parent) if k.startswith(prefix)] if parent else [k for k in self._walk("") if k.startswith(prefix)]
        return self._walk(prefix)

    def _walk(self, prefix: str) -> list[str]:
        base = self.root / prefix
        keys = []
        with self._errors(f"list {prefix}"):
            for dirpath, dirs, files in os.walk(base):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # .tmp and .locks are not objects
                rel = Path(dirpath).relative_to(self.root).as_posix()
                keys.extend(name if rel == "." else f"{rel}/{name}" for name in files)
        return sorted(keys)

    def list_dirs(self, prefix: str) -> list[str]:
        with self._errors(f"list {prefix}"):
            try:
                return sorted(e.name for e in os.scandir(self.root / prefix) if e.is_dir() and not e.name.startswith("."))
            except FileNotFoundError:
                return []


@dataclass(frozen=True)
class Staged:
    """A checked copy in a local registry's temporaries, waiting to be linked into place."""

    path: Path
    size: int
    digest: str  # of what was written, by `algorithm`
    algorithm: str = "sha256"


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a regular file" if stat.S_ISREG(mode) else "not a file"


def _copy(source, target) -> None:
    """Copies an open file into another with sendfile(2), falling back to read/write."""
    offset = 0
    try:
        while True:
            sent = os.sendfile(target.fileno(), source.fileno(), offset, 1 << 30)
            if sent == 0:
                return
            offset += sent
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or offset:
            raise
    source.seek(0)
    shutil.copyfileobj(source, target, CHUNK)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Google Cloud Storage

ENV_GCS_TIMEOUT = "MODELGATE_GCS_TIMEOUT"
DEFAULT_GCS_TIMEOUT_S = 10.0  # the deadline of one call, retries included
CONNECT_TIMEOUT_S = 5.0
# The per-read socket timeout modelgate used before calls had deadlines; kept for the benchmark's
# plain-client baseline (tools/bench/registry_bench.py). A read timeout alone bounds nothing: it
# restarts with every byte that arrives.
READ_TIMEOUT_S = 120.0
# A blob transfer may take longer than one small call: its deadline grows by one second per MiB
# (a floor of 1 MiB/s). A trickling endpoint still fails at the deadline, whatever it sends.
TRANSFER_FLOOR_BYTES_PER_S = 1 << 20
# Resumable-upload chunk for large blobs (a multiple of 256 KiB): the client's own default. Each
# chunk is a request; 16 MiB chunks made a 1 GiB promote 2.6x slower than upload_from_filename.
UPLOAD_CHUNK = 100 << 20


class DeadlineExceeded(Exception):
    def __init__(self, bound: float, cause: BaseException | None, cut_off: bool = False):
        super().__init__(f"deadline of {bound:g}s exceeded")
        self.bound, self.cause, self.cut_off = bound, cause, cut_off


class _Deadline:
    """A wall-clock deadline for one storage call: every socket the call uses is registered, and at
    the deadline a timer shuts them down, which ends a read blocked on a silent or trickling peer
    (a socket read timeout alone restarts with every byte that arrives)."""

    current = threading.local()

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.fired = False
        self._sockets: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def remaining(self) -> float:
        return self.expires - time.monotonic()

    def register(self, sock) -> None:
        if sock is None:
            return
        with self._lock:
            if self.fired:
                _shutdown(sock)
            else:
                self._sockets.append(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                _shutdown(sock)

    def __enter__(self):
        self._previous = getattr(_Deadline.current, "value", None)
        _Deadline.current.value = self
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        _Deadline.current.value = self._previous
        return False


def _shutdown(sock) -> None:
    import socket

    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, TypeError):
        pass


def _register_current(sock) -> None:
    deadline = getattr(_Deadline.current, "value", None)
    if deadline is not None:
        deadline.register(sock)


_adapter_class = None


def _deadline_adapter():
    """A requests adapter whose connections register their sockets with the current _Deadline."""
    global _adapter_class
    if _adapter_class is None:
        import requests.adapters
        import urllib3
        from urllib3.connection import HTTPConnection, HTTPSConnection

        def tracked(base):
            class Tracked(base):
                def connect(self):
                    super().connect()
                    _register_current(self.sock)

                def request(self, *args, **kwargs):
                    _register_current(self.sock)
                    return super().request(*args, **kwargs)

            Tracked.__name__ = f"Deadline{base.__name__}"
            return Tracked

        class HTTPPool(urllib3.HTTPConnectionPool):
            ConnectionCls = tracked(HTTPConnection)

        class HTTPSPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = tracked(HTTPSConnection)

        class Adapter(requests.adapters.HTTPAdapter):
            def init_poolmanager(self, *args, **kwargs):
                super().init_poolmanager(*args, **kwargs)
                self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

        _adapter_class = Adapter
    return _adapter_class()


class GCSStorage(Storage):
    """A bucket and prefix, through google-cloud-storage.

    Compare-and-swap is `if_generation_match` on small objects uploaded in one request (multipart),
    which both GCS and fake-gcs-server enforce. Large blobs go up resumably; their create-only
    precondition is advisory (fake-gcs-server ignores it), which is harmless: a blob's name is its
    digest, so a second writer can only write the same bytes.

    Every call has one deadline, connect, reads and retries included: $MODELGATE_GCS_TIMEOUT
    seconds (a blob transfer: plus one second per MiB). Retries are ours, not the client's, so
    that each attempt gets only the time that is left.
    """

    def __init__(self, uri: RegistryURI):
        self.uri = str(uri)
        self._bucket_name = uri.bucket
        self._prefix = uri.prefix + "/" if uri.prefix else ""
        self._client = None
        self._bucket = None
        raw = os.environ.get(ENV_GCS_TIMEOUT) or str(DEFAULT_GCS_TIMEOUT_S)
        try:
            budget = float(raw)
        except ValueError:
            budget = float("nan")
        if not budget > 0 or budget == float("inf"):
            raise StorageError(f"${ENV_GCS_TIMEOUT} must be a positive number of seconds, got {raw!r}")
        self._budget = budget

    # google-cloud-storage is imported on first use: the local registry does not need it.
    def _bucket_handle(self):
        if self._bucket is None:
            with self._errors("connect"):
                from google.cloud import storage

                client = storage.Client()
                session = client._http
                session.mount("http://", _deadline_adapter())
                session.mount("https://", _deadline_adapter())
                self._client = client
                self._bucket = client.bucket(self._bucket_name)
        return self._bucket

    def _blob(self, key: str):
        return self._bucket_handle().blob(self._prefix + key)

    def _call(self, fn, *, size: int = 0, retry_if=None):
        """Runs fn(timeout) under one deadline, retrying transient failures while time is left."""
        from google.cloud.storage.retry import _should_retry

        bound = self._budget + size / TRANSFER_FLOOR_BYTES_PER_S
        deadline = _Deadline(bound)
        attempt = 0
        with deadline:
            while True:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise DeadlineExceeded(bound, None)
                try:
                    return fn((min(CONNECT_TIMEOUT_S, remaining), remaining))
                except Exception as e:  # noqa: BLE001 - classified here
                    if deadline.fired or deadline.remaining() <= 0:
                        raise DeadlineExceeded(bound, e, cut_off=deadline.fired) from e
                    if not _should_retry(e) or (retry_if is not None and not retry_if()):
                        raise
                    pause = min(1.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                    if pause >= deadline.remaining():
                        raise DeadlineExceeded(bound, e) from e
                    time.sleep(pause)
                    attempt += 1

    @contextlib.contextmanager
    def _errors(self, what: str):
        try:
            yield
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - translated below or re-raised
            message = _gcs_error_message(e, self._budget)
            if message is None:
                raise
            raise StorageError(f"{self.uri}: cannot {what}: {message}") from e

    def read(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes | None:
        found = self.read_versioned(key, limit)
        return None if found is None else found[0]

    def read_versioned(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> tuple[bytes, object] | None:
        """The object, asking for its first limit + 1 bytes only (a Range request): the size is
        checked before anything beyond the limit is downloaded, in the same request (no second
        round trip per read, no window between a size check and the download)."""
        from google.api_core.exceptions import NotFound, RequestRangeNotSatisfiable

        with self._errors(f"read {key}"):
            blob = self._blob(key)
            try:
                data = self._call(lambda t: blob.download_as_bytes(retry=None, timeout=t, raw_download=True, start=0, end=limit))
            except NotFound:
                return None
            except RequestRangeNotSatisfiable:  # an empty object has no byte 0: ask for its size
                try:
                    self._call(lambda t: blob.reload(retry=None, timeout=t))
                except NotFound:
                    return None
                if (blob.size or 0) > limit:
                    raise _too_large(key, self.uri, limit, blob.size) from None
                generation = blob.generation
                data = self._call(
                    lambda t: blob.download_as_bytes(retry=None, timeout=t, raw_download=True, if_generation_match=generation)
                )
            if len(data) > limit:
                raise _too_large(key, self.uri, limit, None)
        return data, blob.generation

    def exists(self, key: str) -> bool:
        with self._errors(f"read {key}"):
            blob = self._blob(key)
            return self._call(lambda t: blob.exists(retry=None, timeout=t))

    def _upload_small(self, key: str, data: bytes, generation: int) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        with self._errors(f"write {key}"):
            blob = self._blob(key)
            try:
                # Retried only with a precondition: a retry cannot overwrite what another writer wrote.
                self._call(
                    lambda t: blob.upload_from_string(
                        data, content_type="application/json", if_generation_match=generation, retry=None, timeout=t
                    )
                )
            except PreconditionFailed:
                return False
        return True

    def create(self, key: str, data: bytes) -> bool:
        return self._upload_small(key, data, 0)

    def swap(self, key: str, data: bytes, expected: object | None) -> bool:
        return self._upload_small(key, data, 0 if expected is None else int(expected))

    def put_file(self, key: str, path: Path, size: int, progress: Progress | None = None) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        if self.exists(key):
            return False
        with self._errors(f"upload {key}"), open(path, "rb") as f:
            blob = self._blob(key)
            if size > UPLOAD_CHUNK:
                blob.chunk_size = UPLOAD_CHUNK
            sent = [0]

            def upload(timeout):
                f.seek(0)
                if sent[0] and progress:
                    progress(-sent[0])  # a retry starts over
                sent[0] = 0

                def counted(n):
                    sent[0] += n
                    if progress:
                        progress(n)

                blob.upload_from_file(
                    _ProgressReader(f, counted),
                    size=size,
                    content_type="application/octet-stream",
                    if_generation_match=0,
                    retry=None,
                    timeout=timeout,
                )

            try:
                self._call(upload, size=size)
            except PreconditionFailed:
                return False
        return True

    def read_into(
        self, key: str, write: Callable[[bytes], None], size: int | None = None, *, transport_checksum: bool = True
    ) -> bool:
        from google.api_core.exceptions import NotFound

        written = [0]

        def sink(chunk: bytes) -> None:
            written[0] += len(chunk)
            write(chunk)

        with self._errors(f"read {key}"):
            blob = self._blob(key)
            try:
                # Bytes already handed to `write` cannot be taken back: retry only before the first.
                # The client's md5 of the download costs as much as a sha256; skipped where the
                # caller checks a stronger digest of every byte anyway.
                checksum = "md5" if transport_checksum else None
                self._call(
                    lambda t: blob.download_to_file(
                        _Sink(sink), retry=None, timeout=t, raw_download=True, checksum=checksum
                    ),
                    size=size or 0,
                    retry_if=lambda: written[0] == 0,
                )
            except NotFound:
                return False
        return True

    def read_hashed_into(self, key: str, target_fd: int, limit: int, algorithm: str = "sha256") -> tuple[int, str] | None:
        """Storage.read_hashed_into, reading the body a BUFFER at a time. The client's own download
        hands the body over 8 KiB at a time, each piece a trip through its stack and urllib3's
        (131072 per GiB): that was most of a verified fetch's time, more than the hash. The
        request is still the client's: its download URL for the blob (raw: the stored bytes,
        never decompressed) on its authorized session, under this call's deadline, retried only
        before the first byte; a status other than 200 is the client's exception for it."""
        from google.api_core import exceptions as api

        writer = transfer.HashingWriter(target_fd, limit, algorithm)
        try:
            with self._errors(f"read {key}"):
                blob = self._blob(key)

                def download(timeout) -> None:
                    url = blob._get_download_url(self._client)
                    response = self._client._http.request(
                        "GET", url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=timeout
                    )
                    with response:
                        if response.status_code != 200:
                            raise api.from_http_response(response)
                        while chunk := response.raw.read(transfer.BUFFER, decode_content=False):
                            writer.write(chunk)

                try:
                    self._call(download, size=limit, retry_if=lambda: writer.size == 0)
                except api.NotFound:
                    return None
            return writer.finish()
        finally:
            writer.close()

    def list(self, prefix: str) -> list[str]:
        with self._errors(f"list {prefix}"):
            bucket = self._bucket_handle()

            def names(timeout):
                blobs = self._client.list_blobs(bucket, prefix=self._prefix + prefix, retry=None, timeout=timeout)
                return sorted(b.name[len(self._prefix) :] for b in blobs)

            return self._call(names)

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._prefix + prefix
        with self._errors(f"list {prefix}"):
            bucket = self._bucket_handle()

            def dirs(timeout):
                pages = self._client.list_blobs(bucket, prefix=full, delimiter="/", retry=None, timeout=timeout)
                for _ in pages:  # prefixes are filled in as the pages are read
                    pass
                return sorted(p[len(full) :].rstrip("/") for p in pages.prefixes)

            return self._call(dirs)


class _ProgressReader:
    def __init__(self, f, progress: Progress):
        self._f, self._progress = f, progress

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._progress(len(data))
        return data

    def __getattr__(self, name):  # seek, tell, ... as the underlying file
        return getattr(self._f, name)


class _Sink:
    def __init__(self, write: Callable[[bytes], None]):
        self.write = write


def _gcs_error_message(e: Exception, budget: float) -> str | None:
    """One line for the errors a user can fix; None for everything else (a bug: keep the traceback)."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(e, auth.DefaultCredentialsError):
        return (
            "no Google Cloud credentials found: run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS (or STORAGE_EMULATOR_HOST for an emulator)"
        )
    if isinstance(e, auth.GoogleAuthError):
        return f"authentication failed: {_first_line(e)}"
    if isinstance(e, (DeadlineExceeded, api.RetryError)):
        bound = e.bound if isinstance(e, DeadlineExceeded) else budget
        if isinstance(e, DeadlineExceeded) and e.cut_off:
            cause = "cut off: connected, but the answer did not arrive in time"
        else:
            cause = type(e.cause).__name__ if e.cause is not None else "no response"
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "storage.googleapis.com"
        extra = f" ({budget:g}s + 1s per MiB transferred)" if bound != budget else ""
        return f"no answer from {endpoint} within {bound:g}s{extra} ({cause}); set ${ENV_GCS_TIMEOUT} to wait longer"
    if isinstance(e, api.Forbidden):
        return "permission denied (check the credentials' access to the bucket)"
    if isinstance(e, api.Unauthorized):
        return "not authorized (credentials rejected)"
    if isinstance(e, api.NotFound):
        return "not found (does the bucket exist?)"
    if isinstance(e, api.GoogleAPIError):
        return _first_line(e)
    if isinstance(e, (ConnectionError, TimeoutError, OSError)):
        return _first_line(e)
    try:
        import requests

        if isinstance(e, requests.RequestException):
            return _first_line(e)
    except ImportError:
        pass
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]

