"""The service as an attacker, a failing network or a slow client sees it.

Real `serve` processes over real registries (a local directory and fake-gcs-server), real HTTP:
  - the registry's tag state rolled back or a version tag re-pointed, behind modelgate's back:
    refused, across a restart too; a legitimate `registry rollback` is accepted and served;
  - a GCS endpoint that accepts and never answers: the service says why within the bound;
  - JSON nested 100k deep on /predict and on a signed /notify: 400; inputs whose shapes only
    broadcast: 422; clients too slow to send their request: 408, disconnected.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from modelgate import notify
from modelgate.formats import canonical_json
from modelgate.registry.registry import Registry
from modelgate.registry.signing import RecordSigner
from modelgate.registry.storage import open_storage
from modelgate.registry.uri import parse
from modelgate.serve.deployment import Deployment
from modelgate.testing import history
from tests.serve import harness
from tests.serve.bundles import build_hash
from tests.serve.e2e_test import ROLLOUT_TIMEOUT_S, assert_answers_like, golden_request

M = harness.MODEL
# Events appended (canary moved back and forth) before the attacks: a few in the suite;
# MODELGATE_HISTORY_MOVES=9996 runs every attack against a running service at 10,000 events.
HISTORY_MOVES = int(os.environ.get("MODELGATE_HISTORY_MOVES", "4"))


def _grow(uri: str, keys, builds: tuple[str, str], count: int) -> int:
    """canary moved `count` times between two builds (signed, chained events): a long history."""
    if not count:
        return harness.open_registry(uri).head_view(M).seq
    signed = Registry(open_storage(parse(uri)), signer=RecordSigner(str(keys["signer"])))
    return history.grow(signed, M, "canary", builds, count)


def _stable_v1_then_history(request, backend, releases, keys):
    """stable promoted to v1 (event 1), then canary moved HISTORY_MOVES times (events 2..k): the
    registry the history attacks start from. Returns (uri, registry, v1, v2, h1, h2, k)."""
    uri = request.getfixturevalue(f"{backend}_registry")
    v1, v2 = releases["v1"], releases["v2"]
    h1, h2 = build_hash(v1), build_hash(v2)
    registry = harness.open_registry(uri)
    harness.promote(uri, v1, keys["signer"])
    k = _grow(uri, keys, (h1, h1), HISTORY_MOVES)
    return uri, registry, v1, v2, h1, h2, k


def _storage(uri: str):
    return harness.open_registry(uri).storage


def _write(uri: str, key: str, data: bytes) -> None:
    """Rewrites an object behind modelgate's back (someone with write access but not the key)."""
    _storage(uri).overwrite(key, data)


def _delete(uri: str, key: str) -> None:
    _storage(uri).delete(key)


def _notify(server: harness.Server, uri: str, build: str, seq: int | None = None) -> None:
    body = notify.encode(notify.make_event(M, "stable", build, None, uri, seq=seq))
    status, answer = harness.http("POST", server.notify_url, body, {"Content-Type": "application/json", **notify.sign_headers(harness.SECRET, body)})
    assert status == 202, answer


