"""Failures a user can cause: mistyped URIs, dead endpoints, missing credentials. And notifications."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest

from modelgate import notify
from modelgate.cli import fetch, promote
from modelgate.cli import registry as registry_cli

from modelgate.testing.cli import one_line_error, promote_ok, run
from modelgate.testing.releases import build_hash, make_bundle


@pytest.mark.parametrize("bad", ["gs:/x", "s3://bucket/x", "relative/registry", "file://relative/path", "gs://Bad_Bucket"])
def test_mistyped_registry_uri_is_one_line_and_writes_nothing(capsys, tmp_path, bad):
    bundle = make_bundle(tmp_path / "b")
    for main, argv in [
        (promote.main, ["--tag=stable", f"--release={bundle}"]),
        (fetch.main, ["--model=m", "--tag=stable", f"--out={tmp_path / 'out'}"]),
        (registry_cli.main, ["ls"]),
    ]:
        rc, out, err = run(capsys, main, *argv, f"--registry={bad}")
        assert rc == 2 and out == ""
        assert "registry" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "workspace"]
    assert list((tmp_path / "workspace").iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket closes


def test_a_dead_gcs_endpoint_fails_in_seconds(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_closed_port()}")
    bundle = make_bundle(tmp_path / "b")
    start = time.monotonic()
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", "--registry=gs://some-bucket/x")
    elapsed = time.monotonic() - start
    print(f"\ndead endpoint: promote failed after {elapsed:.1f}s")
    line = one_line_error(err)
    assert rc == 1 and "no answer from" in line
    assert elapsed < 30  # the client's default policy retries for minutes


def test_missing_gcs_credentials_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-credentials.json"))
    rc, out, err = run(capsys, registry_cli.main, "ls", "--registry=gs://some-bucket")
    assert rc == 1 and "credentials" in one_line_error(err)


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((self.path, dict(self.headers), body))
        self.send_response(_Receiver.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_promote_notifies_with_a_verifiable_signature(capsys, monkeypatch, registry_uri, registry, tmp_path, receiver):
    monkeypatch.setenv("MODELGATE_NOTIFY_SECRET", "s3cret")
    registry.storage.create("config/notify.json", json.dumps({"endpoints": [f"{receiver}/from-config"]}).encode())
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a)
    result = promote_ok(capsys, registry_uri, b, extra=[f"--notify={receiver}/from-flag"])[0]
    assert result["notified"] == 2
    paths = [path for path, _, _ in _Receiver.received]
    assert paths == ["/from-config", "/from-flag", "/from-config"]
    _, headers, body = _Receiver.received[-1]
    assert notify.verify("s3cret", body, headers[notify.TIMESTAMP_HEADER], headers[notify.SIGNATURE_HEADER])
    assert not notify.verify("other", body, headers[notify.TIMESTAMP_HEADER], headers[notify.SIGNATURE_HEADER])
    event = json.loads(body)
    assert event["build_hash"] == build_hash(b) and event["previous"] == build_hash(a)
    assert event["tag"] == "stable" and event["registry"] == registry_uri and len(event["nonce"]) == 32
    # Unchanged: nothing moved, nobody notified.
    promote_ok(capsys, registry_uri, b)
    assert len(_Receiver.received) == 3


def test_a_failed_notification_warns_but_the_promotion_stands(capsys, monkeypatch, registry, registry_uri, tmp_path, receiver):
    monkeypatch.setenv("MODELGATE_NOTIFY_SECRET", "s3cret")
    _Receiver.status = 500
    try:
        rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b')}",
                           f"--registry={registry_uri}", f"--notify={receiver}", f"--notify=http://127.0.0.1:{_closed_port()}")  # fmt: skip
    finally:
        _Receiver.status = 200
    assert rc == 0 and out.startswith("promoted")
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all("warning: notification to" in w and "will poll" in w for w in warnings)
    assert registry.read_pointer("tiny_transformer", "stable") is not None


def test_without_a_secret_promote_warns_and_does_not_notify(capsys, registry_uri, tmp_path, receiver):
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b')}",
                     f"--registry={registry_uri}", f"--notify={receiver}")  # fmt: skip
    assert rc == 0 and "MODELGATE_NOTIFY_SECRET is not set" in err
    assert _Receiver.received == []


def test_unusable_keys_are_one_line_and_write_nothing(capsys, monkeypatch, registry_uri, registry, tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = tmp_path / "ed25519.pem"
    ed.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    bundle = make_bundle(tmp_path / "b")
    for key, message in [(ed, "Ed25519 keys are not supported"), (keys["signer_public"], "not an unencrypted private key")]:
        rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={registry_uri}", f"--signing-key={key}")
        assert rc == 2 and message in one_line_error(err)
    assert registry.storage.list("") == []
    # The key itself may come from the environment as PEM text (a CI secret).
    monkeypatch.setenv("MODELGATE_SIGNING_KEY", keys["signer"].read_text())
    monkeypatch.setenv("MODELGATE_PUBLIC_KEY", keys["signer_public"].read_text())
    promote_ok(capsys, registry_uri, bundle)
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={tmp_path / 'o'}", f"--registry={registry_uri}")
    assert rc == 0, err
