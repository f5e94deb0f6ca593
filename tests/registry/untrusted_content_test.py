"""What someone who can write to a registry, but holds no signing key, can make the commands do.

Each case plants something in the registry behind modelgate's back and runs the commands a user
would: nothing planted may decide what a command deletes, promotes or reads past its bounds, and
each refusal is one line and exit 1 (issue 28):
  - a symlinked (or otherwise foreign) <registry>/.tmp: the stale-temporaries sweep follows
    nothing and removes only the writer's own temporary files;
  - an edited baseline manifest: the regression gate refuses it (or --force --reason), `show`
    marks it and hides its metrics;
  - a FIFO, a link or a device in place of a pointer, event, manifest or blob: refused at once;
  - an object over its kind's size cap: refused before its bytes are read or downloaded;
  - a malformed config/notify.json after a committed rollback or promote: a warning, exit 0.
Every command runs under an alarm, so a reader that blocks fails its test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from modelgate.cli import fetch, promote
from modelgate.cli import registry as registry_cli
from modelgate.formats import canonical_json
from modelgate.registry import registry as registry_module

from modelgate.testing.cli import every_command, one_line_error, overwrite, promote_ok, run
from modelgate.testing.releases import build_hash, make_bundle

M = "tiny_transformer"
HANG_S = 20


@pytest.fixture(autouse=True)
def no_hang():
    """Fails a test whose command blocks (a FIFO opened without O_NONBLOCK) instead of hanging it:
    SIGALRM is sent to the main thread itself, so that the blocked system call is the one it
    interrupts (a process-wide alarm may land on another thread and interrupt nothing)."""

    def hung(signum, frame):
        raise Hung(f"a command blocked for more than {HANG_S} s")

    previous = signal.signal(signal.SIGALRM, hung)
    main = threading.main_thread().ident
    done = threading.Event()

    def watchdog():
        timeout = HANG_S
        while not done.wait(timeout):
            signal.pthread_kill(main, signal.SIGALRM)
            timeout = 1  # again, in case the code under test swallowed it

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    yield
    done.set()
    thread.join()
    signal.signal(signal.SIGALRM, previous)


class Hung(BaseException):
    """Not an OSError (TimeoutError is one): code that handles OSError cannot swallow it."""


def _note(capsys, text: str) -> None:
    """Prints past pytest's capture (capsys is how the commands' own output is read)."""
    with capsys.disabled():
        print(text)


def _timed(capsys, main, *argv):
    start = time.monotonic()
    rc, out, err = run(capsys, main, *argv)
    return rc, out, err, time.monotonic() - start


def _two_builds(capsys, uri, tmp_path):
    """stable: a (0.95), then b (0.96). Returns (a, b, c): c is a third, good build (0.97)."""
    a = make_bundle(tmp_path / "b", seed=1, accuracy=0.95)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, uri, a)
    promote_ok(capsys, uri, b)
    return a, b, make_bundle(tmp_path / "b", seed=3, accuracy=0.97)


def _blob_of(bundle: Path, name: str = "weights.safetensors") -> str:
    return json.loads((bundle / "manifest.json").read_text())["files"][name]["sha256"]


def _history_len(registry) -> int:
    return len(registry.history_seqs(M))


# --- 1. the sweep of stale temporaries --------------------------------------------------------


def _victim(root: Path) -> dict[str, bytes]:
    """Files a sweep must never touch, some named like modelgate's own temporaries."""
    files = {"keep.txt": b"precious", "12345-0123456789abcdef": b"named like a temporary", "sub/999999-fedcba9876543210": b"deeper"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _assert_intact(root: Path, files: dict[str, bytes]) -> None:
    assert {name: (root / name).read_bytes() for name in files} == files


def test_a_symlinked_tmp_is_never_followed(capsys, tmp_path):
    uri = f"file://{tmp_path / 'reg'}"
    a = make_bundle(tmp_path / "b", seed=1)
    promote_ok(capsys, uri, a)
    victim = tmp_path / "victim"
    files = _victim(victim)
    tmp = tmp_path / "reg" / ".tmp"
    os.rmdir(tmp)
    tmp.symlink_to(victim)

    # A promote that writes nothing: the sweep is skipped with a warning, nothing is deleted.
    rc, out, err, seconds = _timed(capsys, promote.main, "--tag=stable", f"--release={a}", f"--registry={uri}")
    _note(capsys, f"\nno-op promote, .tmp -> victim: rc {rc} in {seconds:.2f}s: {err.strip()}")
    assert rc == 0 and "already names" in out
    assert "warning: not sweeping temporaries" in one_line_error(err) and ".tmp is a symbolic link" in err
    _assert_intact(victim, files)

    # A promote that must write a temporary: refused in one line, nothing written through the link.
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    rc, out, err, seconds = _timed(capsys, promote.main, "--tag=stable", f"--release={b}", f"--registry={uri}")
    line = one_line_error(err.replace(err.strip().splitlines()[0] + "\n", "", 1) if err.count("\n") > 1 else err)
    _note(capsys, f"promote that writes, .tmp -> victim: rc {rc} in {seconds:.2f}s: {line}")
    assert rc == 1 and ".tmp is a symbolic link" in line and "refusing to use it" in line
    _assert_intact(victim, files)
    assert sorted(p.name for p in victim.iterdir()) == ["12345-0123456789abcdef", "keep.txt", "sub"]


def test_the_sweep_removes_only_the_writers_own_abandoned_files(capsys, tmp_path):
    uri = f"file://{tmp_path / 'reg'}"
    promote_ok(capsys, uri, make_bundle(tmp_path / "b", seed=1))
    tmp = tmp_path / "reg" / ".tmp"
    outside = tmp_path / "outside"
    files = _victim(outside)
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    abandoned = tmp / f"{dead_pid}-0123456789abcdef"
    abandoned.write_bytes(b"x" * 1000)
    (tmp / f"{dead_pid}-1111111111111111").symlink_to(outside / "keep.txt")  # a link named like a temporary
    (tmp / f"{dead_pid}-2222222222222222").symlink_to(outside)
    (tmp / f"{dead_pid}-3333333333333333").mkdir()  # a directory: the writer never makes one
    (tmp / f"{dead_pid}-3333333333333333" / "inside").write_bytes(b"not the sweep's")
    (tmp / "not-a-temporary").write_bytes(b"someone else's")
    os.mkfifo(tmp / f"{dead_pid}-4444444444444444")

    promote_ok(capsys, uri, make_bundle(tmp_path / "b", seed=2, accuracy=0.96))
    assert not abandoned.exists()
    assert sorted(p.name for p in tmp.iterdir()) == sorted(
        [f"{dead_pid}-1111111111111111", f"{dead_pid}-2222222222222222", f"{dead_pid}-3333333333333333",
         f"{dead_pid}-4444444444444444", "not-a-temporary"]
    )  # fmt: skip
    assert (tmp / f"{dead_pid}-3333333333333333" / "inside").read_bytes() == b"not the sweep's"
    _assert_intact(outside, files)


# --- 2. the regression gate's baseline ----------------------------------------------------------


def _edit_manifest(registry, build: str, accuracy: float) -> None:
    """Lowers or raises a stored manifest's accuracy, keeping its (now stale) signature."""
    key = registry.build_key(M, build)
    doc = json.loads(registry.storage.read(key))
    doc["metrics"]["accuracy"] = accuracy
    overwrite(registry, key, canonical_json(doc))


@pytest.mark.parametrize("edited_to", [0.5, 1.0])
def test_an_edited_baseline_manifest_does_not_steer_the_gate(capsys, registry_uri, registry, tmp_path, edited_to):
    a = make_bundle(tmp_path / "b", seed=1, accuracy=0.95)
    promote_ok(capsys, registry_uri, a)
    _edit_manifest(registry, build_hash(a), edited_to)
    # 0.5: would let a build regressed by 4.5 points through; 1.0: would block a better build.
    candidate = make_bundle(tmp_path / "b", seed=2, accuracy=0.905 if edited_to == 0.5 else 0.96)
    argv = ["--tag=stable", f"--release={candidate}", f"--registry={registry_uri}"]
    for extra in ([], ["--dry-run"]):
        rc, out, err, seconds = _timed(capsys, promote.main, *argv, *extra)
        line = one_line_error(err)
        _note(capsys, f"\nbaseline accuracy edited to {edited_to}, promote {' '.join(extra)}: rc {rc} in {seconds:.2f}s: {line}")
        assert rc == 1 and out == ""
        assert f"points at build {build_hash(a)[:12]}, whose manifest does not verify" in line
        assert "changed after it was signed" in line and "--force --reason" in line
    assert _history_len(registry) == 1

    rc, out, err = run(capsys, promote.main, *argv, "--force", "--reason=baseline manifest tampered; checked by hand", "--json")
    assert rc == 0, err
    result = json.loads(out)["results"][0]
    assert result["status"] == "promoted" and result["forced"] and result["checks"] == []
    assert registry.events(M)[-1]["forced"] is True

    # show: the tampered manifest is marked, its metrics are not printed, exit 1.
    _edit_manifest(registry, build_hash(candidate), edited_to)
    rc, out, err = run(capsys, registry_cli.main, "show", M, f"--registry={registry_uri}")
    line = one_line_error(err)
    assert rc == 1 and f"build {build_hash(candidate)[:12]}: the manifest" in line and "does not verify" in line
    assert "PROBLEM" in out and f"accuracy={edited_to:.4g}" not in out
    info = json.loads(run(capsys, registry_cli.main, "show", M, f"--registry={registry_uri}", "--json")[1])
    detail = info["tagged_builds"][build_hash(candidate)]
    assert detail["verified"] is False and detail["metrics"] == {} and "does not verify" in detail["problem"]


def test_show_verifies_the_manifests_it_prints(capsys, registry_uri, tmp_path, monkeypatch):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=1, accuracy=0.95))
    info = json.loads(run(capsys, registry_cli.main, "show", M, f"--registry={registry_uri}", "--json")[1])
    (detail,) = info["tagged_builds"].values()
    assert detail["verified"] is True and detail["metrics"]["accuracy"] == 0.95
    monkeypatch.delenv("MODELGATE_PUBLIC_KEY")
    rc, out, err = run(capsys, registry_cli.main, "show", M, f"--registry={registry_uri}")
    assert rc == 0 and "manifest not verified: no public key" in out


