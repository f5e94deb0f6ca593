"""The local-directory backend (file:// registries and checkpoint sources): LocalStorage, the
parse of a file:/// registry URI, and the reader of a file:// source.

Create-only writes link(2) a finished temporary into place, compare-and-swap renames one under a
lock, so readers never see a partial object. The backend opens only regular files and follows no
symbolic link below the registry's root: a FIFO, a device or a link in place of an object is
refused (ObjectRefused) instead of blocking the reader or reading something else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import urllib.parse
from pathlib import Path

from modelgate.errors import StorageError, UsageError

from .. import leftovers, transfer
from .base import CHUNK, DEFAULT_READ_LIMIT, ObjectRefused, Progress, RegistryURI, Staged, Storage, Write, too_large

TEMP_DIR = ".tmp"
LOCK_DIR = ".locks"
# The only names LocalStorage gives its temporaries (leftovers.temp_name): the sweep touches nothing else.
_TEMP_NAME = re.compile(r"\d+-[0-9a-f]{16}")


def parse_uri(text: str, rest: str, form: str) -> RegistryURI:
    """file:///ABSOLUTE/PATH (or file://localhost/...): `rest` is what follows "file:"."""
    if not rest.startswith("//"):
        raise UsageError(f"malformed registry URI {text!r}: expected {form}")
    host, slash, path = rest[2:].partition("/")
    if host not in ("", "localhost") or not slash:
        raise UsageError(f"registry URI {text!r} is not an absolute path: write {form} (three slashes)")
    path = "/" + path
    if any(part in (".", "..") for part in path.split("/")):
        raise UsageError(f"registry URI {text!r}: '.' and '..' are not allowed in the path")
    return RegistryURI(scheme="file", path=Path(os.path.normpath(path)))


def read_source(source: str, write: Write, **_) -> None:
    """A file:// checkpoint source: a local path."""
    parsed = urllib.parse.urlparse(source)
    if parsed.netloc not in ("", "localhost"):
        raise OSError(f"file:// URIs name a local path (got host {parsed.netloc!r})")
    read_file(Path(urllib.parse.unquote(parsed.path)), write)


def read_file(path: Path, write: Write) -> None:
    """Hands a local file's bytes to `write`; OSError with a short reason if it cannot be read."""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                write(chunk)
    except FileNotFoundError:
        raise OSError("no such file") from None
    except IsADirectoryError:
        raise OSError("is a directory") from None


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

    @classmethod
    def from_uri(cls, uri: RegistryURI) -> "LocalStorage":
        return cls(uri.path, str(uri))

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
                    raise too_large(key, self.uri, limit, size)
                data = f.read(limit + 1)  # the file may have grown since fstat
                if len(data) > limit:
                    raise too_large(key, self.uri, limit, None)
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
    def staged_copy(self, source_fd: int, limit: int, source: Path, algorithm: str = "sha256"):
        """Copies an open file into a new temporary, hashing it (by `algorithm`) in the same pass,
        and fsyncs it. Yields a Staged (where, and the size and digest of what was written) for
        `put_staged`; nothing is visible under any key until then, and the temporary is removed
        unless linked. transfer.TooLarge past `limit` bytes. What is checked is the copy, so the
        source changing afterwards cannot slip unchecked bytes into the registry."""
        with contextlib.ExitStack() as stack:
            with self._errors(f"write a copy of {source}"):
                temp, f = stack.enter_context(self._temp())
                size, digest = transfer.copy_hashed(source_fd, f.fileno(), limit, writeback=True, algorithm=algorithm)
                self._finish(f, temp, 0o444)
            yield Staged(temp, size, digest, algorithm)

    def put_staged(self, key: str, staged: Staged, progress: Progress | None = None) -> bool:
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
        self, key: str, write: Write, size: int | None = None, *, transport_checksum: bool = True
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

    def overwrite(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.chmod(0o644)  # objects are written read-only
        path.write_bytes(data)

    def delete(self, key: str) -> None:
        self._path(key).unlink()

    def source_uri(self, key: str) -> str:
        return self._path(key).as_uri()


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

