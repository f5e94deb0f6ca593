"""The service against a registry someone tampered with, and against a replayed notification (issue 28).

Real `serve` processes over a local registry:
  - a FIFO in place of the tag pointer, then of the next build's blob: the read is refused at
    once, /version and /healthz say why within seconds, the old build keeps answering, and once
    the registry is repaired the next build rolls out (the rollout worker never hung);
  - a notification accepted before a restart is refused after it (the service refuses what was
    signed before it started; modelgate.serve.notifications), while a fresh one is accepted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from modelgate import notify
from tests.serve import harness
from tests.serve.bundles import build_hash
from tests.serve.e2e_test import ROLLOUT_TIMEOUT_S, assert_answers_like

M = harness.MODEL
REPORT_TIMEOUT_S = 10  # a refused read is reported at once; a reader that blocks never reports


def _notify(server: harness.Server, uri: str, build: str) -> tuple[int, object]:
    body = notify.encode(notify.make_event(M, "stable", build, None, uri))
    return harness.http("POST", server.notify_url, body, {"Content-Type": "application/json", **notify.sign_headers(harness.SECRET, body)})


def _swap_for_fifo(path: Path) -> bytes:
    data = path.read_bytes()
    path.chmod(0o644)
    path.unlink()
    os.mkfifo(path)
    return data


def _restore(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def test_a_fifo_in_the_registry_is_reported_and_the_service_keeps_serving(local_registry, releases, keys, servers):
    v1, v2 = releases["v1"], releases["v2"]
    h1, h2 = build_hash(v1), build_hash(v2)
    root = Path(local_registry[len("file://") :])
    registry = harness.open_registry(local_registry)
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"])
    server.wait_serving(h1, ROLLOUT_TIMEOUT_S)

    # The tag pointer: the worker's first read of the tag.
    pointer = root / registry.tag_key(M, "stable")
    saved = _swap_for_fifo(pointer)
    checks = server.version()["checks"]
    start = time.monotonic()
    assert _notify(server, local_registry, h1)[0] == 202
    version = harness.wait_for(
        lambda: (v := server.version())["checks"] > checks and "is a FIFO" in (v["error"] or "") and v,
        REPORT_TIMEOUT_S, "the service to report the FIFO",
    )  # fmt: skip
    reported = time.monotonic() - start
    status, health = server.get("/healthz")
    print(f"\npointer is a FIFO: reported on /version {reported:.2f}s after the notification: {version['error']}")
    assert version["build_hash"] == h1 and f"still serving {h1[:12]}" in version["error"]
    assert status == 200 and health["build_hash"] == h1 and "is a FIFO" in health["error"]
    assert_answers_like(server, v1)
    _restore(pointer, saved)

    # The next build's weights: a FIFO planted before it is promoted (promote skips a blob that is there).
    weights = root / registry.blob_key(harness_blob(v2))
    weights.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(weights)
    start = time.monotonic()
    harness.promote(local_registry, v2, keys["signer"], notify_urls=[server.notify_url])
    version = harness.wait_for(
        lambda: (v := server.version())["last_rollout"]["build_hash"] == h2 and v["last_rollout"]["outcome"] != "in progress" and v,
        REPORT_TIMEOUT_S, "the rollout of the next build to end",
    )  # fmt: skip
    reported = time.monotonic() - start
    print(f"weights blob is a FIFO: rollout {version['last_rollout']['outcome']} {reported:.2f}s after the promote: {version['error']}")
    assert version["last_rollout"]["outcome"] == "refused" and "is a FIFO" in version["last_rollout"]["error"]
    assert version["build_hash"] == h1 and "is a FIFO" in server.get("/healthz")[1]["error"]
    assert_answers_like(server, v1)

    # Repaired: the next notification rolls the build out (a refused build is retried on a notification).
    weights.unlink()
    registry.storage.put_file(registry.blob_key(harness_blob(v2)), v2 / "weights.safetensors", (v2 / "weights.safetensors").stat().st_size)
    assert _notify(server, local_registry, h2)[0] == 202
    version = server.wait_serving(h2, ROLLOUT_TIMEOUT_S)
    assert version["error"] is None and server.get("/healthz")[1]["error"] is None
    assert_answers_like(server, v2)


def harness_blob(bundle: Path) -> str:
    import json

    return json.loads((bundle / "manifest.json").read_text())["files"]["weights.safetensors"]["sha256"]


def test_a_notification_from_before_a_restart_is_refused(local_registry, releases, keys, servers):
    v1 = releases["v1"]
    h1 = build_hash(v1)
    harness.promote(local_registry, v1, keys["signer"])
    first = servers(local_registry, keys["signer_public"])
    first.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    body = notify.encode(notify.make_event(M, "stable", h1, None, local_registry))
    captured = {"Content-Type": "application/json", **notify.sign_headers(harness.SECRET, body)}
    assert harness.http("POST", first.notify_url, body, captured)[0] == 202
    assert harness.http("POST", first.notify_url, body, captured)[0] == 403  # replayed: the in-memory cache

    state_dir = first.state_dir
    first.stop()
    time.sleep(1.1)  # timestamps are whole seconds: the restart lands in a later second than the signature
    restarted = servers(local_registry, keys["signer_public"], state_dir=state_dir)
    restarted.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    status, answer = harness.http("POST", restarted.notify_url, body, captured)
    print(f"\nthe captured notification replayed after a restart: HTTP {status}: {answer}")
    assert status == 403 and "before this service started" in answer["detail"]
    assert restarted.version()["notifications"] == {"accepted": 0, "refused": 1}
    assert _notify(restarted, local_registry, h1)[0] == 202  # a notification signed after the start is accepted
