"""Copy and hash in one pass (modelgate.registry.transfer): the digest (blake3 where the manifest
lists one, else sha256) is of the bytes written, every buffer boundary included, and promote and
fetch refuse what does not match, leaving nothing."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest
from blake3 import blake3

from modelgate.cli import fetch, promote
from modelgate.registry import transfer
from modelgate.testing.cli import one_line_error, overwrite, promote_ok, run
from modelgate.testing.releases import file_digests, make_bundle

B = transfer.BUFFER
SIZES = [0, 1, B - 1, B, B + 1, 3 * B + 12345, 9 * B]  # more buffers than the pool holds


S = transfer.SPAN
FILE_SIZES = SIZES + [S - 1, S, S + 1, 4 * S + 4097]  # more spans than may be in flight
COPIES = {"kernel": transfer.copy_hashed, "buffers": transfer._copy_hashed_buffers}
DIGESTS = {"sha256": lambda data: hashlib.sha256(data).hexdigest(), "blake3": lambda data: blake3(data).hexdigest()}


@pytest.mark.parametrize("algorithm", DIGESTS)
@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("size", FILE_SIZES)
def test_copy_hashed_writes_and_hashes_the_same_bytes(tmp_path, size, how, algorithm):
    data = random.Random(size).randbytes(size)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "w+b", buffering=0) as dst:
        if how == "kernel":
            got = transfer.copy_hashed(src.fileno(), dst.fileno(), size, algorithm=algorithm)
        else:
            got = transfer._copy_hashed_buffers(src.fileno(), dst.fileno(), size, algorithm)
    assert got == (size, DIGESTS[algorithm](data))
    assert (tmp_path / "dst").read_bytes() == data


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("limit", [0, 2 * B, S, S + 5])
def test_copy_hashed_stops_at_the_limit(tmp_path, how, limit):
    (tmp_path / "src").write_bytes(b"x" * (limit + 1))
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "w+b", buffering=0) as dst:
        with pytest.raises(transfer.TooLarge):
            COPIES[how](src.fileno(), dst.fileno(), limit)
    assert (tmp_path / "dst").stat().st_size <= limit + 1


def test_copy_hashed_hashes_what_landed_in_the_target_not_the_source(tmp_path, monkeypatch):
    # A write that lands wrong (here: one byte of each span spoiled after the kernel copied it)
    # must show in the digest, so a fetch or promote refuses it: the hash reads the target back.
    send = os.sendfile

    def spoiling_send(out_fd, in_fd, offset, count):
        sent = send(out_fd, in_fd, offset, count)
        if sent:
            end = os.lseek(out_fd, 0, os.SEEK_CUR)
            os.pwrite(out_fd, bytes([os.pread(out_fd, 1, end - 1)[0] ^ 0xFF]), end - 1)
        return sent

    monkeypatch.setattr(os, "sendfile", spoiling_send)
    data = random.Random(11).randbytes(3 * S + 12345)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb", buffering=0) as src, open(tmp_path / "dst", "w+b", buffering=0) as dst:
        got = transfer.copy_hashed(src.fileno(), dst.fileno(), len(data), algorithm="blake3")
    landed = (tmp_path / "dst").read_bytes()
    assert landed != data
    assert got == (len(data), blake3(landed).hexdigest())


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


@pytest.mark.parametrize("algorithm", DIGESTS)
@pytest.mark.parametrize("size", SIZES)
def test_hashing_writer_takes_chunks_of_any_size(tmp_path, size, algorithm):
    data = random.Random(size).randbytes(size)
    rng = random.Random(1)
    with open(tmp_path / "dst", "wb", buffering=0) as dst:
        writer = transfer.HashingWriter(dst.fileno(), size, algorithm)
        i = 0
        while i < size:
            n = rng.choice([1, 8192, B - 3, B, 2 * B + 7])
            writer.write(data[i : i + n])
            i += n
        got = writer.finish()
    assert got == (size, DIGESTS[algorithm](data))
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
@pytest.mark.parametrize("listed", ["blake3", "sha256"])
def test_fetch_of_a_spoiled_large_blob_fails_and_leaves_nothing(capsys, registry_uri, registry, tmp_path, spoil, message, listed):
    """By the signed manifest's blake3; by its sha256 where it lists none (a build from before)."""
    bundle = make_bundle(tmp_path / "b", weights_size=3 * B + 777, blake3=listed == "blake3")
    promote_ok(capsys, registry_uri, bundle)
    key = registry.blob_key(file_digests(bundle)["weights.safetensors"])
    overwrite(registry, key, spoil(registry.storage.read(key)))
    parent = tmp_path / "deploy"
    parent.mkdir()
    rc, out, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={parent / 'new'}", f"--registry={registry_uri}")
    assert rc == 1 and out == ""
    assert message in one_line_error(err) and "weights.safetensors" in err
    if "larger" not in message:
        assert f"{listed} " in err
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
@pytest.mark.parametrize("listed", ["blake3", "sha256"])
def test_promote_of_a_spoiled_large_file_writes_nothing(capsys, registry_uri, registry, tmp_path, spoil, listed):
    """A release file changed after its manifest was written: checked by the manifest's blake3
    (by its sha256 where it lists none), on the local registry while it is copied."""
    bundle = make_bundle(tmp_path / "b", weights_size=3 * B + 5, blake3=listed == "blake3")
    weights = bundle / "weights.safetensors"
    weights.write_bytes(spoil(weights.read_bytes()))
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={registry_uri}")
    assert rc == 1 and out == ""
    assert "weights.safetensors does not match its manifest" in one_line_error(err)
    assert f"{listed} " in err or "size" in err
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
            assert staged.digest == hashlib.sha256(b"abc" * B).hexdigest()
            assert store.put_staged("blobs/x", staged) is True
    finally:
        os.close(fd)
    assert order[:2] == ["fsync", "link"]
    assert (tmp_path / "reg" / "blobs" / "x").read_bytes() == b"abc" * B
    assert not any((tmp_path / "reg" / ".tmp").iterdir())