def _wait_refused(server: harness.Server, words: str, checks_before: int) -> dict:
    seen = []
    def refused():
        seen[:] = [v := server.version()]
        return v["checks"] > checks_before and words in (v["error"] or "") and v
    try:
        return harness.wait_for(refused, ROLLOUT_TIMEOUT_S, f"the service to refuse ({words})")
    except TimeoutError as e:
        raise TimeoutError(f"{e}; /version said {seen}") from None


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_a_rolled_back_tag_state_is_refused_and_a_real_rollback_is_served(request, backend, releases, keys, servers):
    uri, registry, v1, v2, h1, h2, k = _stable_v1_then_history(request, backend, releases, keys)
    pointer_key, event2_key = registry.tag_key(M, "stable"), registry.history_key(M, k + 1)
    v1_pointer = registry.storage.read(pointer_key)  # validly signed, seq 1
    v1_head = registry.storage.read(registry.head_key(M))  # the signed head then: replayed with the pointer
    server = servers(uri, keys["signer_public"])
    server.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    harness.promote(uri, v2, keys["signer"], notify_urls=[server.notify_url])
    server.wait_serving(h2, ROLLOUT_TIMEOUT_S)
    assert server.version()["tag_state"]["seq"] == k + 1
    v2_pointer = registry.storage.read(pointer_key)

    # The attack: the newest event deleted and the old pointer replayed. Every byte is validly
    # signed and a stateless reader cannot tell; the service remembers it accepted seq 2.
    event2 = registry.storage.read(event2_key)
    _delete(uri, event2_key)
    _write(uri, pointer_key, v1_pointer)
    _write(uri, registry.head_key(M), v1_head)
    checks = server.version()["checks"]
    _notify(server, uri, h1)
    version = _wait_refused(server, "rollback refused", checks)
    print(f"\n{backend}: refused: {version['error']}")
    assert version["build_hash"] == h2 and f"still serving {h2[:12]}" in version["error"]
    assert_answers_like(server, v2)

    # After a restart the protection still holds (it is in the state directory): nothing is served.
    state_dir = server.state_dir
    server.stop()
    restarted = servers(uri, keys["signer_public"], state_dir=state_dir)
    version = harness.wait_for(lambda: (v := restarted.version())["checks"] >= 1 and v, ROLLOUT_TIMEOUT_S, "the first check")
    assert version["build_hash"] is None and "rollback refused" in version["error"]
    assert restarted.get("/healthz")[0] == 503

    # The registry repaired, then a legitimate rollback: a new, higher, signed event. Served.
    registry.storage.create(event2_key, event2)
    _write(uri, pointer_key, v2_pointer)
    result = harness.rollback(uri, keys["signer"], notify_urls=[restarted.notify_url])
    assert (result.status, result.seq, result.build_hash) == ("rolled-back", k + 2, h1)
    version = restarted.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    assert version["tag_state"]["seq"] == k + 2 and version["error"] is None
    assert_answers_like(restarted, v1)


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_a_repointed_version_tag_and_a_replayed_pointer_are_refused(request, backend, releases, keys, servers):
    uri = request.getfixturevalue(f"{backend}_registry")
    v1, v2 = releases["v1"], releases["v2"]
    h1, h2 = build_hash(v1), build_hash(v2)
    registry = harness.open_registry(uri)
    harness.promote(uri, v1, keys["signer"], tag="v1.0.0")
    harness.promote(uri, v1, keys["signer"])
    stable_v1 = registry.storage.read(registry.tag_key(M, "stable"))
    harness.promote(uri, v2, keys["signer"])
    harness.promote(uri, v2, keys["signer"], tag="canary")  # stable's event is no longer the newest
    _grow(uri, keys, (h1, h2), HISTORY_MOVES)  # a long history after them: the service's reads do not walk it

    version_server = servers(uri, keys["signer_public"], tag="v1.0.0")
    version_server.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    stable_server = servers(uri, keys["signer_public"])
    stable_server.wait_serving(h2, ROLLOUT_TIMEOUT_S)

    # The version tag: stable's (validly signed) pointer copied over it, naming v2.
    _write(uri, registry.tag_key(M, "v1.0.0"), registry.storage.read(registry.tag_key(M, "stable")))
    checks = version_server.version()["checks"]
    body = notify.encode(notify.make_event(M, "v1.0.0", h2, h1, uri))
    harness.http("POST", version_server.notify_url, body, {"Content-Type": "application/json", **notify.sign_headers(harness.SECRET, body)})
    version = _wait_refused(version_server, "names tag 'stable', not 'v1.0.0'", checks)
    assert version["build_hash"] == h1

    # The channel: its old pointer replayed (no history deleted): the signed history shows it.
    _write(uri, registry.tag_key(M, "stable"), stable_v1)
    checks = stable_server.version()["checks"]
    _notify(stable_server, uri, h1)
    version = _wait_refused(stable_server, "the pointer was rolled back", checks)
    assert version["build_hash"] == h2
    assert_answers_like(stable_server, v2)


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_edited_forged_and_deleted_events_are_refused_by_a_running_service(request, backend, releases, keys, servers):
    """Each attack on the signed history behind modelgate's back, on a state the service has not
    accepted yet (a promote it was not told of), then a signed notification: the service refuses it
    and goes on serving what it served; a new replica's first check refuses it too; the registry
    repaired, the promote and then a `registry rollback` are served. (Events the service already
    accepted are kept in memory, as they are create-only: editing one later changes nothing it
    serves. Events far from the tag's, the middle of the history, are the audit's, `registry
    verify`, tests/registry/bounded_test.py: a reader checks the chain next to what it reads.)"""
    uri, registry, v1, v2, h1, h2, k = _stable_v1_then_history(request, backend, releases, keys)
    server = servers(uri, keys["signer_public"])
    server.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    harness.promote(uri, v2, keys["signer"], notify_urls=[server.notify_url])  # event k + 1
    server.wait_serving(h2, ROLLOUT_TIMEOUT_S)
    assert server.version()["tag_state"]["seq"] == k + 1
    harness.promote(uri, v1, keys["signer"])  # event k + 2, the newest: the service was not told

    def refused(words: str) -> None:
        checks = server.version()["checks"]
        _notify(server, uri, h1)
        version = _wait_refused(server, words, checks)
        print(f"\n{backend}, {k + 2} events: refused: {version['error']}")
        assert version["build_hash"] == h2 and version["tag_state"]["seq"] == k + 1
        assert_answers_like(server, v2)

    newest_key, before_key, head_key = registry.history_key(M, k + 2), registry.history_key(M, k + 1), registry.head_key(M)
    newest, before, head = (registry.storage.read(key) for key in (newest_key, before_key, head_key))

    # The new event edited (its signature no longer verifies, its hash is not the head's) ...
    doc = json.loads(newest)
    doc["time"] = "2030-01-01T00:00:00.000Z"
    _write(uri, newest_key, canonical_json(doc))
    refused(f"{k + 2:010d}.json")
    # ... and re-signed by someone else's key.
    doc.pop("signature")
    _write(uri, newest_key, canonical_json(RecordSigner(str(keys["stranger"])).sign(doc)))
    refused(f"{k + 2:010d}.json")
    _write(uri, newest_key, newest)
    # A forged head: unsigned, then signed by a stranger.
    forged = json.loads(head)
    forged.pop("signature")
    _write(uri, head_key, canonical_json(forged))
    refused("is not signed")
    _write(uri, head_key, canonical_json(RecordSigner(str(keys["stranger"])).sign(forged)))
    refused("signature does not verify")
    _write(uri, head_key, head)
    # The newest event deleted (the head and the pointer name it).
    _delete(uri, newest_key)
    refused("history events were deleted")
    assert registry.storage.create(newest_key, newest)
    # The event before it deleted: a new replica's first check reads that link and refuses.
    _delete(uri, before_key)
    replica = servers(uri, keys["signer_public"])
    version = harness.wait_for(lambda: (v := replica.version())["checks"] >= 1 and v, ROLLOUT_TIMEOUT_S, "the replica's first check")
    assert version["build_hash"] is None and "is missing (deleted?)" in version["error"], version
    print(f"\n{backend}, {k + 2} events: a new replica refused: {version['error']}")
    assert registry.storage.create(before_key, before)

    # Repaired: the promote is served, then a legitimate rollback.
    _notify(server, uri, h1)
    assert server.wait_serving(h1, ROLLOUT_TIMEOUT_S)["tag_state"]["seq"] == k + 2
    result = harness.rollback(uri, keys["signer"], notify_urls=[server.notify_url])
    assert (result.status, result.seq, result.build_hash) == ("rolled-back", k + 3, h2)
    assert server.wait_serving(h2, ROLLOUT_TIMEOUT_S)["error"] is None


