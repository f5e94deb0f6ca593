"""Rollback: move a channel tag back to the build it named before, as a new signed history event."""

from __future__ import annotations

from typing import Callable

from modelgate import notify
from modelgate.errors import GateError, StorageError, UsageError

from . import tags
from .inspect import _no_tag_message
from .moves import PromoteResult, Warn, _event, _notify_endpoints, _signer
from .registry import Registry, TagState


def rollback(
    registry: Registry,
    model: str,
    tag: str,
    *,
    signing_key: Callable[[], str] | None = None,
    reason: str | None = None,
    commit: str | None = None,
    notify_urls: tuple[str, ...] = (),
    warn: Warn = lambda message: None,
) -> PromoteResult:
    """Moves a channel tag back to the build it named before its current build was promoted.

    A rollback is a new history event with a higher seq, signed like a promotion: a service that
    refuses lower seqs (rollback protection) accepts it."""
    tags.check_model_name(model)
    kind = tags.tag_kind(tag)
    if not kind.movable:
        raise GateError(f"{tag} is a version tag: version tags never move, so there is nothing to roll back")
    _signer(registry, signing_key, warn)

    def decide(state: TagState, seq: int) -> dict:
        if state.build_hash is None:
            raise UsageError(_no_tag_message(registry, model, tag))
        target = _rollback_target(registry, model, tag, state.build_hash, state.event)
        if target is None:
            raise GateError(f"{model}: nothing to roll {tag} back to: {state.build_hash[:12]} is the first build it named")
        if registry.read_checked_build(model, target) is None:
            raise StorageError(f"{model}: the previous build {target[:12]} has no manifest in {registry.uri}")
        return _event(seq, "rollback", model, tag, target, state.build_hash, commit, reason)

    move = registry.move_tag(model, tag, decide, what="rolling back")
    event, previous = move.event, move.state.build_hash
    result = PromoteResult(
        model, event["build_hash"], tag, previous, 0, 0, "committed" if move.pending else "rolled-back",
        seq=event["seq"], reason=reason, pending=move.pending,
    )  # fmt: skip
    # Committed: from here nothing may fail the command (a notification failure is a warning).
    message = notify.make_event(model, tag, event["build_hash"], previous, registry.uri, seq=event["seq"])
    result.notified = notify.send_all(_notify_endpoints(registry, notify_urls, warn), message, warn)
    return result


def _rollback_target(registry: Registry, model: str, tag: str, current: str, event: dict | None = None) -> str | None:
    """The build before the most recent promotion of `current` to `tag`.

    Rollbacks are skipped when looking, so two rollbacks in a row go back two promotions
    instead of toggling between two builds. From the tag's own event, each event's tag_prev (the
    previous event of the same tag, signed) leads back a few reads; events written before it had
    that field are found by reading the whole history.
    """
    while event is not None:
        if event["tag"] == tag and event["action"] == "promote" and event["build_hash"] == current:
            return event["previous"]
        if event.get("tag_prev") is None:
            break
        event = registry.read_event(model, event["tag_prev"])
    for event in reversed(registry.events(model)):
        if event["tag"] == tag and event["action"] == "promote" and event["build_hash"] == current:
            return event["previous"]
    return None
