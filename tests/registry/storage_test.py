"""The storage contract, identical on both backends: create-only, compare-and-swap, streaming."""

from __future__ import annotations

import hashlib

from modelgate.registry.storage import Storage


def test_create_is_create_only(registry):
    s: Storage = registry.storage
    assert s.read("a/b.json") is None and not s.exists("a/b.json")
    assert s.create("a/b.json", b"first") is True
    assert s.create("a/b.json", b"second") is False
    assert s.read("a/b.json") == b"first" and s.exists("a/b.json")


def test_swap_is_compare_and_swap(registry):
    s: Storage = registry.storage
    assert s.swap("t.json", b"one", expected=None) is True
    assert s.swap("t.json", b"again", expected=None) is False  # no longer absent
    data, v1 = s.read_versioned("t.json")
    assert data == b"one"
    assert s.swap("t.json", b"two", expected=v1) is True
    assert s.swap("t.json", b"three", expected=v1) is False  # stale version: lost the race
    data, v2 = s.read_versioned("t.json")
    assert data == b"two" and v2 != v1


def test_put_file_is_create_only_and_streams_back(registry, tmp_path):
    s: Storage = registry.storage
    data = bytes(range(256)) * 5000  # 1.25 MB: more than one chunk
    path = tmp_path / "f"
    path.write_bytes(data)
    seen = []
    assert s.put_file("blobs/x", path, len(data), progress=seen.append) is True
    assert sum(seen) == len(data)
    path.write_bytes(b"other")
    assert s.put_file("blobs/x", path, 5) is False
    chunks = []
    assert s.read_into("blobs/x", chunks.append) is True
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
    assert s.read_into("blobs/missing", chunks.append) is False


def test_listing(registry):
    s: Storage = registry.storage
    for key in ("models/a/tags/x.json", "models/a/builds/1.json", "models/b/tags/y.json", "blobs/sha256/00"):
        s.create(key, b"{}")
    assert s.list("models/a/") == ["models/a/builds/1.json", "models/a/tags/x.json"]
    assert s.list("models/none/") == []
    assert s.list_dirs("models/") == ["a", "b"]
    assert s.list_dirs("nothing/") == []