# --- 3. FIFOs, links and devices in place of objects (local backend) ---------------------------


def _replace_with_fifo(path: Path) -> None:
    path.chmod(0o644)
    path.unlink()
    os.mkfifo(path)


FIFO_CASES = {
    # object -> the commands that read it
    "pointer": ("tags/stable.json", ["promote", "fetch", "ls", "show", "rollback"]),
    "event": ("history/0000000002.json", ["promote", "fetch", "show", "history", "rollback"]),
    "manifest": ("builds/", ["promote", "fetch", "show"]),
    "blob": ("blobs/sha256/", ["fetch"]),
}


@pytest.mark.parametrize("case", sorted(FIFO_CASES))
def test_a_fifo_in_place_of_an_object_is_refused_at_once(capsys, tmp_path, case):
    uri = f"file://{tmp_path / 'reg'}"
    a, b, c = _two_builds(capsys, uri, tmp_path)
    root = tmp_path / "reg"
    where, commands = FIFO_CASES[case]
    if case == "manifest":
        key = f"models/{M}/builds/{build_hash(b)}.json"
    elif case == "blob":
        key = f"blobs/sha256/{_blob_of(b)}"
    else:
        key = f"models/{M}/{where}"
    _replace_with_fifo(root / key)
    all_commands = every_command(tmp_path / "out", c)
    for name in commands:
        main, argv = all_commands[name]
        rc, out, err, seconds = _timed(capsys, main, *argv, f"--registry={uri}")
        line = one_line_error(err)
        _note(capsys, f"\n{case} is a FIFO, {name}: rc {rc} in {seconds:.2f}s: {line}")
        assert rc == 1, (name, err)
        assert key in line and "is a FIFO, not a regular file" in line, (name, line)
    assert _history_len_local(root) == 2
    assert not (tmp_path / "out").exists()


