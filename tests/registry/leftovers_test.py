"""No leftovers: killed promotes and fetches, a full disk, a tag write that fails after the commit.

Killed processes are forked children sent SIGKILL while they are writing (their writes are slowed
down so that the kill lands mid-file); the next run must leave 0 bytes of temporaries behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from modelgate.cli import fetch, promote
from modelgate.registry import transfer
from modelgate.registry import storage as storage_module
from modelgate.errors import StorageError

from modelgate.testing.cli import exit_code, fork, one_line_error, promote_ok, run
from modelgate.testing.releases import build_hash, make_bundle

M = "tiny_transformer"
KILLS = 20


def _quiet(main, argv) -> int:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return main(argv)


def _wait_readable(fd: int, timeout_s: float = 30) -> None:
    import select

    if not select.select([fd], [], [], timeout_s)[0]:
        raise AssertionError("the child never reached the write it was to be killed in")
    os.read(fd, 1)


def _kill_mid_write(body, ready_r: int, ready_w: int, delay_s: float) -> None:
    """Forks `body`, waits until it says it is inside the write, waits `delay_s` more, SIGKILLs it."""
    pid = fork(body)
    _wait_readable(ready_r)
    time.sleep(delay_s)
    os.kill(pid, signal.SIGKILL)
    exit_code(pid)
    os.close(ready_r)
    os.close(ready_w)


def _tree_bytes(path: Path) -> tuple[int, list[str]]:
    """Bytes and names of everything under `path` (files and directories)."""
    total, names = 0, []
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(dirpath) / name
            names.append(str(p.relative_to(path)))
            if p.is_file():
                total += p.stat().st_size
    return total, sorted(names)


def _slow_transfers(after_total, after_each=None) -> None:
    """In a forked child: every write of modelgate.registry.transfer (kernel copies and buffered
    writes) then calls after_total(bytes written so far) or after_each(so far, just written)."""
    real_send, real_write = transfer._send, transfer.write_all
    written = [0]

    def note(n):
        written[0] += n
        if after_each:
            after_each(written[0], n)
        else:
            after_total(written[0])

    def send(target_fd, source_fd, want):
        n = real_send(target_fd, source_fd, want)
        if n:
            note(n)
        return n

    def write(fd, view):
        real_write(fd, view)
        note(len(view))

    transfer._send, transfer.write_all = send, write


def test_killed_promotes_leave_nothing_after_the_next_run(tmp_path):
    uri = f"file://{tmp_path / 'registry'}"
    tmp_dir = tmp_path / "registry" / storage_module.TEMP_DIR
    rng = random.Random(16)
    left_by_kills = []
    for trial in range(KILLS):
        # Larger than one span of the copy (transfer.SPAN), so that the kill lands mid-file.
        bundle = make_bundle(tmp_path / "b", model=f"m{trial}", seed=1, weights_size=2 * transfer.SPAN)

        ready_r, ready_w = os.pipe()

        def body():
            def pause(n):  # once 2 MiB of the weights are written, a pause (the kill lands in it)
                if n >= 2 << 20 and not getattr(transfer, "_paused", False):
                    transfer._paused = True
                    os.write(ready_w, b".")
                    time.sleep(0.5)

            _slow_transfers(pause)
            return _quiet(promote.main, ["--tag=stable", f"--release={bundle}", f"--registry={uri}"])

        _kill_mid_write(body, ready_r, ready_w, rng.uniform(0.0, 0.3))
        # (each killed promote's own first write already swept the one before it)
        left_by_kills.append(_tree_bytes(tmp_dir)[0])
    before = _tree_bytes(tmp_dir)
    # The next run (any promote) sweeps what the killed ones left.
    promote_ok_rc = promote.main(["--tag=stable", f"--release={make_bundle(tmp_path / 'b', model='next')}", f"--registry={uri}"])
    after = _tree_bytes(tmp_dir)
    print(f"\n{KILLS} killed promotes: each left {min(left_by_kills)}-{max(left_by_kills)} bytes in {storage_module.TEMP_DIR}; "
          f"before the next promote {before[0]} bytes in {len(before[1])} file(s); after it: {after[0]} bytes, {len(after[1])} files")  # fmt: skip
    assert promote_ok_rc == 0
    # every kill landed mid-write and left its partial file: more than the pause's 2 MiB, less than the weights
    assert 2 << 20 <= min(left_by_kills) and max(left_by_kills) < 2 * transfer.SPAN
    assert after == (0, [])


def test_killed_fetches_leave_nothing_after_the_next_run(capsys, registry_uri, tmp_path):
    bundle = make_bundle(tmp_path / "b", weights_size=8 << 20)
    promote_ok(capsys, registry_uri, bundle)
    base = tmp_path / "deploy"
    base.mkdir()
    out = base / "a" / "b" / "out"  # two parents that fetch has to create
    argv = [f"--model={M}", "--tag=stable", f"--out={out}", f"--registry={registry_uri}"]
    rng = random.Random(20)
    landed = 0
    left_by_kills = []
    for trial in range(KILLS):

        ready_r, ready_w = os.pipe()

        def body():
            def slow(n, last):
                if n >= 1 << 20 and not getattr(transfer, "_told", False):
                    transfer._told = True
                    os.write(ready_w, b".")
                time.sleep(0.001 * last / 8192)  # about 0.13 s per MiB

            _slow_transfers(lambda n: None, slow)
            return _quiet(fetch.main, argv)

        _kill_mid_write(body, ready_r, ready_w, rng.uniform(0.0, 0.5))
        left_by_kills.append(_tree_bytes(base)[0])
        if out.exists():  # the kill came after the rename: a complete fetch, not a leftover
            import shutil

            shutil.rmtree(base / "a")
        else:
            landed += 1
    left = _tree_bytes(base)
    rc, _, err = run(capsys, fetch.main, *argv)
    assert rc == 0, err
    after = _tree_bytes(base)
    expected = _tree_bytes(out)
    print(f"\n{KILLS} killed fetches ({landed} mid-download): each left {min(left_by_kills)}-{max(left_by_kills)} bytes; "
          f"before the next fetch {left[0]} bytes in {len(left[1])} entries; "
          f"after the next fetch: {after[0] - expected[0]} bytes outside --out")  # fmt: skip
    assert landed >= KILLS // 2 and left[0] > 0
    assert not (base / "a").exists() or all(".fetch-" not in name for name in after[1])
    assert after[0] == expected[0]
    assert sorted(after[1]) == sorted(["a", "a/b", "a/b/out"] + [f"a/b/out/{n}" for n in expected[1]])


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a disk that fills up for real."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()[:100]}); the full-disk test needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_full_disk_promote_leaves_the_disk_as_it_was(capsys, small_disk, tmp_path):
    registry = small_disk / "registry"
    uri = f"file://{registry}"
    promote_ok(capsys, uri, make_bundle(tmp_path / "b", seed=1, weights_size=64 << 10))
    (small_disk / "filler").write_bytes(b"\0" * (5 << 20))
    before_free, before_tree = _free(small_disk), _tree_bytes(small_disk)
    big = make_bundle(tmp_path / "b", seed=2, weights_size=4 << 20, accuracy=0.96)
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={big}", f"--registry={uri}")
    line = one_line_error(err)
    assert rc == 1 and out == "" and "not enough space" in line and "nothing was written" in line
    assert (_free(small_disk), _tree_bytes(small_disk)) == (before_free, before_tree)

    # The same disk filling up during the copy (another writer took the space): the failed
    # write's temporary file is removed, so the disk is as it was and the next promote can run.
    store = storage_module.LocalStorage(registry)
    source = big / "weights.safetensors"
    with pytest.raises(StorageError, match="No space left on device"):
        store.put_file("blobs/sha256/" + "e" * 64, source, source.stat().st_size)
    assert (_free(small_disk), _tree_bytes(small_disk)) == (before_free, before_tree)
    (small_disk / "filler").unlink()
    promote_ok(capsys, uri, big)


def _fail_pointer_writes(cls, tag: str):
    """GCS: fake-gcs-server cannot be made to fail one object's writes, so the failure is injected."""
    real_swap = cls.swap

    def swap(self, key, data, expected):
        if key.endswith(f"/tags/{tag}.json"):
            raise StorageError(f"{self.uri}: cannot write {key}: injected failure")
        return real_swap(self, key, data, expected)

    cls.swap = swap

    def undo():
        cls.swap = real_swap

    return undo


