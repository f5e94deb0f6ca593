"""Tag reads in a bounded number of requests, whatever the history's length (the signed head and
the hash chain: modelgate.registry.registry), the attacks still refused at length, and a registry
written before the head read as it is and upgraded by the next promote."""

from __future__ import annotations

import json
import os

import pytest

from modelgate.cli import fetch as fetch_cli
from modelgate.cli import promote
from modelgate.cli import registry as registry_cli
from modelgate.errors import RegistryContentError
from modelgate.formats import canonical_json
from modelgate.registry import api
from modelgate.registry.registry import Registry
from modelgate.registry.signing import RecordSigner, RecordVerifier
from modelgate.registry.storage import open_storage
from modelgate.registry.uri import parse
from modelgate.testing import history
from modelgate.testing.counting import Counting
from modelgate.testing.cli import one_line_error, overwrite, promote_ok, run
from modelgate.testing.releases import build_hash, make_bundle

M = "tiny_transformer"
# How many times the fixture moves canary: 300 in the suite; MODELGATE_HISTORY_MOVES=9998 runs the
# same checks at 10,000 events (about 7 s of setup on file://, 60 s on fake-gcs-server).
MOVES = int(os.environ.get("MODELGATE_HISTORY_MOVES", "300"))
EVENTS = MOVES + 2


def _fetch_requests(uri, keys, out, tag="canary"):
    storage = Counting(open_storage(parse(uri)))
    registry = Registry(storage, verifier=RecordVerifier(str(keys["signer_public"])))
    result = api.fetch(registry, M, out=out, public_key=str(keys["signer_public"]), tag=tag)
    return result, storage.calls


@pytest.fixture
def long_history(capsys, registry_uri, tmp_path, keys):
    """stable: a; canary moved MOVES times between a and b (signed, chained events)."""
    a = make_bundle(tmp_path / "b", seed=1, accuracy=0.95)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a)
    promote_ok(capsys, registry_uri, b, tag="canary")
    signed = Registry(open_storage(parse(registry_uri)), signer=RecordSigner(str(keys["signer"])))
    newest = history.grow(signed, M, "canary", (build_hash(a), build_hash(b)), MOVES)
    return a, b, newest, signed


def test_fetch_by_tag_is_a_bounded_number_of_requests(capsys, registry_uri, tmp_path, keys, long_history):
    a, b, newest, _ = long_history
    result, calls = _fetch_requests(registry_uri, keys, tmp_path / "o1")
    assert result.build_hash == build_hash(b if newest % 2 == 0 else a) or result.build_hash in (build_hash(a), build_hash(b))
    assert len(calls) <= 12, calls
    assert not any(name == "list" for name, _ in calls), calls
    # stable's event is the first of EVENTS: no more requests than canary's.
    _, calls = _fetch_requests(registry_uri, keys, tmp_path / "o2", tag="stable")
    assert len(calls) <= 12 and not any(name == "list" for name, _ in calls), calls


