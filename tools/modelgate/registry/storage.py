"""One storage interface, two backends: a local directory and Google Cloud Storage.

The registry needs only a few primitives, and every write is conditional:

- `create(key, data)`: create-only. Manifests and history events are written once.
- `swap(key, data, expected)`: compare-and-swap on a small object (tag pointers). `expected` is the
  version returned by `read_versioned`, or None for "must not exist yet".
- `put_file(key, path, ...)`: create-only upload of a (possibly large) file; bytes appear all at once.

Readers never see a partial object: the local backend writes a temporary file and links or renames
it into place; GCS makes an object visible only once its upload completes.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .errors import StorageError
from .uri import RegistryURI

CHUNK = 1 << 20
Progress = Callable[[int], None]  # called with the number of bytes just transferred


class Storage(abc.ABC):
    """Flat keys ("models/m/tags/stable.json") to bytes, relative to the registry root."""

    uri: str

    @abc.abstractmethod
    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""

    @abc.abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, object] | None:
        """The bytes and an opaque version for `swap`, or None if the object does not exist."""

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
    def read_into(self, key: str, write: Callable[[bytes], None]) -> bool:
        """Streams the object to `write` chunk by chunk. False if it does not exist."""

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

    Temporary files live in <root>/.tmp and locks in <root>/.locks, outside every listed prefix, so
    a process killed mid-write leaves at most an unreferenced temporary file behind.
    """

    def __init__(self, root: Path, uri: str | None = None):
        self.root = Path(root)
        self.uri = uri or f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def _errors(self, what: str):
        try:
            yield
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot {what}: {e.strerror or e}") from e

    def read(self, key: str) -> bytes | None:
        with self._errors(f"read {key}"):
            try:
                return self._path(key).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None

    def read_versioned(self, key: str) -> tuple[bytes, object] | None:
        data = self.read(key)
        # Pointers carry a sequence number, so their bytes never repeat: the digest is a safe version.
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _temp(self) -> Path:
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / uuid.uuid4().hex

    def _write_temp(self, data_chunks, mode: int) -> Path:
        temp = self._temp()
        with open(temp, "wb") as f:
            for chunk in data_chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, mode)
        return temp

    def _link_into_place(self, temp: Path, key: str) -> bool:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(temp, final)  # atomic, and fails if the name exists: create-only
            created = True
        except FileExistsError:
            created = False
        finally:
            temp.unlink()
        if created:
            _fsync_dir(final.parent)
        return created

    def create(self, key: str, data: bytes) -> bool:
        with self._errors(f"write {key}"):
            if self._path(key).exists():
                return False
            return self._link_into_place(self._write_temp([data], 0o444), key)

    @contextlib.contextmanager
    def _lock(self, key: str):
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / (key.replace("/", "%") + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released by the kernel if the process dies
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def swap(self, key: str, data: bytes, expected: object | None) -> bool:
        with self._errors(f"write {key}"):
            with self._lock(key):
                current = self.read_versioned(key)
                if (current[1] if current else None) != expected:
                    return False
                temp = self._write_temp([data], 0o644)
                final = self._path(key)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, final)
                _fsync_dir(final.parent)
                return True

    def put_file(self, key: str, path: Path, size: int, progress: Progress | None = None) -> bool:
        with self._errors(f"write {key}"):
            if self._path(key).exists():
                return False

            # A kernel-side copy (sendfile): copying through Python in 1 MiB chunks made a 1 GiB
            # promote 6x slower than shutil.copyfile. The bytes were verified by the caller.
            temp = self._temp()
            shutil.copyfile(path, temp)
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(temp, 0o444)
            if progress:
                progress(size)
            return self._link_into_place(temp, key)

    def read_into(self, key: str, write: Callable[[bytes], None]) -> bool:
        with self._errors(f"read {key}"):
            try:
                f = open(self._path(key), "rb")
            except FileNotFoundError:
                return False
            with f:
                while chunk := f.read(CHUNK):
                    write(chunk)
            return True

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
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
                return sorted(e.name for e in os.scandir(self._path(prefix)) if e.is_dir() and not e.name.startswith("."))
            except FileNotFoundError:
                return []


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
DEFAULT_GCS_TIMEOUT_S = 10.0  # total retry budget of one call: a dead endpoint fails in seconds
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0
# Resumable-upload chunk for large blobs (a multiple of 256 KiB): the client's own default. Each
# chunk is a request; 16 MiB chunks made a 1 GiB promote 2.6x slower than upload_from_filename.
UPLOAD_CHUNK = 100 << 20


