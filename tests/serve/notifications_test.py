"""The notification guard on its own, with a controlled clock."""

from __future__ import annotations

from modelgate import notify
from modelgate.serve.notifications import NotificationGuard

SECRET = "s3cret"


def headers(body: bytes, at: float, secret: str = SECRET) -> dict:
    return notify.sign_headers(secret, body, at)


def test_fresh_signed_notifications_are_accepted_once():
    now = [1_000_000.0]
    guard = NotificationGuard(SECRET, tolerance_s=300, clock=lambda: now[0])
    body = b'{"model":"m","tag":"stable"}'
    first = headers(body, now[0])
    assert guard.check(body, first).status == 200
    assert guard.check(body, first).status == 403  # replay
    now[0] += 1
    assert guard.check(body, headers(body, now[0])).status == 200  # re-signed later: a new notification
    now[0] += 400
    assert "stale" in guard.check(body, first).reason  # the replay window has closed: stale now
    assert (guard.accepted, guard.refused) == (2, 2)


def test_refusals_and_their_status_codes():
    guard = NotificationGuard(SECRET, tolerance_s=300, clock=lambda: 5000.0)
    body = b"{}"
    assert guard.check(body, {}).status == 401
    assert guard.check(body, {notify.SIGNATURE_HEADER: "sha256=00"}).status == 401
    assert guard.check(body, headers(body, 5000, secret="other")).status == 403
    assert guard.check(b"{ }", headers(body, 5000)).status == 403
    assert "ago" in guard.check(body, headers(body, 4000)).reason
    assert "in the future" in guard.check(body, headers(body, 6000)).reason
    assert NotificationGuard(None).check(body, headers(body, 5000)).status == 503


def test_a_notification_signed_before_the_service_started_is_refused():
    """A replay across a restart: the new process has an empty replay cache, so it refuses
    everything signed in a second before its own start (its startup check has read the registry since)."""
    now = [1_000_000.4]
    before = NotificationGuard(SECRET, tolerance_s=300, clock=lambda: now[0])
    body = b'{"model":"m","tag":"stable"}'
    captured = headers(body, now[0] + 10)
    now[0] += 10
    assert before.check(body, captured).status == 200
    now[0] += 20  # restarted 20 s later, well within the 300 s freshness window
    after = NotificationGuard(SECRET, tolerance_s=300, clock=lambda: now[0])
    verdict = after.check(body, captured)
    assert verdict.status == 403 and "20 s before this service started" in verdict.reason
    assert after.check(body, headers(body, now[0])).status == 200  # signed in the second it started: accepted
    assert after.check(b"{}", headers(b"{}", now[0] - 1)).status == 403