def test_a_tag_write_failing_after_the_commit_is_reported_as_committed(capsys, registry_uri, registry, tmp_path):
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a)
    tag = "beta"
    if registry_uri.startswith("file://"):
        # A real failure: the pointer's name is taken by a directory, so its rename fails.
        obstacle = registry.storage.root / registry.tag_key(M, tag)
        obstacle.mkdir(parents=True)
        undo = obstacle.rmdir
    else:
        undo = _fail_pointer_writes(type(registry.storage), tag)
    try:
        rc, out, err = run(capsys, promote.main, f"--tag={tag}", f"--release={b}", f"--registry={registry_uri}")
    except BaseException:
        undo()
        raise
    assert rc == 3, err
    assert "committed; tag will be settled by the next promote" in out
    assert err.strip().splitlines() == [f"promote: warning: {M}: committed; tag will be settled by the next promote"]
    # Readers already resolve the tag to the committed event.
    rc, _, err = run(capsys, fetch.main, f"--model={M}", f"--tag={tag}", f"--out={tmp_path / 'o'}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["build_hash"] == build_hash(b)
    undo()
    assert promote_ok(capsys, registry_uri, b, tag=tag)[0]["status"] == "unchanged"
    assert registry.read_pointer(M, tag).build_hash == build_hash(b)