def _history_len_local(root: Path) -> int:
    return len(list((root / "models" / M / "history").iterdir()))


def test_links_in_place_of_objects_are_not_followed(capsys, tmp_path):
    uri = f"file://{tmp_path / 'reg'}"
    a, b, c = _two_builds(capsys, uri, tmp_path)
    root = tmp_path / "reg"
    pointer = root / "models" / M / "tags" / "stable.json"
    saved = pointer.read_bytes()
    pointer.unlink()
    pointer.symlink_to("/dev/zero")
    rc, _, err, seconds = _timed(capsys, fetch.main, f"--model={M}", "--tag=stable", f"--out={tmp_path / 'out'}", f"--registry={uri}")
    line = one_line_error(err)
    _note(capsys, f"\npointer -> /dev/zero, fetch: rc {rc} in {seconds:.2f}s: {line}")
    assert rc == 1 and "tags/stable.json" in line and "is a symbolic link" in line

    # A directory on the way to the object replaced by a link to a copy elsewhere.
    pointer.unlink()
    pointer.write_bytes(saved)
    elsewhere = tmp_path / "elsewhere"
    (root / "models" / M / "tags").rename(elsewhere)
    (root / "models" / M / "tags").symlink_to(elsewhere)
    rc, _, err = run(capsys, registry_cli.main, "ls", f"--registry={uri}")
    line = one_line_error(err)
    assert rc == 1 and "reached through a symbolic link" in line and f"models/{M}/tags" in line


# --- 4. size caps -------------------------------------------------------------------------------


def _put(registry, key: str, data: bytes) -> None:
    registry.storage.overwrite(key, data)


