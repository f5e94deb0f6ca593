"""Signed tag state: a registry writer without the signing key cannot move a tag (both backends).

Each attack rewrites the registry behind modelgate's back, as someone with write access to the
bucket or directory but not the promoter's key would, and fetch must refuse it in one line.
"""

from __future__ import annotations

import json

import pytest

from modelgate.cli import fetch, promote
from modelgate.cli import registry as registry_cli
from modelgate.formats import canonical_json
from modelgate.registry.registry import Registry
from modelgate.registry.signing import RecordSigner
from modelgate.registry.storage import open_storage
from modelgate.registry.uri import parse

from modelgate.testing.cli import one_line_error, overwrite, promote_ok, run
from modelgate.testing.releases import build_hash, make_bundle

M = "tiny_transformer"


def _delete(registry: Registry, key: str) -> None:
    registry.storage.delete(key)


def _fetch(capsys, uri, out, tag="stable"):
    return run(capsys, fetch.main, f"--model={M}", f"--tag={tag}", f"--out={out}", f"--registry={uri}")


@pytest.fixture
def two_builds(capsys, registry_uri, registry, tmp_path):
    """stable: a (seq 1), then b (seq 2). Returns (a, b, the seq-1 pointer bytes)."""
    a = make_bundle(tmp_path / "b", seed=1, accuracy=0.95)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a)
    old_pointer = registry.storage.read(registry.tag_key(M, "stable"))
    promote_ok(capsys, registry_uri, b)
    return a, b, old_pointer


def test_a_replayed_old_pointer_is_refused(capsys, registry_uri, registry, tmp_path, two_builds):
    a, b, old_pointer = two_builds
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=3), tag="canary")  # b's event is no longer the newest
    overwrite(registry, registry.tag_key(M, "stable"), old_pointer)  # validly signed, but seq 1
    rc, out, err = _fetch(capsys, registry_uri, tmp_path / "out")
    line = one_line_error(err)
    assert rc == 1 and out == "" and "the pointer was rolled back" in line and "signature and digests verified" not in line
    assert not (tmp_path / "out").exists()


def test_a_replayed_pointer_behind_only_the_newest_event_resolves_to_the_newest(capsys, registry_uri, registry, tmp_path, two_builds):
    """The same bytes a promote killed before moving the pointer leaves: the signed history wins."""
    a, b, old_pointer = two_builds
    overwrite(registry, registry.tag_key(M, "stable"), old_pointer)
    rc, out, err = _fetch(capsys, registry_uri, tmp_path / "out")
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["build_hash"] == build_hash(b)


def test_a_pointer_rewritten_to_an_older_build_is_refused(capsys, registry_uri, registry, tmp_path, two_builds):
    a, b, _ = two_builds
    key = registry.tag_key(M, "stable")
    doc = json.loads(registry.storage.read(key))
    doc.update(build_hash=build_hash(a), seq=3)
    overwrite(registry, key, canonical_json(doc))
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out")
    assert rc == 1 and "signature does not verify" in one_line_error(err)
    doc.pop("signature")
    overwrite(registry, key, canonical_json(doc))
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out")
    assert rc == 1 and "is not signed" in one_line_error(err)


def test_a_version_tag_repointed_or_copied_from_another_tag_is_refused(capsys, registry_uri, registry, tmp_path):
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.99)
    promote_ok(capsys, registry_uri, a, tag="v1.0.0")
    promote_ok(capsys, registry_uri, b)  # stable -> b, signed
    version_key = registry.tag_key(M, "v1.0.0")
    # Copy stable's (validly signed) pointer over the version tag's.
    overwrite(registry, version_key, registry.storage.read(registry.tag_key(M, "stable")))
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out", tag="v1.0.0")
    assert rc == 1 and "names tag 'stable', not 'v1.0.0'" in one_line_error(err)
    # Edit it to name b.
    doc = json.loads(registry.storage.read(registry.tag_key(M, "stable")))
    doc["tag"] = "v1.0.0"
    overwrite(registry, version_key, canonical_json(doc))
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out", tag="v1.0.0")
    assert rc == 1 and "signature does not verify" in one_line_error(err)
    # show derives the tag from the history and reports the pointer, instead of disagreeing with it.
    info = json.loads(run(capsys, registry_cli.main, "show", M, f"--registry={registry_uri}", "--json")[1])
    assert info["tags"]["v1.0.0"]["build_hash"] == build_hash(a) and "signature does not verify" in info["tags"]["v1.0.0"]["problem"]
    rc, out, err = run(capsys, registry_cli.main, "show", M, f"--registry={registry_uri}")
    assert rc == 1 and "PROBLEM: " in out and "signature does not verify" in one_line_error(err)