def test_attacks_are_refused_at_length(capsys, registry_uri, registry, tmp_path, keys, long_history):
    a, b, newest, signed = long_history
    pointer_key = registry.tag_key(M, "canary")
    old_pointer = registry.storage.read(pointer_key)
    history.grow(signed, M, "canary", (build_hash(a), build_hash(b)), 2)
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=3), tag="beta")  # canary's event is no longer the newest

    def fetch(tag="canary"):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        rc, _, err = run(capsys, fetch_cli.main, f"--model={M}", f"--tag={tag}", f"--out={out}", f"--registry={registry_uri}")
        return rc, (one_line_error(err) if rc else "")

    assert fetch()[0] == 0
    # A replayed pointer.
    good_pointer = registry.storage.read(pointer_key)
    overwrite(registry, pointer_key, old_pointer)
    rc, line = fetch()
    assert rc == 1 and "the pointer was rolled back" in line
    # A pointer copied from another tag.
    overwrite(registry, pointer_key, registry.storage.read(registry.tag_key(M, "stable")))
    rc, line = fetch()
    assert rc == 1 and "names tag 'stable', not 'canary'" in line
    overwrite(registry, pointer_key, good_pointer)
    assert fetch()[0] == 0
    # An edited event (the tag's own): signature, and the head's hash of it.
    key = registry.history_key(M, newest + 2)
    original = registry.storage.read(key)
    doc = json.loads(original)
    doc["build_hash"] = build_hash(a) if doc["build_hash"] != build_hash(a) else build_hash(b)
    overwrite(registry, key, canonical_json(doc))
    rc, line = fetch()
    assert rc == 1 and f"{newest + 2:010d}.json" in line
    overwrite(registry, key, original)
    assert fetch()[0] == 0
    # A forged head (unsigned; and signed by a stranger).
    head_key = registry.head_key(M)
    head = registry.storage.read(head_key)
    forged = json.loads(head)
    forged.pop("signature")
    overwrite(registry, head_key, canonical_json(forged))
    rc, line = fetch()
    assert rc == 1 and "history head" in line and "is not signed" in line
    stranger = RecordSigner(str(keys["stranger"])).sign(forged)
    overwrite(registry, head_key, canonical_json(stranger))
    rc, line = fetch()
    assert rc == 1 and "signature does not verify" in line
    overwrite(registry, head_key, head)
    # The newest event deleted (the head names it).
    newest_key = registry.history_key(M, newest + 3)
    saved = registry.storage.read(newest_key)
    _delete(registry, newest_key)
    rc, line = fetch("beta")
    assert rc == 1 and "history events were deleted" in line
    assert registry.storage.create(newest_key, saved)
    # The event just before the tag's deleted: caught by every reader (the chain's one link read).
    before = registry.history_key(M, newest + 1)
    before_saved = registry.storage.read(before)
    _delete(registry, before)
    rc, line = fetch()
    assert rc == 1 and "is missing (deleted?)" in line
    assert registry.storage.create(before, before_saved)
    # A version tag set twice, at length: promote refuses to move it; a second event for it (written
    # with the key) is refused by every reader.
    promote_ok(capsys, registry_uri, a, tag="v1.0.0")
    rc, _, err = run(capsys, promote.main, "--tag=v1.0.0", f"--release={b}", f"--registry={registry_uri}", "--force", "--reason=x")
    assert rc == 1 and "never move" in one_line_error(err)
    first = registry.tag_state(M, "v1.0.0", strict=True).event
    seq = registry.head_view(M).seq + 1
    head_view = signed.head_view(M)
    second = dict(first, seq=seq, id="x" * 32, build_hash=build_hash(b), prev=head_view.sha256, tag_prev=first["seq"])
    second.pop("signature", None)
    assert signed.append_event(second)
    assert signed._write_head(head_view.after(signed.read_event(M, seq)), signed._read_head(M)[1])
    signed.materialize(signed.read_event(M, seq))
    rc, line = fetch("v1.0.0")
    assert rc == 1 and "version tag v1.0.0 of tiny_transformer has 2 history events" in line
    # A middle event far from every tag's event: a fresh fetch does not read it; the audit does.
    _delete(registry, registry.history_key(M, 100))
    rc, out, err = run(capsys, registry_cli.main, "verify", M, f"--registry={registry_uri}")
    assert rc == 1 and "0000000100.json" in one_line_error(err) and "is missing (deleted?)" in err


def _delete(registry, key):
    registry.storage.delete(key)


def test_a_replayed_head_is_brought_forward_by_the_chain(capsys, registry_uri, registry, tmp_path, keys):
    a = make_bundle(tmp_path / "b", seed=1, accuracy=0.95)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a)
    old_head = registry.storage.read(registry.head_key(M))
    promote_ok(capsys, registry_uri, b)
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=3), tag="canary")
    overwrite(registry, registry.head_key(M), old_head)  # validly signed, but names event 1
    state = Registry(open_storage(parse(registry_uri)), verifier=RecordVerifier(str(keys["signer_public"]))).tag_state(M, "stable", strict=True)
    assert (state.seq, state.build_hash) == (2, build_hash(b))


