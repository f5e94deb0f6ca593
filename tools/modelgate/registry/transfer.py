"""Copying bytes while hashing them: one pass over the data, the digest on a second thread.

Promote and fetch must check every byte against a digest (the release manifest's, the signed
build manifest's): its blake3 where the manifest lists one, else its sha256 (modelgate.digests:
sha256 addresses a blob, blake3 verifies it; both are signed). blake3 hashes about 3.5x faster on
one thread, so on two cores the hash keeps up with the copy instead of holding it back.

Hashing first and copying afterwards reads everything twice from memory. Here a file is copied by
the kernel span by span, and a second thread reads each span of the target back as it lands,
while it is still in the CPU's cache, and hashes it; a stream (a download) is gathered into
buffers that are written and then hashed on the second thread.
Both hashers release the GIL on large updates, so on two cores the copy and the hash overlap;
blake3 is held to one thread (the copy needs the other core).

What is hashed is what was written (the target's bytes, or the very buffer written), never a
second read of the source, so a source that changes during the copy cannot slip unverified
bytes through: the digest describes exactly the bytes that landed in the target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading

from modelgate import digests

# Files: the kernel copies SPAN bytes at a time, and the hashing thread reads each copied span
# back from the target in HASH_CHUNK pieces (one reused buffer that stays in the core's L2 cache)
# while the next span is copied. At most SPANS_IN_FLIGHT spans are copied but not yet hashed, so
# what the hash reads back was written a moment before and is still in the L3 cache. Through a
# mapping of the target instead (an earlier version) the hash fetched every byte from memory
# again and took as long as the copy: for 1 GiB on 2 cores, the hashing thread was busy 0.33 s
# beside the copy's 0.32 s that way, and 0.26 s (0.08 s reading back, 0.18 s hashing) this way.
# Each span costs a hand-over between the threads (a queue, a semaphore, the GIL); 8 MiB spans
# (two in flight, 16 MiB: less than the L3 cache of the machines measured) hand over 128 times
# per GiB. Best of 9 for 1 GiB on 2 cores (Intel Xeon, 2026-12-02), beside 0.277 s for
# shutil.copyfile: 0.300 s with 2 MiB spans, 0.291 s with 4 MiB, 0.287 s with 8 MiB.
SPAN = 8 << 20
SPANS_IN_FLIGHT = 2
HASH_CHUNK = 512 << 10
# Streams (downloads) and the fallback: 1 MiB buffers, written and hashed while still in the
# CPU's cache; 4 of them keep both threads busy.
BUFFER = 1 << 20
BUFFERS = 4


class TooLarge(Exception):
    """More bytes arrived than the caller allowed; nothing beyond the limit was written."""

    def __init__(self, limit: int):
        super().__init__(f"more than {limit} bytes")
        self.limit = limit


def write_all(fd: int, view: memoryview) -> None:
    """Writes every byte of `view` to the file descriptor (os.write may write less)."""
    while view:
        view = view[os.write(fd, view) :]


class _Hasher:
    """The digest (`algorithm`: modelgate.digests) of the buffers submitted, in order, on its own
    thread; buffers come from a small pool and return to it once hashed, so the producer never
    overwrites bytes not yet hashed."""

    def __init__(self, algorithm: str = "sha256"):
        self.hash = digests.new(algorithm)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(bytearray(BUFFER))
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=algorithm, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, n = item
            try:
                self.hash.update(memoryview(buf)[:n])
            finally:
                self._free.put(buf)

    def buffer(self) -> bytearray:
        return self._free.get()

    def give_back(self, buf: bytearray) -> None:
        self._free.put(buf)

    def submit(self, buf: bytearray, n: int) -> None:
        self._todo.put((buf, n))

    def hexdigest(self) -> str:
        """Waits for every submitted buffer; the hasher is finished afterwards."""
        self.close()
        return self.hash.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# A copy that will be fsynced asks the kernel to start writing each WRITEBACK bytes to disk as
# soon as they are hashed (sync_file_range(2), SYNC_FILE_RANGE_WRITE: a hint that does not wait
# for the disk, though it may wait for room in the disk's queue), so that the disk works while
# the copy and the hash go on and the final fsync waits only for the tail; without it the disk
# starts at the fsync and the two times add up. Durability still comes from the fsync alone.
WRITEBACK = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = None


def _start_writeback(fd: int, offset: int, length: int) -> None:
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _sync_file_range = fn
        except (OSError, AttributeError):  # not Linux: the fsync does it all
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # an error here only loses the head start


def copy_hashed(
    source_fd: int, target_fd: int, limit: int | None = None, *, writeback: bool = False, algorithm: str = "sha256"
) -> tuple[int, str]:
    """Copies from one file descriptor to another until end of file; (bytes, hex digest by
    `algorithm`: "sha256" or "blake3") of what was written. TooLarge when more than `limit` bytes
    arrive (at most one byte past it is written). `writeback`: the caller will fsync the target;
    start the disk writing early.

    The kernel copies (sendfile(2), none of it through Python), and the hashing thread reads each
    copied span of the *target* back (pread(2), from the page cache while the span is still in the
    CPU's cache) and hashes it: the digest is of the bytes that landed. `target_fd` must be open
    for reading too. The copy is the slower of the two: the hashing thread waits for spans. Where
    sendfile refuses the pair, a copy through Python buffers does the same.
    The hashing thread also starts the write-back of what it has hashed: sync_file_range can
    block on a busy disk, and on the copying thread it held the copy back (a 1 GiB promote's copy,
    hash and fsync took 0.56 s that way, 0.48 s this way, on 2 cores)."""
    total = 0
    spans: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.Semaphore(SPANS_IN_FLIGHT)
    digest = digests.new(algorithm)
    failed: list[BaseException] = []

    def hash_spans() -> None:
        buf = memoryview(bytearray(HASH_CHUNK))
        started = 0
        while (item := spans.get()) is not None:
            start, end = item
            try:
                if not failed:
                    _hash_back(digest, target_fd, buf, start, end)
                    if writeback and end - started >= WRITEBACK:
                        _start_writeback(target_fd, started, end - started)
                        started = end
            except BaseException as e:  # noqa: BLE001 - handed to the copying thread
                failed.append(e)
            finally:
                slots.release()

    hasher = threading.Thread(target=hash_spans, name=algorithm, daemon=True)
    hasher.start()
    try:
        while True:
            want = SPAN if limit is None else min(SPAN, limit + 1 - total)
            n = _send(target_fd, source_fd, want)
            if n is None:  # sendfile refused this pair (an unusual file system): through Python
                if total:
                    raise OSError(errno.EIO, "sendfile failed mid-copy")
                spans.put(None)
                hasher.join()
                return _copy_hashed_buffers(source_fd, target_fd, limit, algorithm)
            if not n:
                break
            slots.acquire()
            spans.put((total, total + n))
            total += n
            if limit is not None and total > limit:
                raise TooLarge(limit)
            if n < want:
                break
    finally:
        if hasher.is_alive():
            spans.put(None)
            hasher.join()
    if failed:
        raise failed[0]
    return total, digest.hexdigest()


def _hash_back(digest, fd: int, buf: memoryview, start: int, end: int) -> None:
    """Adds bytes [start, end) of file `fd` to `digest`, read back through `buf`."""
    while start < end:
        n = os.preadv(fd, [buf[: min(len(buf), end - start)]], start)
        if not n:
            raise OSError(errno.EIO, "the copy's target shrank while it was being hashed")
        digest.update(buf[:n])
        start += n


def _send(target_fd: int, source_fd: int, want: int) -> int | None:
    """Up to `want` bytes from the source's position by sendfile, fewer only at end of file;
    None where sendfile does not work for these files (nothing was copied)."""
    done = 0
    while done < want:
        try:
            sent = os.sendfile(target_fd, source_fd, None, want - done)
        except OSError as e:
            if done == 0 and e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
                return None
            raise
        if not sent:
            break
        done += sent
    return done


def _copy_hashed_buffers(source_fd: int, target_fd: int, limit: int | None, algorithm: str = "sha256") -> tuple[int, str]:
    """copy_hashed through Python buffers: each is read, written, and hashed on the second thread."""
    total = 0
    with _Hasher(algorithm) as hasher:
        while True:
            buf = hasher.buffer()
            n = os.readv(source_fd, [buf])
            if not n:
                hasher.give_back(buf)
                break
            total += n
            if limit is not None and total > limit:
                hasher.give_back(buf)
                raise TooLarge(limit)
            write_all(target_fd, memoryview(buf)[:n])
            hasher.submit(buf, n)
        return total, hasher.hexdigest()


class HashingWriter:
    """A `write(chunk)` sink for streamed downloads (small chunks of any size): gathers them into
    the hasher's buffers, writes each full buffer to `target_fd` and hashes it on the second
    thread. `finish()` flushes the rest and returns (bytes, hex digest by `algorithm`) of what was
    written."""

    def __init__(self, target_fd: int, limit: int | None = None, algorithm: str = "sha256"):
        self.fd, self.limit = target_fd, limit
        self.size = 0
        self._hasher = _Hasher(algorithm)
        self._buf = self._hasher.buffer()
        self._used = 0

    def write(self, chunk) -> None:
        view = memoryview(chunk).cast("B")
        if self.limit is not None and self.size + len(view) > self.limit:
            raise TooLarge(self.limit)
        self.size += len(view)
        while view:
            n = min(len(view), BUFFER - self._used)
            self._buf[self._used : self._used + n] = view[:n]
            self._used += n
            view = view[n:]
            if self._used == BUFFER:
                self._flush()
                self._buf = self._hasher.buffer()

    def _flush(self) -> None:
        write_all(self.fd, memoryview(self._buf)[: self._used])
        self._hasher.submit(self._buf, self._used)
        self._used = 0

    def finish(self) -> tuple[int, str]:
        if self._used:
            self._flush()
        else:
            self._hasher.give_back(self._buf)
        return self.size, self._hasher.hexdigest()

    def close(self) -> None:
        self._hasher.close()


# --------------------------------------------------------------------------------------------------
# Promote and fetch, file by file


class BlobCopies:
    """Which files of a promote are checked while they are copied, and those copies.

    Each missing blob is checked by its storage's `staged_copy` (Storage: a local registry copies,
    hashes and fsyncs it into its temporaries in one pass; GCS hashes the file where it is and
    uploads it from there); every such copy, of every bundle, is made and compared with the release
    manifest (its blake3 where it lists one, else its sha256) before the first blob is stored, so
    a file that does not match still leaves the registry as it was. Every other file (a blob the
    registry holds already, any file of a dry run, a second bundle's file of the same sha256 whose
    blake3 differs) is hashed by bundle.verify_files before anything is written, as before.
    """

    def __init__(self, registry, selected: list, *, dry_run: bool):
        self.registry = registry
        self.files: dict[str, object] = {}  # sha256 -> the first ReleaseFile with it
        self._skip: dict[object, set[str]] = {}  # bundle directory -> names checked while copied
        if dry_run:
            return
        for b in selected:
            for f in b.files:
                first = self.files.get(f.sha256)
                if first is None and registry.has_blob(f.sha256):
                    continue
                if first is not None and first.blake3 != f.blake3:
                    continue  # its own digest is not the one the copy is checked against
                self.files.setdefault(f.sha256, f)
                self._skip.setdefault(b.directory, set()).add(f.name)

    def checked_later(self, bundle) -> set[str]:
        """Names in `bundle` that verify_files may skip: staged() checks them."""
        return self._skip.get(bundle.directory, set())

    @contextlib.contextmanager
    def staged(self):
        """Makes and checks every copy (BundleError on a mismatch: nothing linked), then lets
        Registry.put_blob link them; whatever is not linked is removed on the way out."""
        from modelgate.errors import BundleError

        if not self.files:
            yield
            return
        with contextlib.ExitStack() as stack:
            for f in self.files.values():
                bundle_dir = f.path.parent
                algorithm, expected = f.verifier
                try:
                    fd = os.open(f.path, os.O_RDONLY)
                except FileNotFoundError:
                    raise BundleError(f"release bundle {bundle_dir}: {f.name} is listed but missing") from None
                try:
                    try:
                        staged = stack.enter_context(self.registry.storage.staged_copy(fd, f.size, f.path, algorithm))
                    except TooLarge:
                        size, digest = max(os.fstat(fd).st_size, f.size + 1), "(not hashed)"
                    else:
                        size, digest = staged.size, staged.digest
                finally:
                    os.close(fd)
                if size != f.size or digest != expected:
                    raise BundleError(
                        f"release bundle {bundle_dir}: {f.name} does not match its manifest "
                        f"(size {size} vs {f.size}, {algorithm} {digest[:12]} vs {expected[:12]})"
                    )
                self.registry.staged[f.sha256] = staged
            try:
                yield
            finally:
                for sha256 in self.files:
                    self.registry.staged.pop(sha256, None)


def fetch_file(registry, name: str, spec: dict, path) -> None:
    """Writes blob spec["sha256"] to a new file at `path`, hashing it on the way, and raises
    VerificationError, in one line, unless what was written is exactly spec's size and digest:
    its blake3 where the signed manifest lists one, else its sha256 (modelgate.digests).

    The file is not fsynced: see api.fetch (the caller renames the directory into place only when
    every file matched; a crash before that leaves a temporary that the next fetch sweeps)."""
    from modelgate.errors import VerificationError

    algorithm, expected = digests.verifier(spec)
    with open(path, "w+b", buffering=0) as f:  # readable too: copy_hashed reads back what it wrote
        try:
            got = registry.read_blob_hashed_into(spec["sha256"], f.fileno(), spec["size"], algorithm)
        except TooLarge:
            raise VerificationError(f"{name} is larger than its manifest says ({spec['size']} bytes)") from None
    if got is None:
        raise VerificationError(f"{name}: blob {spec['sha256'][:12]} is missing from {registry.uri}")
    size, digest = got
    if size != spec["size"] or digest != expected:
        raise VerificationError(
            f"{name} does not match the signed manifest (got {size} bytes, {algorithm} {digest[:12]}; "
            f"expected {spec['size']} bytes, {algorithm} {expected[:12]})"
        )
