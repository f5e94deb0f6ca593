"""Tag grammar, registry URIs, metric gates and notification signatures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelgate import notify
from modelgate.registry import budgets, tags, uri
from modelgate.errors import UsageError


@pytest.mark.parametrize("tag", ["stable", "canary", "prod-eu", "a", "rc"])
def test_channel_tags_move(tag):
    assert tags.tag_kind(tag) is tags.CHANNEL and tags.CHANNEL.movable


@pytest.mark.parametrize("tag", ["v1.0.0", "v0.1.2", "v10.20.30", "v1.0.0-rc.1", "v2.0.0-rc.0"])
def test_version_tags_are_immutable(tag):
    assert tags.tag_kind(tag) is tags.VERSION and not tags.VERSION.movable


@pytest.mark.parametrize(
    "tag", ["", "Stable", "1.0.0", "v1.0", "v1", "v1-0-0", "v01.0.0", "v1.0.0-rc1", "v1.0.0-beta.1", "x_y", "-a", "a/b"]
)
def test_other_tags_are_refused(tag):
    with pytest.raises(UsageError, match="invalid tag"):
        tags.tag_kind(tag)


def test_rc_without_dot_gets_a_hint():
    with pytest.raises(UsageError, match="dot before the rc number"):
        tags.tag_kind("v1.2.0-rc1")


@settings(database=None)
@given(st.text(max_size=20))
def test_every_string_is_one_kind_or_refused(text):
    try:
        kind = tags.tag_kind(text)
    except UsageError:
        return
    assert kind.pattern.fullmatch(text)
    assert "/" not in text and ".." not in text  # safe as an object name


@pytest.mark.parametrize(
    "text, scheme, where",
    [
        ("gs://bucket", "gs", ("bucket", "")),
        ("gs://my-bucket/a/b/", "gs", ("my-bucket", "a/b")),
        ("file:///abs/path", "file", Path("/abs/path")),
        ("file://localhost/abs", "file", Path("/abs")),
    ],
)
def test_registry_uris(text, scheme, where):
    parsed = uri.parse(text)
    assert parsed.scheme == scheme
    assert ((parsed.bucket, parsed.prefix) if scheme == "gs" else parsed.path) == where


@pytest.mark.parametrize(
    "text, message",
    [
        ("gs:/x", "malformed"),
        ("gs:bucket", "malformed"),
        ("s3://x", "unsupported registry scheme 's3'"),
        ("relative/path", "not a URI"),
        ("/abs/path", "not a URI"),
        ("file://relative/path", "not an absolute path"),
        ("file:relative", "malformed"),
        ("gs://UPPER", "not a valid GCS bucket"),
        ("gs://b/../x", "'..'"),
        ("", "empty"),
    ],
)
def test_mistyped_registry_uris(text, message):
    with pytest.raises(UsageError, match=message):
        uri.parse(text)


def test_registry_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("MODELGATE_REGISTRY", raising=False)
    default = uri.resolve(None)
    assert default.is_default and default.path == tmp_path / ".modelgate" / "registry"
    monkeypatch.setenv("MODELGATE_REGISTRY", "gs://from-env")
    assert str(uri.resolve(None)) == "gs://from-env"
    assert str(uri.resolve("file:///flag")) == "file:///flag"


def test_gates_compare_in_both_directions():
    g = {"acc": {"max_regression": 0.02, "higher_is_better": True}, "loss": {"max_regression": 0.05, "higher_is_better": False}}
    checks = {c.metric: c for c in budgets.compare({"acc": 0.90, "loss": 0.10}, {"acc": 0.95, "loss": 0.20}, g)}
    assert not checks["acc"].passed and checks["acc"].regression == pytest.approx(0.05)
    assert checks["loss"].passed and checks["loss"].regression == pytest.approx(-0.10)
    # Exactly at the budget passes, despite float rounding.
    assert budgets.compare({"acc": 0.93}, {"acc": 0.95}, {"acc": g["acc"]})[0].passed
    missing = budgets.compare({"acc": 0.9}, {}, g)
    assert all(c.passed and c.regression is None for c in missing)


def test_notification_signature_roundtrip_and_tampering():
    body = notify.encode(notify.make_event("m", "stable", "ab" * 32, None, "gs://b"))
    headers = notify.sign_headers("s3cret", body, now=1_000_000)
    ts, sig = headers[notify.TIMESTAMP_HEADER], headers[notify.SIGNATURE_HEADER]
    assert sig.startswith("sha256=")
    assert notify.verify("s3cret", body, ts, sig, now=1_000_010)
    assert not notify.verify("wrong", body, ts, sig, now=1_000_010)
    assert not notify.verify("s3cret", body.replace(b"stable", b"canary"), ts, sig, now=1_000_010)
    assert not notify.verify("s3cret", body, str(int(ts) + 1), sig, now=1_000_010)  # timestamp is signed
    assert not notify.verify("s3cret", body, ts, sig, now=1_000_000 + 3600)  # too old: replay
    assert not notify.verify("s3cret", body, None, sig)
    assert set(json.loads(body)) == {"model", "tag", "build_hash", "previous", "registry", "time", "nonce"}
