"""Temporary files and directories that a killed process cannot clean up, and how the next run does.

Every temporary name carries its writer's pid, and the writer holds an exclusive flock on it for as
long as it lives (the kernel drops the lock when the process dies, however it dies). A later run
removes a temporary that nobody holds whose writer is gone, or that is older than any run could
take (STALE_AFTER_S: a pid may have been reused). A temporary whose writer is alive is never
touched, so a sweep cannot break a slow promote or fetch running next to it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path

STALE_AFTER_S = 24 * 3600
_PID = re.compile(r"(\d+)-[0-9a-f]{16}$")


def temp_name(prefix: str = "") -> str:
    return f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:16]}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        total = 0
        for dirpath, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def is_abandoned(path: Path) -> bool:
    """True when no live process holds `path` (a temporary made by this module)."""
    match = _PID.search(path.name)
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        return False
    if match and _pid_alive(int(match.group(1))) and age < STALE_AFTER_S:
        return False
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its writer still holds it
    finally:
        os.close(fd)
    return True


def remove(path: Path) -> int:
    """Removes a temporary file or directory; returns the bytes it held."""
    size = _size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            return 0
    return size


def sweep(directory: Path, pattern: re.Pattern) -> int:
    """Removes the abandoned temporaries in `directory` whose names match `pattern`; returns the
    bytes freed. Errors (a read-only directory, a race with another sweeper) are ignored."""
    freed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        path = Path(entry.path)
        if pattern.fullmatch(entry.name) and is_abandoned(path):
            freed += remove(path)
    return freed


def sweep_files(directory: Path, pattern: re.Pattern) -> int:
    """Removes the abandoned temporary *files* in `directory` whose names match `pattern` (which
    must capture the writer's pid as its first group); returns the bytes freed. Nothing is
    followed: `directory` is opened with O_NOFOLLOW (a symbolic link there sweeps nothing), and
    every entry is looked at, opened and removed relative to that open directory, so that
    replacing a name with a link or a directory meanwhile makes the entry skipped, not followed.
    Only regular files are removed; directories, links, FIFOs and the like are left alone."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0
    freed = 0
    try:
        for entry in os.scandir(dir_fd):
            if pattern.fullmatch(entry.name):
                freed += _sweep_file(dir_fd, entry.name)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return freed


def _sweep_file(dir_fd: int, name: str) -> int:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return 0
    if not stat.S_ISREG(st.st_mode):
        return 0
    match = _PID.search(name)
    if match and _pid_alive(int(match.group(1))) and time.time() - st.st_mtime < STALE_AFTER_S:
        return 0
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return 0
    try:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode) or (held.st_dev, held.st_ino) != (st.st_dev, st.st_ino):
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return 0  # its writer still holds it
            raise
        os.unlink(name, dir_fd=dir_fd)  # still holding the lock: no writer can take it meanwhile
        return held.st_size
    except OSError:
        return 0
    finally:
        os.close(fd)


class Held:
    """An open, flocked handle on a temporary; keep it until the temporary is renamed or removed."""

    def __init__(self, path: Path):
        self.path = path
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        self.fd = os.open(path, flags)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def make_dir(parent: Path, prefix: str) -> Held:
    """A new temporary directory `parent/<prefix><pid>-<random>`, held by this process."""
    path = parent / temp_name(prefix)
    path.mkdir(mode=0o700)
    return Held(path)
