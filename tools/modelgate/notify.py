"""Promotion notifications: a JSON event POSTed to each endpoint, signed with HMAC-SHA256.

Promote sends, the inference service verifies; both import this module (standard library only).

    body = JSON {"model", "tag", "build_hash", "previous", "registry", "time", "nonce"}
    X-Modelgate-Timestamp: <unix seconds>
    X-Modelgate-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

The timestamp is inside the MAC so that a captured request cannot be replayed later than
`tolerance_s`; the nonce lets a receiver drop a replay within that window. The secret comes from
$MODELGATE_NOTIFY_SECRET on both sides. A notification only tells the service to look: it then
fetches by tag and verifies the manifest signature and every digest itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

from modelgate.formats import canonical_json

ENV_SECRET = "MODELGATE_NOTIFY_SECRET"
TIMESTAMP_HEADER = "X-Modelgate-Timestamp"
SIGNATURE_HEADER = "X-Modelgate-Signature"
DEFAULT_TOLERANCE_S = 300
_SCHEME = "sha256="


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signature(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The X-Modelgate-Signature value for this timestamp and body."""
    mac = hmac.new(_key(secret), timestamp.encode() + b"." + body, hashlib.sha256)
    return _SCHEME + mac.hexdigest()


def sign_headers(secret: str | bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str | bytes,
    body: bytes,
    timestamp: str | None,
    signature_value: str | None,
    *,
    now: float | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """True if the headers sign exactly this body with this secret, within tolerance_s of now."""
    if not secret or not timestamp or not signature_value:
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), signature_value)


def make_event(model: str, tag: str, build_hash: str, previous: str | None, registry: str, seq: int | None = None) -> dict:
    event = {
        "model": model,
        "tag": tag,
        "build_hash": build_hash,
        "previous": previous,
        "registry": registry,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "nonce": uuid.uuid4().hex,
    }
    if seq is not None:
        event["seq"] = seq  # the history event: the service can tell a stale registry view
    return event


def encode(event: dict) -> bytes:
    return canonical_json(event)


def post(url: str, event: dict, secret: str | bytes, timeout_s: float = 5.0) -> int:
    """POSTs the signed event; returns the HTTP status. Raises OSError (URLError, timeouts) on failure."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    body = encode(event)
    headers = {"Content-Type": "application/json", "User-Agent": "modelgate-promote"}
    headers.update(sign_headers(secret, body))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status


def secret_from_env() -> str | None:
    return os.environ.get(ENV_SECRET) or None


def send_all(urls: list[str], event: dict, warn) -> int:
    """Sends `event` to every URL; a failure is a warning, never an error. Returns how many succeeded."""
    if not urls:
        return 0
    secret = secret_from_env()
    if secret is None:
        warn(f"${ENV_SECRET} is not set: not notifying {len(urls)} endpoint(s); the service will poll")
        return 0
    sent = 0
    for url in urls:
        try:
            post(url, event, secret)
            sent += 1
        except urllib.error.HTTPError as e:
            warn(f"notification to {url} failed: HTTP {e.code}; the service will poll")
        except (OSError, ValueError) as e:
            warn(f"notification to {url} failed: {getattr(e, 'reason', e)}; the service will poll")
    return sent