# ---- blake3 verifies, sha256 addresses (modelgate.digests)


def test_the_signed_manifest_carries_each_files_blake3(capsys, registry_uri, registry, tmp_path):
    bundle = make_bundle(tmp_path / "b", weights_size=2 * B + 1)
    promote_ok(capsys, registry_uri, bundle)
    listed = json.loads((bundle / "manifest.json").read_text())["files"]
    stored = json.loads(registry.storage.read(registry.build_key("tiny_transformer", json.loads((bundle / "manifest.json").read_text())["build_hash"])))
    for name, spec in listed.items():
        data = (bundle / name).read_bytes()
        assert spec["blake3"] == blake3(data).hexdigest() and spec["sha256"] == hashlib.sha256(data).hexdigest()
        assert stored["files"][name] == spec  # signed with the rest of the manifest
        assert registry.storage.exists(registry.blob_key(spec["sha256"]))  # addressed by sha256
    out = tmp_path / "out"
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["files"] == listed


def test_a_manifest_without_blake3_promotes_and_fetches_by_sha256(capsys, registry_uri, registry, tmp_path):
    bundle = make_bundle(tmp_path / "b", weights_size=2 * B + 1, blake3=False)
    promote_ok(capsys, registry_uri, bundle)
    out = tmp_path / "out"
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert (out / "weights.safetensors").read_bytes() == (bundle / "weights.safetensors").read_bytes()
    assert all("blake3" not in spec for spec in json.loads((out / "manifest.json").read_text())["files"].values())


def test_a_build_stored_without_blake3_is_promoted_again_from_a_bundle_with_it(capsys, registry_uri, registry, tmp_path):
    old = make_bundle(tmp_path / "old", blake3=False)
    new = make_bundle(tmp_path / "new", blake3=True)
    assert file_digests(old) == file_digests(new)
    promote_ok(capsys, registry_uri, old)
    rc, _, err = run(capsys, promote.main, "--tag=v1.0.0", f"--release={new}", f"--registry={registry_uri}")
    assert rc == 0, err


def test_a_second_bundles_file_of_the_same_sha256_is_checked_by_its_own_blake3(capsys, registry_uri, registry, tmp_path):
    """Two bundles list the same model.onnx bytes (one copy is made); the second lists a wrong
    blake3 for it: refused, and nothing is written."""
    a = make_bundle(tmp_path / "b", model="alpha")
    z = make_bundle(tmp_path / "b", model="zeta")
    (z / "model.onnx").write_bytes((a / "model.onnx").read_bytes())
    manifest = json.loads((z / "manifest.json").read_text())
    listed = json.loads((a / "manifest.json").read_text())["files"]["model.onnx"]
    manifest["files"]["model.onnx"] = dict(listed, blake3=blake3(b"other bytes").hexdigest())
    (z / "manifest.json").write_text(json.dumps(manifest))
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={a}", f"--release={z}", f"--registry={registry_uri}")
    assert rc == 1 and "model.onnx does not match its manifest" in one_line_error(err) and "blake3" in err
    assert _keys(registry) == []


@pytest.mark.parametrize("value", ["0" * 63, "G" * 64, 7, None])
def test_a_malformed_blake3_in_a_release_manifest_is_refused_in_one_line(capsys, registry_uri, registry, tmp_path, value):
    bundle = make_bundle(tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["blake3"] = value
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={registry_uri}")
    assert rc == 1 and out == ""
    assert "files['model.onnx']: 'blake3' must be 64 lowercase hex digits" in one_line_error(err)
    assert _keys(registry) == []
