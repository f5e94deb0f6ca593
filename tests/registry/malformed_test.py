"""Malformed registry content: one clear line naming the object and a non-zero exit, never a traceback.

Every command that reads the object is run against it: promote, fetch, registry ls/show/history/
rollback (both backends).
"""

from __future__ import annotations

import json

import pytest

from modelgate.formats import canonical_json

from modelgate.testing.cli import every_command, one_line_error, overwrite, promote_ok, run
from modelgate.testing.releases import make_bundle

M = "tiny_transformer"

EVENT_CASES = {
    "event-empty-object": b"{}",
    "event-list": b"[]",
    "event-seq-string": None,  # the real event with "seq": "1"
    "event-not-json": b"{oops",
    "event-deep": b"[" * 100_000 + b"]" * 100_000,
}
POINTER_CASES = {
    "pointer-build-hash-number": 5,
    "pointer-build-hash-traversal": "../../../../x",
    "pointer-list": None,
}


def _setup(capsys, uri, tmp_path):
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, uri, a)
    promote_ok(capsys, uri, b)
    return make_bundle(tmp_path / "b", seed=3, accuracy=0.97)


@pytest.mark.parametrize("case", sorted(EVENT_CASES))
def test_a_malformed_history_event(capsys, registry_uri, registry, tmp_path, case):
    c = _setup(capsys, registry_uri, tmp_path)
    key = registry.history_key(M, 1)
    data = EVENT_CASES[case]
    if data is None:
        doc = json.loads(registry.storage.read(key))
        doc["seq"] = "1"
        data = canonical_json(doc)
    overwrite(registry, key, data)
    results = {}
    for name, (main, argv) in every_command(tmp_path / "out", c).items():
        if name == "ls":
            continue  # ls reads pointers only
        rc, out, err = run(capsys, main, *argv, f"--registry={registry_uri}")
        line = one_line_error(err)
        results[name] = (rc, line)
        assert rc != 0, (name, err)
        assert "history/0000000001.json" in line, (name, line)
    print(f"\n{case}:", json.dumps({k: v[1][-150:] for k, v in results.items()}, indent=1))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", sorted(POINTER_CASES))
def test_a_malformed_tag_pointer(capsys, registry_uri, registry, tmp_path, case):
    c = _setup(capsys, registry_uri, tmp_path)
    key = registry.tag_key(M, "stable")
    doc = json.loads(registry.storage.read(key))
    if case == "pointer-list":
        data = b"[]"
    else:
        doc["build_hash"] = POINTER_CASES[case]
        data = canonical_json(doc)
    overwrite(registry, key, data)
    if hasattr(registry.storage, "root"):
        # Where the traversal would lead from the registry's root: fetch must not even look there.
        (registry.storage.root.parent / "x.json").write_text("this file is outside the registry")
    for name, (main, argv) in every_command(tmp_path / "out", c).items():
        if name == "history":
            continue  # history reads events only
        rc, out, err = run(capsys, main, *argv, f"--registry={registry_uri}")
        if name in ("promote", "rollback"):
            # Writers hold the key and rewrite a broken pointer from the signed history (with a warning).
            assert rc == 0, (name, err)
            assert "tags/stable.json" in err and "promote rewrites it" in err
            overwrite(registry, key, data)
            continue
        line = one_line_error(err)
        assert rc != 0, (name, err)
        assert "tags/stable.json" in line and "is malformed" in line, (name, line)
        assert "outside the registry" not in line
        if case != "pointer-list":
            assert "'build_hash'" in line, line
    assert not (tmp_path / "out").exists()


def test_a_traversal_key_never_becomes_a_local_path(tmp_path):
    from modelgate.errors import StorageError
    from modelgate.registry.storage import LocalStorage

    storage = LocalStorage(tmp_path / "registry")
    (tmp_path / "secret.json").write_text("{}")
    for key in ("../secret.json", "models/../../secret.json", "/etc/passwd", "a//b"):
        with pytest.raises(StorageError, match="not a plain relative name"):
            storage.read(key)
