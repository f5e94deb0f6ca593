"""Every GCS call has a deadline: an endpoint that accepts and stays silent, or trickles a byte a
second, fails within $MODELGATE_GCS_TIMEOUT seconds, and the message states that bound.

The endpoints are real loopback servers started by the test (threads with listening sockets).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from modelgate.cli import fetch, promote
from modelgate.cli import registry as registry_cli

from .helpers import make_bundle
from .test_behaviour import one_line_error, run

SLACK_S = 1.5  # process overhead on a loaded 2-core machine


class BadEndpoint:
    """Accepts connections; "silent" never answers, "trickle" answers one byte per second. Either
    gives up after GIVE_UP_S, so that a client without a deadline fails the test instead of hanging it."""

    GIVE_UP_S = 30

    def __init__(self, mode: str):
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        try:
            conn.recv(65536)  # the request (or its start)
            if self.mode == "trickle":
                for byte in (b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000)[: self.GIVE_UP_S]:
                    if self.stopped.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            else:
                self.stopped.wait(self.GIVE_UP_S)
            conn.close()
        except OSError:
            pass

    def stop(self):
        self.stopped.set()
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture(params=["silent", "trickle"])
def bad_endpoint(request, monkeypatch):
    endpoint = BadEndpoint(request.param)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint.url)
    yield endpoint
    endpoint.stop()


def _timed(capsys, main, *argv):
    start = time.monotonic()
    rc, out, err = run(capsys, main, *argv)
    return time.monotonic() - start, rc, out, err


@pytest.mark.parametrize("budget", [2, 10])
def test_registry_ls_fails_within_the_configured_bound(capsys, monkeypatch, bad_endpoint, budget):
    monkeypatch.setenv("MODELGATE_GCS_TIMEOUT", str(budget))
    elapsed, rc, out, err = _timed(capsys, registry_cli.main, "ls", "--registry=gs://some-bucket/x")
    line = one_line_error(err)
    with capsys.disabled():
        print(f"\n{bad_endpoint.mode} endpoint, MODELGATE_GCS_TIMEOUT={budget}: registry ls failed after {elapsed:.2f}s: {line[-110:]}")
    assert rc == 1 and out == ""
    assert f"within {budget}s" in line and "no answer from" in line
    assert budget - 0.2 <= elapsed <= budget + SLACK_S


def test_promote_and_fetch_fail_within_the_bound(capsys, monkeypatch, bad_endpoint, tmp_path):
    monkeypatch.setenv("MODELGATE_GCS_TIMEOUT", "2")
    bundle = make_bundle(tmp_path / "b")
    for what, main, argv in [
        ("promote", promote.main, ["--tag=stable", f"--release={bundle}"]),
        ("fetch", fetch.main, ["--model=tiny_transformer", "--tag=stable", f"--out={tmp_path / 'out'}"]),
    ]:
        elapsed, rc, out, err = _timed(capsys, main, *argv, "--registry=gs://some-bucket/x")
        line = one_line_error(err)
        with capsys.disabled():
            print(f"\n{bad_endpoint.mode} endpoint, MODELGATE_GCS_TIMEOUT=2: {what} failed after {elapsed:.2f}s")
        assert rc == 1 and "within 2s" in line
        assert elapsed <= 2 + SLACK_S
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_an_unusable_timeout_setting_is_one_line(capsys, monkeypatch, value):
    monkeypatch.setenv("MODELGATE_GCS_TIMEOUT", value)
    rc, _, err = run(capsys, registry_cli.main, "ls", "--registry=gs://some-bucket/x")
    assert rc == 1 and "MODELGATE_GCS_TIMEOUT must be a positive number of seconds" in one_line_error(err)