def test_a_silent_gcs_endpoint_is_reported_within_the_bound(monkeypatch, keys, servers, tmp_path):
    from modelgate.testing.endpoints import BadEndpoint

    endpoint = BadEndpoint("silent")
    try:
        env = {"STORAGE_EMULATOR_HOST": endpoint.url, "MODELGATE_GCS_TIMEOUT": "2"}
        started = time.monotonic()
        server = servers("gs://some-bucket/serve", keys["signer_public"], extra_env=env)
        answering = time.monotonic()
        version = harness.wait_for(lambda: (v := server.version())["error"] and v, 30, "the service to say why it is not serving")
        reported = time.monotonic()
        print(f"\nsilent GCS endpoint, MODELGATE_GCS_TIMEOUT=2: the service answered HTTP {answering - started:.2f}s after "
              f"its start and reported why it is not serving {reported - answering:.2f}s later: {version['error'][-90:]}")  # fmt: skip
        assert "within 2s" in version["error"] and version["status"] == "not serving"
        assert reported - answering <= 2 + 1.5
    finally:
        endpoint.stop()

    # In-process, the same bound on one check of the tag.
    trickle = BadEndpoint("trickle")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", trickle.url)
    monkeypatch.setenv("MODELGATE_GCS_TIMEOUT", "2")
    deployment = Deployment(M, "stable", harness.open_registry("gs://some-bucket/serve"), str(keys["signer_public"]), tmp_path / "st")
    deployment.claim()
    start = time.monotonic()
    try:
        deployment.check("startup")
    finally:
        elapsed = time.monotonic() - start
        deployment.stop()
        trickle.stop()
    print(f"trickling GCS endpoint: one check of the tag gave up after {elapsed:.2f}s")
    assert elapsed <= 2 + 1.5 and "within 2s" in deployment.problem


