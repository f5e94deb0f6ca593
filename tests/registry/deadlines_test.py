"""Every GCS call has a deadline: an endpoint that accepts and stays silent, or trickles a byte a
second, fails within $MODELGATE_GCS_TIMEOUT seconds, and the message states that bound.

The endpoints are real loopback servers started by the test (threads with listening sockets).
"""

from __future__ import annotations

import time

import pytest

from modelgate.cli import fetch, promote
from modelgate.cli import registry as registry_cli

from modelgate.testing.cli import one_line_error, run
from modelgate.testing.endpoints import BadEndpoint
from modelgate.testing.releases import make_bundle

SLACK_S = 1.5  # process overhead on a loaded 2-core machine


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
