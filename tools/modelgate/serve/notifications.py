"""Which promotion notifications the service acts on: signed, fresh, and not seen before.

The sender (modelgate.notify, used by promote and rollback) signs timestamp + "." + body with
HMAC-SHA256. A notification carries no authority over *what* is served: an accepted one only
wakes the rollout worker, which reads the tag from the registry and verifies the build itself.
Checking them still matters, because an unauthenticated trigger would let anyone make the
service download and load builds at will.

    no headers, malformed timestamp                        401
    a signature that does not match the body and timestamp 403
    a timestamp further than `tolerance_s` from now        403 (stale)
    a timestamp before this service started                403 (older than the service)
    a signature already accepted within the window         403 (replayed)

Replays across restarts. The cache of accepted signatures lives in memory, so a restarted service
could not tell a notification its previous run accepted. Rather than keep that cache on disk, the
service refuses every notification signed before it started (the guard's construction, before
the rollout worker's first look at the tag): such a notification can tell it nothing that the
startup check, which reads the registry afterwards, has not already seen, because promote
notifies only after its move is committed. So a replay from before a restart is refused without
any state: nothing to write (an fsync) per notification, nothing to corrupt or to grow, and the
replay cache of one run only has to cover that run. Timestamps are whole seconds, so "before"
means in an earlier second than the one the service started in: a notification signed in that
same second is accepted (a promote right after a deploy is not delayed to the next poll), which
leaves a replay open only if the service restarted within the second the notification was signed.
A sender whose clock is behind the service's has its notifications refused for that long after a
restart; the poll (--poll-interval) picks their moves up.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from modelgate import notify

MAX_REMEMBERED = 100_000


@dataclass(frozen=True)
class Verdict:
    status: int  # 200 when accepted
    reason: str

    @property
    def accepted(self) -> bool:
        return self.status == 200


class NotificationGuard:
    def __init__(self, secret: str | None, tolerance_s: float = notify.DEFAULT_TOLERANCE_S, clock: Callable[[], float] = time.time):
        self.secret = secret
        self.tolerance_s = tolerance_s
        self._clock = clock
        self.started = int(clock())  # notifications signed in an earlier second are refused (see the module docstring)
        self._seen: dict[str, float] = {}  # signature -> its timestamp
        self._lock = threading.Lock()
        self.accepted = 0
        self.refused = 0

    def check(self, body: bytes, headers: Mapping[str, str]) -> Verdict:
        verdict = self._check(body, headers)
        with self._lock:
            if verdict.accepted:
                self.accepted += 1
            else:
                self.refused += 1
        return verdict

    def _check(self, body: bytes, headers: Mapping[str, str]) -> Verdict:
        if not self.secret:
            return Verdict(503, f"notifications are disabled here (${notify.ENV_SECRET} is not set); the service polls")
        timestamp = headers.get(notify.TIMESTAMP_HEADER.lower()) or headers.get(notify.TIMESTAMP_HEADER)
        signature = headers.get(notify.SIGNATURE_HEADER.lower()) or headers.get(notify.SIGNATURE_HEADER)
        if not timestamp or not signature:
            return Verdict(401, f"unsigned notification: {notify.TIMESTAMP_HEADER} and {notify.SIGNATURE_HEADER} are required")
        try:
            sent = int(timestamp)
        except ValueError:
            return Verdict(401, f"malformed {notify.TIMESTAMP_HEADER}: expected unix seconds")
        if not hmac.compare_digest(notify.signature(self.secret, timestamp, body), signature):
            return Verdict(403, "the signature does not match this body and timestamp")
        now = self._clock()
        if abs(now - sent) > self.tolerance_s:
            when = f"{now - sent:.0f} s ago" if sent <= now else f"{sent - now:.0f} s in the future"
            return Verdict(403, f"stale notification: signed {when}; the limit is {self.tolerance_s:.0f} s")
        if sent < self.started:
            return Verdict(
                403,
                f"notification signed {self.started - sent} s before this service started: refused (a replay across a "
                "restart cannot be told apart); the service read the registry itself when it started",
            )
        with self._lock:
            self._forget_expired(now)
            if signature in self._seen:
                return Verdict(403, "replayed notification: this signature was already accepted")
            if len(self._seen) >= MAX_REMEMBERED:
                return Verdict(429, "too many notifications in the freshness window")
            self._seen[signature] = sent
        return Verdict(200, "accepted")

    def _forget_expired(self, now: float) -> None:
        # Anything signed more than tolerance_s ago is refused as stale anyway.
        if len(self._seen) < 1024:
            return
        for key in [k for k, sent in self._seen.items() if now - sent > self.tolerance_s]:
            del self._seen[key]
