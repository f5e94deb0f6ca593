"""Copy and hash in one pass (modelgate.registry.transfer): the digest is of the bytes written,
every buffer boundary included, and promote and fetch refuse what does not match, leaving nothing."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from modelgate.cli import fetch, promote
from modelgate.registry import transfer
from modelgate.testing.cli import one_line_error, overwrite, promote_ok, run
from modelgate.testing.releases import file_digests, make_bundle

B = transfer.BUFFER
SIZES = [0, 1, B - 1, B, B + 1, 3 * B + 12345, 9 * B]  # more buffers than the pool holds


S = transfer.SPAN
FILE_SIZES = SIZES + [S - 1, S, S + 1, 4 * S + 4097]  # more spans than may be in flight
COPIES = {"kernel": transfer.copy_hashed, "buffers": transfer._copy_hashed_buffers}


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("size", FILE_SIZES)
def test_copy_hashed_writes_and_hashes_the_same_bytes(tmp_path, size, how):
    data = random.Random(size).randbytes(size)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "w+b", buffering=0) as dst:
        got = COPIES[how](src.fileno(), dst.fileno(), size)
    assert got == (size, hashlib.sha256(data).hexdigest())
    assert (tmp_path / "dst").read_bytes() == data


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("limit", [0, 2 * B, S, S + 5])
def test_copy_hashed_stops_at_the_limit(tmp_path, how, limit):
    (tmp_path / "src").write_bytes(b"x" * (limit + 1))
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "w+b", buffering=0) as dst:
        with pytest.raises(transfer.TooLarge):
            COPIES[how](src.fileno(), dst.fileno(), limit)
    assert (tmp_path / "dst").stat().st_size <= limit + 1


def test_copy_hashed_falls_back_where_sendfile_is_refused(tmp_path, monkeypatch):
    import errno

    def refuse(*args):
        raise OSError(errno.EINVAL, "refused")

    monkeypatch.setattr(os, "sendfile", refuse)
    data = random.Random(7).randbytes(3 * B + 1)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "w+b", buffering=0) as dst:
        assert transfer.copy_hashed(src.fileno(), dst.fileno(), len(data)) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "dst").read_bytes() == data


@pytest.mark.parametrize("size", SIZES)
def test_hashing_writer_takes_chunks_of_any_size(tmp_path, size):
    data = random.Random(size).randbytes(size)
    rng = random.Random(1)
    with open(tmp_path / "dst", "wb", buffering=0) as dst:
        writer = transfer.HashingWriter(dst.fileno(), size)
        i = 0
        while i < size:
            n = rng.choice([1, 8192, B - 3, B, 2 * B + 7])
            writer.write(data[i : i + n])
            i += n
        got = writer.finish()
    assert got == (size, hashlib.sha256(data).hexdigest())
    assert (tmp_path / "dst").read_bytes() == data
    with open(tmp_path / "dst2", "wb", buffering=0) as dst:
        writer = transfer.HashingWriter(dst.fileno(), size)
        with pytest.raises(transfer.TooLarge):
            writer.write(data + b"!")
        writer.close()


# ---- fetch: a stored blob spoiled in its last buffer, or cut at a buffer boundary


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda d: d[:-1] + bytes([d[-1] ^ 0x80]), "does not match the signed manifest"),  # the last buffer
        (lambda d: d[:1] + bytes([d[1] ^ 0x01]) + d[2:], "does not match the signed manifest"),  # the first
        (lambda d: d[: 2 * B], "does not match the signed manifest"),  # a buffer boundary
        (lambda d: d[: 2 * B] + b"\0" * (len(d) - 2 * B), "does not match the signed manifest"),  # zeroed tail
        (lambda d: d + b"\0" * B, "larger than its manifest says"),
    ],
    ids=["last-buffer", "first-buffer", "truncated-at-boundary", "zeroed-tail", "extended"],
)
def test_fetch_of_a_spoiled_large_blob_fails_and_leaves_nothing(capsys, registry_uri, registry, tmp_path, spoil, message):
    bundle = make_bundle(tmp_path / "b", weights_size=3 * B + 777)
    promote_ok(capsys, registry_uri, bundle)
    key = registry.blob_key(file_digests(bundle)["weights.safetensors"])
    overwrite(registry, key, spoil(registry.storage.read(key)))
    parent = tmp_path / "deploy"
    parent.mkdir()
    rc, out, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={parent / 'new'}", f"--registry={registry_uri}")
    assert rc == 1 and out == ""
    assert message in one_line_error(err) and "weights.safetensors" in err
    assert list(parent.iterdir()) == []


def test_fetch_of_a_large_build_gives_the_exact_bytes(capsys, registry_uri, tmp_path):
    bundle = make_bundle(tmp_path / "b", weights_size=5 * B + 3)
    promote_ok(capsys, registry_uri, bundle)
    out = tmp_path / "out"
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out}", f"--registry={registry_uri}")
    assert rc == 0, err
    for name in ("weights.safetensors", "model.onnx"):
        assert (out / name).read_bytes() == (bundle / name).read_bytes()


# ---- promote: the bundle's files are checked as they are copied, before anything is linked


def _keys(registry):
    return registry.storage.list("")


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: d[:-1] + bytes([d[-1] ^ 0x01]),
        lambda d: d[: 2 * B],
        lambda d: d + b"\0",
    ],
    ids=["flipped-last-byte", "truncated", "extended"],
)
def test_promote_of_a_spoiled_large_file_writes_nothing(capsys, registry_uri, registry, tmp_path, spoil):
    bundle = make_bundle(tmp_path / "b", weights_size=3 * B + 5)
    weights = bundle / "weights.safetensors"
    weights.write_bytes(spoil(weights.read_bytes()))
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={registry_uri}")
    assert rc == 1 and out == ""
    assert "weights.safetensors does not match its manifest" in one_line_error(err)
    assert _keys(registry) == []
    if hasattr(registry.storage, "root"):  # and no temporary is left behind
        assert not any((registry.storage.root / ".tmp").iterdir())


def test_a_spoiled_file_in_a_later_bundle_links_no_blob_of_an_earlier_one(capsys, registry_uri, registry, tmp_path):
    a = make_bundle(tmp_path / "b", model="alpha")
    z = make_bundle(tmp_path / "b", model="zeta")
    (z / "model.onnx").write_bytes(b"\0" * 2048)
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={a}", f"--release={z}", f"--registry={registry_uri}")
    assert rc == 1 and "model.onnx does not match its manifest" in one_line_error(err)
    assert _keys(registry) == []


def test_files_with_the_same_bytes_are_copied_once(capsys, registry_uri, registry, tmp_path):
    bundle = make_bundle(tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "copy.onnx").write_bytes((bundle / "model.onnx").read_bytes())
    manifest["files"]["copy.onnx"] = manifest["files"]["model.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (result,) = promote_ok(capsys, registry_uri, bundle)
    assert result["files_uploaded"] == len(manifest["files"]) - 1
    out = tmp_path / "out"
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert (out / "copy.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()


def test_the_local_blob_is_durable_before_it_has_a_name(tmp_path, monkeypatch):
    """The copy is fsynced before it is linked into place (a crash cannot name a short blob)."""
    from modelgate.registry.storage import LocalStorage

    order = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: (order.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "link", lambda a, b: (order.append("link"), real_link(a, b))[1])
    store = LocalStorage(tmp_path / "reg")
    (tmp_path / "src").write_bytes(b"abc" * B)
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        with store.staged_copy(fd, 3 * B, "src") as staged:
            assert staged.sha256 == hashlib.sha256(b"abc" * B).hexdigest()
            assert store.put_staged("blobs/x", staged) is True
    finally:
        os.close(fd)
    assert order[:2] == ["fsync", "link"]
    assert (tmp_path / "reg" / "blobs" / "x").read_bytes() == b"abc" * B
    assert not any((tmp_path / "reg" / ".tmp").iterdir())