def test_objects_over_their_caps_are_refused(capsys, registry_uri, registry, tmp_path):
    a, b, c = _two_builds(capsys, registry_uri, tmp_path)
    pointer_key = registry.tag_key(M, "stable")
    pointer = registry.storage.read(pointer_key)
    # Valid JSON, padded with spaces to one byte over the cap.
    _put(registry, pointer_key, pointer + b" " * (registry_module.POINTER_MAX_BYTES + 1 - len(pointer)))
    for name, (main, argv) in every_command(tmp_path / "out", c).items():
        if name == "history":
            continue
        rc, _, err = run(capsys, main, *argv, f"--registry={registry_uri}")
        line = one_line_error(err)
        assert rc == 1 and "tags/stable.json" in line and "the 64 KiB limit for this kind of object" in line, (name, line)
    _put(registry, pointer_key, pointer)

    event_key = registry.history_key(M, 1)
    event = registry.storage.read(event_key)
    _put(registry, event_key, event + b" " * (registry_module.EVENT_MAX_BYTES + 1 - len(event)))
    rc, _, err = run(capsys, registry_cli.main, "history", M, f"--registry={registry_uri}")
    assert rc == 1 and "history/0000000001.json" in one_line_error(err) and "64 KiB limit" in err
    _put(registry, event_key, event)

    manifest_key = registry.build_key(M, build_hash(b))
    manifest = registry.storage.read(manifest_key)
    _put(registry, manifest_key, manifest + b" " * (registry_module.MANIFEST_MAX_BYTES + 1 - len(manifest)))
    rc, _, err = run(capsys, fetch.main, f"--model={M}", f"--build={build_hash(b)}", f"--out={tmp_path / 'out'}", f"--registry={registry_uri}")
    assert rc == 1 and f"builds/{build_hash(b)}.json" in one_line_error(err) and "4 MiB limit" in err
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={c}", f"--registry={registry_uri}")
    assert rc == 1 and "4 MiB limit" in one_line_error(err)
    assert not (tmp_path / "out").exists() and _history_len(registry) == 2


def test_a_huge_pointer_costs_neither_memory_nor_a_download(capsys, registry_uri, registry, tmp_path):
    """32 MiB on both backends (a download bounded to the cap on GCS); 64 GiB sparse on a disk."""
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=1))
    key = registry.tag_key(M, "stable")
    _put(registry, key, b"{" + b" " * (32 << 20))
    tracemalloc.start()
    try:
        rc, _, err, seconds = _timed(capsys, registry_cli.main, "ls", f"--registry={registry_uri}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    line = one_line_error(err)
    _note(capsys, f"\n32 MiB pointer, ls: rc {rc} in {seconds:.2f}s, peak Python memory {peak / 2**20:.2f} MiB: {line}")
    assert rc == 1 and "64 KiB limit" in line
    assert peak < 4 << 20  # the cap is 64 KiB: a reader that loads or downloads the object needs 32 MiB
    if hasattr(registry.storage, "root"):
        path = registry.storage.root / key
        with open(path, "r+b") as f:
            f.truncate(64 << 30)
        rc, _, err, seconds = _timed(capsys, fetch.main, f"--model={M}", "--tag=stable", f"--out={tmp_path / 'out'}", f"--registry={registry_uri}")
        line = one_line_error(err)
        _note(capsys, f"64 GiB sparse pointer, fetch: rc {rc} in {seconds:.2f}s: {line}")
        assert rc == 1 and "is 64 GiB, over the 64 KiB limit" in line


# --- 5. exit codes after a committed move -------------------------------------------------------


@pytest.mark.parametrize("config", [b"{not json", b'{"endpoints": "http://x"}', b" " * (65 << 10)])
def test_a_committed_rollback_is_never_exit_1_because_of_the_notify_config(capsys, registry_uri, registry, tmp_path, config):
    a, b, c = _two_builds(capsys, registry_uri, tmp_path)
    _put(registry, registry_module.NOTIFY_CONFIG, config)
    rc, out, err, seconds = _timed(capsys, registry_cli.main, "rollback", M, "--tag=stable", f"--registry={registry_uri}")
    line = one_line_error(err)
    _note(capsys, f"\nnotify.json {config[:16]!r}, rollback: rc {rc} in {seconds:.2f}s: {out.strip()} / {line}")
    assert rc == 0 and out.startswith(f"rolled {M} stable back to {build_hash(a)[:12]}")
    assert "warning: not notifying the endpoints of config/notify.json" in line and "the service will poll" in line
    assert _history_len(registry) == 3 and registry.events(M)[-1]["action"] == "rollback"
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={c}", f"--registry={registry_uri}")
    assert rc == 0 and out.startswith("promoted") and "not notifying the endpoints of config/notify.json" in one_line_error(err)
    assert _history_len(registry) == 4


def test_a_fifo_notify_config_is_a_warning(capsys, tmp_path):
    uri = f"file://{tmp_path / 'reg'}"
    _two_builds(capsys, uri, tmp_path)
    config = tmp_path / "reg" / "config" / "notify.json"
    config.parent.mkdir()
    os.mkfifo(config)
    rc, out, err = run(capsys, registry_cli.main, "rollback", M, "--tag=stable", f"--registry={uri}")
    assert rc == 0 and "is a FIFO" in one_line_error(err)