def _raw(server: harness.Server, data: bytes, *, wait_s: float) -> tuple[float, bytes]:
    """Sends `data` and then nothing; returns (seconds until the server closed, what it answered)."""
    url = urlparse(server.url)
    sock = socket.create_connection((url.hostname, url.port))
    sock.settimeout(wait_s)
    start = time.monotonic()
    sock.sendall(data)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            lengths = [int(line.split(b":")[1]) for line in head.lower().splitlines() if line.startswith(b"content-length:")]
            if sep and lengths and len(body) >= lengths[0]:
                break  # a complete response
    except TimeoutError:
        pass
    finally:
        sock.close()
    return time.monotonic() - start, received


def test_deep_json_broadcast_shapes_and_slow_clients(local_registry, releases, keys, servers):
    v1 = releases["v1"]
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"], extra_args=["--read-timeout=2"])
    server.wait_serving(build_hash(v1), ROLLOUT_TIMEOUT_S)

    deep = b"[" * 100_000 + b"]" * 100_000
    status, body = harness.http("POST", server.url + "/predict", deep, {"Content-Type": "application/json"})
    assert status == 400 and "nested deeper than 32 levels" in body["detail"]
    # /notify takes at most 64 KiB, so 30,000 levels there (json.loads recurses out at ~1,000).
    deep_event = b'{"model": "tiny_transformer", "tag": "stable", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    status, body = harness.http("POST", server.notify_url, deep_event, {"Content-Type": "application/json", **notify.sign_headers(harness.SECRET, deep_event)})
    assert status == 400 and "nested deeper" in body["detail"]

    status, body = server.post_json("/predict", {"inputs": {"tokens": [[1, 2, 3]], "mask": [[True]]}})
    assert status == 422 and body["detail"] == "inputs disagree on axis 1 (shapes must match exactly; no broadcasting): tokens has 3, mask has 1"

    # A client that never finishes its headers, and one that never finishes its body.
    elapsed, answer = _raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\n", wait_s=15)
    print(f"\nslow headers: closed after {elapsed:.2f}s with {answer[:40]!r}")
    assert answer.startswith(b"HTTP/1.1 408") and 1.5 <= elapsed <= 4
    elapsed, answer = _raw(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"in", wait_s=15)
    print(f"slow body: answered after {elapsed:.2f}s with {answer.splitlines()[0]!r}")
    assert answer.startswith(b"HTTP/1.1 408") and b"request body not received within 2 s" in answer and elapsed <= 4
    # Keep-alive clients are not cut off between requests, and the service still serves.
    assert server.process.poll() is None
    assert_answers_like(server, v1)
    status, _ = server.post_json("/predict", golden_request(v1))
    assert status == 200


