"""The storage contract, identical on both backends: create-only, compare-and-swap, streaming,
staging; and the one scheme table that registry URIs and checkpoint sources go through."""

from __future__ import annotations

import hashlib
import os

import pytest

from modelgate.registry.storage import SCHEMES, Storage, source_reader
from modelgate.registry.transfer import TooLarge


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


def test_staged_copy_checks_the_bytes_before_any_key_holds_them(registry, tmp_path):
    # Every backend stages (LocalStorage in its temporaries; GCS by the base's default), so promote
    # never asks which backend it has.
    s: Storage = registry.storage
    data = bytes(range(256)) * 5000
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        with s.staged_copy(fd, len(data), path, "sha256") as staged:
            assert (staged.size, staged.digest) == (len(data), hashlib.sha256(data).hexdigest())
            assert not s.exists("blobs/staged")
            assert s.put_staged("blobs/staged", staged) is True
            assert s.put_staged("blobs/staged", staged) is False
    finally:
        os.close(fd)
    chunks = []
    assert s.read_into("blobs/staged", chunks.append) and b"".join(chunks) == data
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TooLarge), s.staged_copy(fd, len(data) - 1, path):
            pass
    finally:
        os.close(fd)
    assert s.sweep_temporaries() >= 0


def test_an_object_read_back_as_a_checkpoint_source(registry):
    # `bazel run :train` pins the registry's blob as a source: the scheme table reads every
    # registry backend's objects back.
    s: Storage = registry.storage
    s.create("blobs/sha256/ab", b"checkpoint bytes")
    uri = s.source_uri("blobs/sha256/ab")
    read = source_reader(uri)
    assert read is not None, uri
    chunks = []
    read(uri, chunks.append)
    assert b"".join(chunks) == b"checkpoint bytes"


def test_the_scheme_table_is_what_registry_uris_and_sources_accept():
    from modelgate.errors import UsageError
    from modelgate.registry import uri

    for scheme, row in SCHEMES.items():
        assert (row.parse is None) == (row.open is None) == (not row.registry), scheme
        assert (row.read is None) == (not row.source), scheme
        if row.open is None:
            with pytest.raises(UsageError, match=f"unsupported registry scheme '{scheme}'.*expected gs://BUCKET"):
                uri.parse(f"{scheme}://somewhere/x")
        else:
            assert uri.parse(row.registry.replace("BUCKET", "bucket").replace("[/PREFIX]", "")).scheme == scheme
        assert (source_reader(f"{scheme}://x/y") is None) == (row.read is None)
    assert source_reader("s3://b/o") is None and source_reader("no-scheme") is None