class GCSStorage(Storage):
    """A bucket and prefix, through google-cloud-storage.

    Compare-and-swap is `if_generation_match` on small objects uploaded in one request (multipart),
    which both GCS and fake-gcs-server enforce. Large blobs go up resumably; their create-only
    precondition is advisory (fake-gcs-server ignores it), which is harmless: a blob's name is its
    digest, so a second writer can only write the same bytes.
    """

    def __init__(self, uri: RegistryURI):
        self.uri = str(uri)
        self._bucket_name = uri.bucket
        self._prefix = uri.prefix + "/" if uri.prefix else ""
        self._client = None
        self._bucket = None
        try:
            budget = float(os.environ.get(ENV_GCS_TIMEOUT, DEFAULT_GCS_TIMEOUT_S))
        except ValueError:
            raise StorageError(f"${ENV_GCS_TIMEOUT} must be a number of seconds") from None
        self._budget = budget
        self._timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        self._retry = None

    # google-cloud-storage is imported on first use: the local registry does not need it.
    def _bucket_handle(self):
        if self._bucket is None:
            with self._errors("connect"):
                from google.cloud import storage
                from google.cloud.storage.retry import DEFAULT_RETRY

                self._retry = DEFAULT_RETRY.with_timeout(self._budget)
                self._client = storage.Client()
                self._bucket = self._client.bucket(self._bucket_name)
        return self._bucket

    def _blob(self, key: str):
        return self._bucket_handle().blob(self._prefix + key)

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

    def read(self, key: str) -> bytes | None:
        found = self.read_versioned(key)
        return None if found is None else found[0]

    def read_versioned(self, key: str) -> tuple[bytes, object] | None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(key)
        with self._errors(f"read {key}"):
            try:
                data = blob.download_as_bytes(retry=self._retry, timeout=self._timeout, raw_download=True)
            except NotFound:
                return None
        return data, blob.generation

    def exists(self, key: str) -> bool:
        blob = self._blob(key)
        with self._errors(f"read {key}"):
            return blob.exists(retry=self._retry, timeout=self._timeout)

    def _upload_small(self, key: str, data: bytes, generation: int) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob(key)
        with self._errors(f"write {key}"):
            try:
                blob.upload_from_string(
                    data,
                    content_type="application/json",
                    if_generation_match=generation,
                    retry=self._retry,
                    timeout=self._timeout,
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
        blob = self._blob(key)
        if size > UPLOAD_CHUNK:
            blob.chunk_size = UPLOAD_CHUNK
        with self._errors(f"upload {key}"), open(path, "rb") as f:
            try:
                blob.upload_from_file(
                    _ProgressReader(f, progress) if progress else f,
                    size=size,
                    content_type="application/octet-stream",
                    if_generation_match=0,
                    retry=self._retry,
                    timeout=self._timeout,
                )
            except PreconditionFailed:
                return False
        return True

    def read_into(self, key: str, write: Callable[[bytes], None]) -> bool:
        from google.api_core.exceptions import NotFound

        with self._errors(f"read {key}"):
            try:
                self._blob(key).download_to_file(
                    _Sink(write), retry=self._retry, timeout=self._timeout, raw_download=True
                )
            except NotFound:
                return False
        return True

    def list(self, prefix: str) -> list[str]:
        bucket = self._bucket_handle()
        with self._errors(f"list {prefix}"):
            blobs = self._client.list_blobs(
                bucket, prefix=self._prefix + prefix, retry=self._retry, timeout=self._timeout
            )
            return sorted(b.name[len(self._prefix) :] for b in blobs)

    def list_dirs(self, prefix: str) -> list[str]:
        bucket = self._bucket_handle()
        full = self._prefix + prefix
        with self._errors(f"list {prefix}"):
            pages = self._client.list_blobs(
                bucket, prefix=full, delimiter="/", retry=self._retry, timeout=self._timeout
            )
            for _ in pages:  # prefixes are filled in as the pages are read
                pass
            return sorted(p[len(full) :].rstrip("/") for p in pages.prefixes)


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
    if isinstance(e, api.RetryError):
        cause = type(e.cause).__name__ if e.cause is not None else "no response"
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "storage.googleapis.com"
        return f"no answer from {endpoint} within {budget:g}s ({cause}); set ${ENV_GCS_TIMEOUT} to wait longer"
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

