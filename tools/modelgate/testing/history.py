"""Long histories for tests and benchmarks: valid, signed, hash-chained events written straight
through the Registry API (one create each), instead of thousands of promotes."""

from __future__ import annotations

from modelgate.registry.moves import _event
from modelgate.registry.registry import HeadView, Registry


def grow(registry: Registry, model: str, tag: str, builds: tuple[str, str], count: int) -> int:
    """Moves `tag` back and forth between two stored builds `count` times (promote events, each
    naming the one before), then writes the head and the pointer as promote leaves them. Returns
    the newest seq. The registry must have a signer."""
    view = registry.head_view(model)
    head = registry._read_head(model)
    version = head[1]
    seq = view.seq if view else 0
    current = view.tags.get(tag) if view else None
    build = registry.read_event(model, current["seq"])["build_hash"] if current else None
    for _ in range(count):
        seq += 1
        target = builds[0] if build != builds[0] else builds[1]
        event = _event(seq, "promote", model, tag, target, build, None, "bench")
        if view is not None and tag in view.tags:
            event["tag_prev"] = view.tags[tag]["seq"]
        assert registry.append_event(event), seq
        view = view.after(event) if view is not None else HeadView.start(model, event)
        build = target
    assert registry._write_head(view, version)
    registry.materialize(registry.read_event(model, seq))
    return seq