def _make_old_registry(capsys, registry_uri, registry, tmp_path, keys):
    """What the release before the head wrote: events without prev or tag_prev, no head."""
    a = make_bundle(tmp_path / "b", seed=1, accuracy=0.95)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a)
    promote_ok(capsys, registry_uri, b)
    signer = RecordSigner(str(keys["signer"]))
    for seq in (1, 2):
        key = registry.history_key(M, seq)
        doc = json.loads(registry.storage.read(key))
        doc.pop("prev", None), doc.pop("tag_prev", None)
        overwrite(registry, key, canonical_json(signer.sign(doc)))
    _delete(registry, registry.head_key(M))
    return a, b


def test_an_old_registry_is_read_as_it_is_and_upgraded_by_the_next_promote(capsys, registry_uri, registry, tmp_path, keys):
    a, b = _make_old_registry(capsys, registry_uri, registry, tmp_path, keys)
    old_events = [registry.storage.read(registry.history_key(M, s)) for s in (1, 2)]
    rc, _, err = run(capsys, fetch_cli.main, f"--model={M}", "--tag=stable", f"--out={tmp_path / 'o'}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert registry.storage.read(registry.head_key(M)) is None  # reading writes nothing
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=3), tag="canary")
    assert [registry.storage.read(registry.history_key(M, s)) for s in (1, 2)] == old_events  # no event rewritten
    assert registry.storage.read(registry.head_key(M)) is not None
    third = json.loads(registry.storage.read(registry.history_key(M, 3)))
    assert third["prev"]
    rc, out, err = run(capsys, registry_cli.main, "verify", M, f"--registry={registry_uri}", "--json")
    assert rc == 0, err
    assert json.loads(out)["chained_from"] == 3 and json.loads(out)["head"] is True
    rc, _, err = run(capsys, registry_cli.main, "rollback", M, "--tag=stable", f"--registry={registry_uri}")
    assert rc == 0, err  # the rollback target is found in the old events
    state = registry.tag_state(M, "stable", strict=True)
    assert state.build_hash == build_hash(a) and state.event["action"] == "rollback"


def test_history_pages_newest_first(capsys, registry_uri, tmp_path, keys, long_history):
    storage = Counting(open_storage(parse(registry_uri)))
    registry = Registry(storage, verifier=RecordVerifier(str(keys["signer_public"])))
    events = api.history(registry, M, 5)
    assert [e["seq"] for e in events] == list(range(EVENTS, EVENTS - 5, -1))
    assert len(storage.calls) <= 8 and not any(name == "list" for name, _ in storage.calls), storage.calls


def test_show_and_fetch_by_build_list_no_build_they_do_not_need(capsys, registry_uri, tmp_path, keys, long_history):
    # Builds grow like history (a team's CI makes one a merge): show lists none of them, and
    # fetch --build PREFIX lists only those that start with the prefix.
    a, b, _, _ = long_history
    for seed in range(3, 8):
        promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=seed), tag="canary")
    storage = Counting(open_storage(parse(registry_uri)))
    registry = Registry(storage, verifier=RecordVerifier(str(keys["signer_public"])))
    info = api.show(registry, M)
    assert set(info["tags"]) == {"stable", "canary"}
    assert not [key for name, key in storage.calls if name == "list" and "/builds/" in key], storage.calls
    assert len(storage.calls) <= 20, storage.calls
    storage.calls.clear()
    api.fetch(registry, M, out=tmp_path / "by-build", public_key=str(keys["signer_public"]), build=build_hash(a)[:12])
    listed = [key for name, key in storage.calls if name == "list"]
    assert listed == [f"models/{M}/builds/{build_hash(a)[:12]}"], listed
