"""What promote and rollback share: the result of a tag move, its history event, the signer.

The tag itself moves in one place, Registry.move_tag; promote and rollback only decide what event
it writes.
"""

from __future__ import annotations

import getpass
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from modelgate.errors import ModelgateError, UsageError

from . import budgets, signing
from .registry import EVENT_SCHEMA, NOTIFY_CONFIG, Registry


Warn = Callable[[str], None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass
class PromoteResult:
    model: str
    build_hash: str
    tag: str
    previous: str | None
    bytes_uploaded: int
    files_uploaded: int
    # "promoted", "unchanged" (the tag already named this build), "dry-run", "rolled-back", or
    # "committed": the history event is written but moving the tag pointer failed (`pending` says
    # why); fetch and serve already resolve the tag to this build, the next promote moves the pointer.
    status: str
    seq: int | None = None  # the history event, when one was written
    first: bool = False  # no baseline: the first build this tag names
    forced: bool = False
    reason: str | None = None
    checks: list[dict] = field(default_factory=list)
    notified: int = 0
    pending: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


COMMITTED_MESSAGE = "committed; tag will be settled by the next promote"


def _event(
    seq: int,
    action: str,
    model: str,
    tag: str,
    build_hash: str,
    previous: str | None,
    commit: str | None,
    reason: str | None,
    *,
    forced: bool = False,
    checks: list[budgets.MetricCheck] = (),
    release: str | None = None,
) -> dict:
    """A history event claiming slot `seq`, the one after the newest the writer has seen. `release`
    names another release of the build than its first (Registry.read_release)."""
    event = {
        "schema": EVENT_SCHEMA,
        "seq": seq,
        "id": uuid.uuid4().hex,  # lets a retried create recognize its own first attempt
        "action": action,
        "model": model,
        "tag": tag,
        "build_hash": build_hash,
        "previous": previous,
        "time": _now(),
        "user": _user(),
        "git_commit": commit,
        "forced": forced,
        "reason": reason,
        "checks": [c.to_json() for c in checks],
    }
    if release:
        event["release"] = release
    return event


def _signer(registry: Registry, signing_key: Callable[[], str] | None, warn: Warn) -> signing.RecordSigner:
    """Loads the signing key once (it may create the workspace's development key) and makes the
    registry sign what it writes and verify what it reads with it."""
    if signing_key is None:
        raise UsageError("no signing key configured")
    registry.warn = registry.warn or warn
    if registry.signer is None:
        registry.use_keys(signer=signing.RecordSigner(signing_key()))
    return registry.signer


def _notify_endpoints(registry: Registry, notify_urls: tuple[str, ...], warn: Warn) -> list[str]:
    """--notify URLs plus the registry's config/notify.json. The configuration is only about who
    hears of a move, never whether it happens: one that cannot be read (malformed, too large, not
    a regular file, unreachable) is a warning, and its endpoints are not notified (the service
    polls). So a move that has committed is never reported as a failure because of it."""
    try:
        return list(notify_urls) + registry.notify_endpoints()
    except ModelgateError as e:
        warn(f"not notifying the endpoints of {NOTIFY_CONFIG}: {e}; the service will poll")
        return list(notify_urls)
