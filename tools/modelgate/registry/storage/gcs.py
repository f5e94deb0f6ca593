"""The Google Cloud Storage backend (gs:// registries and checkpoint sources): GCSStorage, the
deadline every call runs under, the parse of a gs:// registry URI and the reader of a gs:// source.

google-cloud-storage is imported on first use: a local registry does not need it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time
from pathlib import Path

from modelgate.errors import ModelgateError, StorageError, UsageError

from .. import transfer
from .base import DEFAULT_READ_LIMIT, Progress, RegistryURI, Storage, Write, too_large

# GCS bucket names: 3-63 characters of lowercase letters, digits, '-', '_' and '.'.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


def parse_uri(text: str, rest: str, form: str) -> RegistryURI:
    """gs://BUCKET[/PREFIX]: `rest` is what follows "gs:"."""
    if not rest.startswith("//"):
        raise UsageError(f"malformed registry URI {text!r}: expected {form}")
    bucket, _, prefix = rest[2:].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UsageError(f"malformed registry URI {text!r}: {bucket!r} is not a valid GCS bucket name")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise UsageError(f"malformed registry URI {text!r}: empty, '.' or '..' path segment in the prefix")
    return RegistryURI(scheme="gs", bucket=bucket, prefix=prefix)


def read_source(source: str, write: Write, **_) -> None:
    """A gs://BUCKET/OBJECT checkpoint source, through the registry's client: Application Default
    Credentials (or $STORAGE_EMULATOR_HOST), one deadline per call, one-line errors."""
    rest = source[len("gs://") :]
    bucket, _, name = rest.partition("/")
    if not bucket or not name:
        raise OSError("expected gs://BUCKET/OBJECT")
    try:
        found = GCSStorage(RegistryURI(scheme="gs", bucket=bucket)).read_into(name, write)
    except ModelgateError as e:
        raise OSError(str(e)) from None
    if not found:
        raise OSError("no such object")


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
                    raise too_large(key, self.uri, limit, blob.size) from None
                generation = blob.generation
                data = self._call(
                    lambda t: blob.download_as_bytes(retry=None, timeout=t, raw_download=True, if_generation_match=generation)
                )
            if len(data) > limit:
                raise too_large(key, self.uri, limit, None)
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
        self, key: str, write: Write, size: int | None = None, *, transport_checksum: bool = True
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

    def overwrite(self, key: str, data: bytes) -> None:
        with self._errors(f"write {key}"):
            blob = self._blob(key)
            if len(data) > 8 << 20:
                blob.chunk_size = 8 << 20  # a test's oversized object goes up resumably
            blob.upload_from_string(data)

    def delete(self, key: str) -> None:
        with self._errors(f"delete {key}"):
            self._blob(key).delete()


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
    def __init__(self, write: Write):
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