def test_a_version_tag_must_match_its_first_and_only_event(capsys, registry_uri, registry, tmp_path, keys):
    """Even a key holder cannot make a version tag move: a second event for it is refused."""
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.99)
    promote_ok(capsys, registry_uri, a, tag="v1.0.0")
    promote_ok(capsys, registry_uri, b)
    signed = Registry(open_storage(parse(registry_uri)), signer=RecordSigner(str(keys["signer"])))
    second = dict(signed.read_event(M, 1), seq=3, id="x" * 32, build_hash=build_hash(b))
    assert signed.append_event(second)
    signed.materialize(signed.read_event(M, 3))
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out", tag="v1.0.0")
    assert rc == 1 and "version tag v1.0.0 of tiny_transformer has 2 history events" in one_line_error(err)


@pytest.mark.parametrize("which", ["middle", "newest"])
def test_a_deleted_history_event_is_noticed(capsys, registry_uri, registry, tmp_path, two_builds, which):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=3), tag="canary")  # seq 3
    seq = 1 if which == "middle" else 3
    _delete(registry, registry.history_key(M, seq))
    tag = "stable" if which == "middle" else "canary"
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out", tag=tag)
    line = one_line_error(err)
    assert rc == 1
    assert ("0000000001.json" in line and "is missing (deleted?)" in line) if which == "middle" else "history events were deleted" in line
    # promote refuses to build on a history with a hole in it, too.
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b', seed=4)}", f"--registry={registry_uri}")
    if which == "middle":
        assert rc == 1 and "is missing (deleted?)" in one_line_error(err)


def test_a_forged_or_edited_history_event_is_refused(capsys, registry_uri, registry, tmp_path, two_builds):
    a, b, _ = two_builds
    key = registry.history_key(M, 2)
    doc = json.loads(registry.storage.read(key))
    doc["build_hash"] = build_hash(a)
    overwrite(registry, key, canonical_json(doc))
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out")
    assert rc == 1 and "history event models/tiny_transformer/history/0000000002.json" in one_line_error(err)
    assert "signature does not verify" in err
    # An unsigned event appended by someone without the key.
    forged = {**doc, "seq": 3, "id": "f" * 32}
    forged.pop("signature")
    registry.storage.create(registry.history_key(M, 3), canonical_json(forged))
    rc, _, err = run(capsys, registry_cli.main, "rollback", M, "--tag=stable", f"--registry={registry_uri}")
    line = one_line_error(err)
    assert rc == 1 and "0000000003.json" in line and "is not signed" in line


def test_a_legitimate_rollback_is_a_newer_signed_event_and_fetches(capsys, registry_uri, registry, tmp_path, two_builds):
    a, b, _ = two_builds
    rc, _, err = run(capsys, registry_cli.main, "rollback", M, "--tag=stable", f"--registry={registry_uri}")
    assert rc == 0, err
    state = registry.tag_state(M, "stable", strict=True)
    assert (state.seq, state.build_hash, state.event["action"]) == (3, build_hash(a), "rollback")
    rc, _, err = _fetch(capsys, registry_uri, tmp_path / "out")
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["build_hash"] == build_hash(a)


def test_promote_repairs_a_tampered_pointer_from_the_signed_history(capsys, registry_uri, registry, tmp_path, two_builds):
    a, b, old_pointer = two_builds
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=3), tag="canary")
    overwrite(registry, registry.tag_key(M, "stable"), old_pointer)
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={b}", f"--registry={registry_uri}")
    assert rc == 0 and "nothing to move" in out and "the pointer was rolled back; promote rewrites it" in err
    assert registry.read_pointer(M, "stable").build_hash == build_hash(b)
    assert _fetch(capsys, registry_uri, tmp_path / "out")[0] == 0


def test_fetch_with_a_foreign_key_refuses_the_tag_state(capsys, registry_uri, tmp_path, keys, two_builds):
    rc, _, err = run(capsys, fetch.main, f"--model={M}", "--tag=stable", f"--out={tmp_path / 'o'}", f"--registry={registry_uri}",
                     f"--public-key={keys['stranger_public']}")  # fmt: skip
    assert rc == 1 and "signature does not verify" in one_line_error(err)
