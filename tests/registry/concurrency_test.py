"""Many promoters at once, and promoters killed at random points (separate processes, both backends).

Child processes are forked from the test process: they share its already-imported modules, so a
promotion starts in milliseconds, and each child opens its own storage client and files.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time

from modelgate.cli import fetch, promote
from modelgate.registry import storage as storage_module

from modelgate.testing.cli import exit_code, fork
from modelgate.testing.releases import build_hash, file_digests, make_bundle

CONCURRENT = 16
KILL_TRIALS = 20


def _quiet_promote(argv: list[str]) -> int:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return promote.main(argv)


def test_concurrent_promotions_lose_no_update(registry_uri, registry, tmp_path):
    bundles = [make_bundle(tmp_path / "b", seed=i, accuracy=0.95) for i in range(CONCURRENT)]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def child(bundle):
        def body():
            os.close(go_w)
            os.write(ready_w, b".")
            os.read(go_r, 1)  # returns at EOF, when the parent closes its end: all start together
            return _quiet_promote(["--tag=stable", f"--release={bundle}", f"--registry={registry_uri}"])

        return body

    pids = [fork(child(b)) for b in bundles]
    os.close(go_r)
    for _ in pids:
        os.read(ready_r, 1)
    start = time.monotonic()
    os.close(go_w)
    codes = [exit_code(pid) for pid in pids]
    elapsed = time.monotonic() - start
    os.close(ready_r)
    os.close(ready_w)
    print(f"\n{CONCURRENT} concurrent promotions on {registry_uri.split(':')[0]}: {elapsed:.2f}s")
    assert codes == [0] * CONCURRENT

    events = registry.events("tiny_transformer")
    assert [e["seq"] for e in events] == list(range(1, CONCURRENT + 1))
    assert sorted(e["build_hash"] for e in events) == sorted(build_hash(b) for b in bundles)
    # Each event replaced exactly the build before it: no promotion was decided on a stale tag.
    assert [e["previous"] for e in events] == [None] + [e["build_hash"] for e in events[:-1]]
    pointer = registry.read_pointer("tiny_transformer", "stable")
    assert (pointer.build_hash, pointer.seq) == (events[-1]["build_hash"], CONCURRENT)


def _slow_writes(delay: float) -> None:
    """In a child: every storage write sleeps before and after, widening the windows a kill can hit."""
    for cls in (storage_module.LocalStorage, storage_module.GCSStorage):
        for name in ("create", "swap", "put_file", "put_staged"):  # put_staged: a local promote's blobs
            original = cls.__dict__.get(name)  # a backend's own writes (GCS stages with the base's put_staged)
            if original is None:
                continue

            def slow(self, *args, _original=original, **kwargs):
                time.sleep(delay)
                result = _original(self, *args, **kwargs)
                time.sleep(delay)
                return result

            setattr(cls, name, slow)


def _phase(registry, model: str, old: str, new, new_digests) -> str:
    if registry.read_pointer(model, "stable").build_hash == new:
        return "tag moved"
    if registry.tag_state(model, "stable").build_hash == new:
        return "history written, pointer not yet"
    if registry.read_build(model, new) is not None:
        return "manifest written"
    present = sum(registry.has_blob(d) for d in new_digests)
    return f"{present} of {len(new_digests)} blobs" if present else "nothing written"


def test_promote_killed_at_random_points_leaves_a_consistent_registry(capsys, registry_uri, registry, tmp_path):
    rng = random.Random(20261127)
    phases = collections.Counter()
    for trial in range(KILL_TRIALS):
        model = f"m{trial}"
        old = make_bundle(tmp_path / "b", model=model, seed=0, weights_size=3 << 20)
        new = make_bundle(tmp_path / "b", model=model, seed=1, weights_size=3 << 20, accuracy=0.96)
        argv = ["--tag=stable", f"--release={new}", f"--registry={registry_uri}"]
        assert promote.main(["--tag=stable", f"--release={old}", f"--registry={registry_uri}"]) == 0

        def body():
            _slow_writes(0.04)
            return _quiet_promote(argv)

        pid = fork(body)
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(pid, signal.SIGKILL)
        exit_code(pid)
        phases[_phase(registry, model, build_hash(old), build_hash(new), list(file_digests(new).values()))] += 1

        # Readers see the old or the new build, complete and verified.
        pointer = registry.read_pointer(model, "stable")
        assert pointer.build_hash in (build_hash(old), build_hash(new))
        out = tmp_path / "out" / f"{trial}-after-kill"
        assert fetch.main([f"--model={model}", "--tag=stable", f"--out={out}", f"--registry={registry_uri}"]) == 0

        # Running promote again completes the promotion.
        assert promote.main(argv) == 0
        assert registry.read_pointer(model, "stable").build_hash == build_hash(new)
        events = registry.events(model)
        assert [(e["build_hash"], e["previous"]) for e in events] == [
            (build_hash(old), None),
            (build_hash(new), build_hash(old)),
        ]
        out = tmp_path / "out" / f"{trial}-after-rerun"
        assert fetch.main([f"--model={model}", "--tag=stable", f"--out={out}", f"--registry={registry_uri}"]) == 0
        assert (out / "weights.safetensors").read_bytes() == (new / "weights.safetensors").read_bytes()
    capsys.readouterr()
    with capsys.disabled():
        print(f"\nkilled promotions on {registry_uri.split(':')[0]}: {dict(phases)}")
    assert len(phases) >= 2  # the kills did land at different points
