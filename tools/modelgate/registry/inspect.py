"""What a registry holds: its models and their tags (ls), a model's tagged builds (show), its history."""

from __future__ import annotations

from modelgate import receipts
from modelgate.errors import VerificationError, model_not_in_registry

from . import tags
from .registry import Registry


def _no_tag_message(registry: Registry, model: str, tag: str) -> str:
    known = registry.list_tags(model)
    if not known:
        models = registry.list_models()
        if model not in models:
            return str(model_not_in_registry(model, registry.uri, models))
    return f"{model} has no tag {tag!r} in {registry.uri} (tags: {', '.join(known) or 'none'})"


def list_models(registry: Registry) -> list[dict]:
    models = []
    for model in registry.list_models():
        pointers = {}
        for tag in registry.list_tags(model):
            pointer = registry.read_pointer(model, tag)
            if pointer:
                pointers[tag] = {"build_hash": pointer.build_hash, "since": pointer.doc["time"]}
        models.append({"model": model, "tags": pointers})
    return models


def show(registry: Registry, model: str) -> dict:
    """A model's tags as the history says (a pointer that disagrees with it is shown as a problem)."""
    tags.check_model_name(model)
    view = registry.head_view(model)
    if view is not None:  # the head names every tag that has an event: no history read, no build listed
        named = set(view.tags)
        seqs = None
    else:  # a registry written before the head (or a model never promoted): the whole history, as before
        if not registry.list_builds(model):
            raise model_not_in_registry(model, registry.uri, registry.list_models())
        seqs = registry.history_seqs(model)
        named = {e["tag"] for e in registry.events(model, seqs)}
    shown_tags = {}
    details = {}
    for tag in sorted(set(registry.list_tags(model)) | named):
        state = registry.tag_state(model, tag, seqs)
        shown_tags[tag] = {
            "build_hash": state.build_hash,
            "seq": state.seq,
            "since": (state.event or {}).get("time"),
            "pending": state.pending,
            "problem": state.problem,
        }
        if state.build_hash and state.build_hash not in details:
            details[state.build_hash] = _build_details(registry, model, state.build_hash)
    # Not every build of the model: a team's CI makes one a merge, and listing them would make show
    # grow with the registry's age (`registry ls`, the report and `fetch --build` list them).
    return {"model": model, "registry": registry.uri, "tags": shown_tags, "tagged_builds": details}


def _build_details(registry: Registry, model: str, build_hash: str) -> dict:
    """What show prints about a tagged build. With a public key its manifest is verified first,
    as fetch verifies it; one that does not verify is marked (verified: false, problem) and
    nothing it says is shown. Without a key: verified is None (its schema only was checked)."""
    problem = None
    if registry.verifier is not None:
        try:
            doc = registry.read_verified_build(model, build_hash) or {}
        except VerificationError as e:
            doc, problem = {}, str(e)
        verified = problem is None
    else:
        doc, verified = registry.read_checked_build(model, build_hash) or {}, None
    info = doc.get("registry") or {}
    return {
        "verified": verified,
        "problem": problem,
        "metrics": doc.get("metrics", {}),
        "git_commit": info.get("git_commit"),
        "created_at": info.get("created_at"),
        "files": {name: spec["size"] for name, spec in doc.get("files", {}).items()},
        "tests": receipts.summary(doc) if doc else {},
    }


def history(registry: Registry, model: str, limit: int | None = None, *, oldest_first: bool = False) -> list[dict]:
    """The newest `limit` events (all without one), newest first (or oldest first)."""
    tags.check_model_name(model)
    events = registry.history_page(model, limit)
    if oldest_first:
        events.reverse()
    if not events and model not in registry.list_models():
        raise model_not_in_registry(model, registry.uri, registry.list_models())
    return events


def verify(registry: Registry, model: str) -> dict:
    """The whole chain, for audits (Registry.verify_history)."""
    tags.check_model_name(model)
    if model not in registry.list_models():
        raise model_not_in_registry(model, registry.uri, registry.list_models())
    return registry.verify_history(model)