def test_the_state_directory_is_modelgates_alone(deploy_factory, local_registry, releases, keys, tmp_path):
    from modelgate.serve.deployment import StateDirForeign

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(StateDirForeign, match=r"holds files modelgate did not create \(notes.txt\)"):
        deploy_factory(mine)
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    harness.promote(local_registry, releases["v1"], keys["signer"])
    registry_dir = Path(local_registry[len("file://") :])
    before = sorted(p.relative_to(registry_dir) for p in registry_dir.rglob("*"))
    with pytest.raises(StateDirForeign, match=r"holds files modelgate did not create \(.*blobs"):
        deploy_factory(registry_dir)
    assert sorted(p.relative_to(registry_dir) for p in registry_dir.rglob("*")) == before

    fresh = tmp_path / "a" / "new" / "state"
    deployment = deploy_factory(fresh)  # created
    assert deployment.check("startup").outcome == "serving"
    deployment.stop()
    again = deploy_factory(fresh)  # what it created is its own: accepted, old builds cleared
    assert sorted(p.name for p in fresh.iterdir()) == [".lock", "tag-state.json"]
    again.stop()


@pytest.fixture
def deploy_factory(local_registry, keys):
    made = []

    def make(state_dir: Path) -> Deployment:
        d = Deployment(M, "stable", harness.open_registry(local_registry), str(keys["signer_public"]), state_dir)
        made.append(d)
        d.claim()
        return d

    yield make
    for d in made:
        d.stop()


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_allow_rollback_is_the_operators_way_past_the_protection(request, backend, releases, keys, tmp_path):
    uri, registry, v1, v2, h1, h2, k = _stable_v1_then_history(request, backend, releases, keys)
    v1_pointer = registry.storage.read(registry.tag_key(M, "stable"))
    v1_head = registry.storage.read(registry.head_key(M))
    harness.promote(uri, v2, keys["signer"])  # event k + 1
    state_dir = tmp_path / "state"

    def deployment(**kwargs) -> Deployment:
        d = Deployment(M, "stable", harness.open_registry(uri), str(keys["signer_public"]), state_dir, **kwargs)
        d.claim()
        return d

    first = deployment()
    assert first.check("startup").outcome == "serving" and first.accepted["seq"] == k + 1
    # A notification announcing an event the registry does not show: reported as a stale (frozen) view.
    first.request_check("notify", announced_seq=k + 7)
    first.check("notify")
    assert f"announced history event {k + 7}" in first.problem and "stale or frozen" in first.problem
    first.stop()

    _delete(uri, registry.history_key(M, k + 1))
    _write(uri, registry.tag_key(M, "stable"), v1_pointer)
    _write(uri, registry.head_key(M), v1_head)  # with the head replayed too, only the service's state sees it
    refusing = deployment()
    attempt = refusing.check("startup")
    assert attempt.outcome == "refused" and "rollback refused" in attempt.error and refusing.current is None
    refusing.stop()

    allowing = deployment(allow_rollback=True)
    assert allowing.check("startup").outcome == "serving"
    assert allowing.current.build_hash == h1 and allowing.accepted == {**allowing.accepted, "seq": 1, "build_hash": h1}
    allowing.stop()
    assert h2 != h1
