"""What the commands do, independent of argument parsing: promote, rollback, fetch, ls, show, history.

Every function takes an open Registry and plain values and returns dataclasses (or raises a
ModelgateError); printing is the CLI's job.
"""

from __future__ import annotations

import getpass
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from modelgate import notify, receipts
from modelgate.errors import (
    BundleError,
    GateError,
    ModelgateError,
    RegistryContentError,
    StorageError,
    UsageError,
    VerificationError,
    model_not_in_registry,
)
from modelgate.formats import MANIFEST_SIGNATURE, RELEASE_MANIFEST

from . import bundle as bundles
from . import gates, leftovers, records, signing, tags, transfer
from .registry import BUILD_SCHEMA, EVENT_SCHEMA, Registry, TagMove, TagState
from .storage import LocalStorage

Warn = Callable[[str], None]
# progress(description, total_bytes) -> an object with update(n) and close(), e.g. a tqdm bar.
ProgressFactory = Callable[[str, int], object]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --------------------------------------------------------------------------------------------------
# promote


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


@dataclass
class _Decision:
    unchanged: bool
    checks: list[gates.MetricCheck]
    first: bool
    forced: bool


def select_bundles(directories: list[Path], models: list[str]) -> list[bundles.Bundle]:
    """Reads every --release bundle; keeps those named by --model (all when none is named)."""
    if not directories:
        raise UsageError("no release bundle: pass --release=DIR (bazel run //tools:promote passes one per model)")
    found: dict[str, bundles.Bundle] = {}
    for directory in directories:
        b = bundles.read(directory)
        if b.model in found:
            raise UsageError(f"two release bundles for model {b.model}: {found[b.model].directory} and {directory}")
        found[b.model] = b
    for model in models:
        if model not in found:
            raise UsageError(f"unknown model {model!r}; the release bundles hold: {', '.join(sorted(found))}")
    return [found[m] for m in sorted(found) if not models or m in models]


def _decide(
    registry: Registry, b: bundles.Bundle, tag: str, kind: tags.TagKind, state: TagState, force: bool
) -> _Decision:
    """Raises GateError when this promotion must not happen (unless forced, where that is allowed)."""
    if state.build_hash == b.build_hash:
        return _Decision(True, [], False, False)
    if state.build_hash is not None and not kind.movable:
        raise GateError(
            f"{b.model}: version tag {tag} already names build {state.build_hash[:12]}; "
            "version tags never move (choose a new version)"
        )
    if state.build_hash is None:
        return _Decision(False, [], kind.movable, False)  # a channel's first build has no baseline
    baseline = registry.read_checked_build(b.model, state.build_hash)
    if baseline is None:
        if force:
            return _Decision(False, [], False, True)
        raise GateError(
            f"{b.model}: {tag} points at build {state.build_hash[:12]}, whose manifest is missing from "
            f"{registry.uri}; cannot compare metrics (pass --force --reason=TEXT to promote anyway)"
        )
    checks = gates.compare(b.manifest.get("metrics", {}), baseline.get("metrics", {}), b.manifest.get("metric_gates", {}))
    failed = gates.failures(checks)
    if failed and not force:
        raise GateError(
            f"refusing to promote {b.model} {b.build_hash[:12]} to {tag}: "
            + "; ".join(c.describe() for c in failed)
            + f" against {state.build_hash[:12]} (pass --force --reason=TEXT to override)"
        )
    return _Decision(False, checks, False, bool(failed))


def _build_document(b: bundles.Bundle, commit: str | None) -> dict:
    """The registry's manifest: the release manifest plus what is known only at promotion time."""
    doc = dict(b.manifest)
    doc["registry"] = {"schema": BUILD_SCHEMA, "git_commit": commit, "created_at": _now(), "created_by": _user()}
    return doc


def _store_build(registry: Registry, b: bundles.Bundle, signed: dict | None) -> None:
    """Writes builds/<hash>.json once; a later promotion of the same build reuses the stored one."""
    if signed is not None and registry.create_build(b.model, b.build_hash, signed):
        return
    existing = registry.read_checked_build(b.model, b.build_hash)
    if existing is None or existing.get("files") != b.manifest["files"]:
        raise BundleError(
            f"{registry.uri} already holds build {b.build_hash[:12]} of {b.model} with different files; "
            "a build hash must always name the same bytes"
        )


def _upload(registry: Registry, b: bundles.Bundle, progress: ProgressFactory | None) -> tuple[int, int]:
    uploaded_bytes = uploaded_files = 0
    for f in b.files:
        if registry.has_blob(f.sha256):
            continue
        bar = progress(f"{b.model}/{f.name}", f.size) if progress and f.size else None
        try:
            if registry.put_blob(f.sha256, f.path, f.size, bar.update if bar else None):
                uploaded_bytes += f.size
                uploaded_files += 1
        finally:
            if bar:
                bar.close()
    return uploaded_bytes, uploaded_files


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
    checks: list[gates.MetricCheck] = (),
) -> dict:
    """A history event claiming slot `seq`, the one after the newest the writer has seen."""
    return {
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


def _commit(
    registry: Registry,
    b: bundles.Bundle,
    tag: str,
    kind: tags.TagKind,
    *,
    force: bool,
    reason: str | None,
    commit: str | None,
) -> tuple[TagMove, _Decision]:
    """Moves `tag` to this build (Registry.move_tag), deciding against the tag's state at commit time."""
    decisions = []

    def decide(state: TagState, seq: int) -> dict | None:
        decision = _decide(registry, b, tag, kind, state, force)
        decisions.append(decision)
        if decision.unchanged:
            return None
        return _event(
            seq, "promote", b.model, tag, b.build_hash, state.build_hash, commit, reason,
            forced=decision.forced, checks=decision.checks,
        )  # fmt: skip

    move = registry.move_tag(b.model, tag, decide, what="moving")
    return move, decisions[-1]


def _signer(registry: Registry, signing_key: Callable[[], str] | None, warn: Warn) -> signing.RecordSigner:
    """Loads the signing key once (it may create the workspace's development key) and makes the
    registry sign what it writes and verify what it reads with it."""
    if signing_key is None:
        raise UsageError("no signing key configured")
    registry.warn = registry.warn or warn
    if registry.signer is None:
        registry.use_keys(signer=signing.RecordSigner(signing_key()))
    return registry.signer


def _check_space(registry: Registry, selected: list[bundles.Bundle]) -> None:
    """Refuses, before writing anything, a promote that cannot fit on a local registry's disk."""
    free = registry.storage.free_bytes()
    if free is None:
        return
    digests = {}
    for b in selected:
        for f in b.files:
            if f.sha256 not in digests and not registry.has_blob(f.sha256):
                digests[f.sha256] = f.size
    needed = sum(digests.values()) + 1024 * 1024 * len(selected)  # blobs, plus room for manifests and history
    if needed > free:
        raise StorageError(
            f"{registry.uri}: not enough space: this promote writes about {needed / 2**20:.1f} MiB and "
            f"{free / 2**20:.1f} MiB are free; nothing was written"
        )


def promote(
    registry: Registry,
    selected: list[bundles.Bundle],
    tag: str,
    *,
    signing_key: Callable[[], str] | None,
    force: bool = False,
    reason: str | None = None,
    dry_run: bool = False,
    commit: str | None = None,
    progress: ProgressFactory | None = None,
    notify_urls: tuple[str, ...] = (),
    warn: Warn = lambda message: None,
) -> list[PromoteResult]:
    """Uploads each bundle (blobs, then manifest) and moves `tag` to it, model by model.

    Everything that can be checked before writing is checked first, for all bundles: the tag's
    grammar, every file's digest, and the metric gate against the build the tag names now. The
    gate is checked again at commit time, against whatever the tag names then.
    `signing_key` is called (once) only if a manifest must be signed: it may create the
    workspace's development key.
    """
    kind = tags.tag_kind(tag)
    if force and not reason:
        raise UsageError("--force needs --reason=TEXT (it is recorded in the history)")
    copies = transfer.BlobCopies(registry, selected, dry_run=dry_run)  # a local registry's are checked as copied
    for b in selected:
        bundles.verify_files(b, skip=copies.checked_later(b))
    if not dry_run:
        # The key is loaded before anything is written, so that a missing or unusable key writes
        # nothing; from here the registry verifies every event and pointer it reads with it.
        _signer(registry, signing_key, warn)
    planned = {}
    for b in selected:
        state = registry.tag_state(b.model, tag)
        planned[b.model] = (state, _decide(registry, b, tag, kind, state, force))

    if dry_run:
        results = []
        for b in selected:
            state, decision = planned[b.model]
            missing = [f for f in b.files if not registry.has_blob(f.sha256)]
            results.append(
                PromoteResult(
                    b.model, b.build_hash, tag, state.build_hash, sum(f.size for f in missing), len(missing),
                    "unchanged" if decision.unchanged else "dry-run", first=decision.first,
                    forced=decision.forced, reason=reason, checks=[c.to_json() for c in decision.checks],
                )
            )  # fmt: skip
        return results

    # Sign before uploading anything, so that a missing or unusable key writes nothing.
    signed: dict[str, dict | None] = {}
    key = None
    for b in selected:
        signed[b.model] = None
        if registry.read_build(b.model, b.build_hash) is None:
            key = key or signing_key()
            doc = _build_document(b, commit)
            doc["signature"] = signing.sign(doc, key)
            signed[b.model] = doc
    _check_space(registry, selected)
    if isinstance(registry.storage, LocalStorage):
        registry.storage.sweep_temporaries()

    endpoints = list(notify_urls) + registry.notify_endpoints()
    results = []
    with copies.staged():  # every copy made and checked before the first blob is linked
        for b in selected:
            try:
                results.append(_promote_one(registry, b, tag, kind, signed[b.model], force, reason, commit, progress, endpoints, warn))
            except ModelgateError as e:
                if results:  # say what did happen: the models before this one stay promoted
                    done = ", ".join(f"{r.model} {r.build_hash[:12]}" for r in results)
                    e.args = (f"{e} (already done: {done})",)
                raise
    return results


def _promote_one(
    registry: Registry,
    b: bundles.Bundle,
    tag: str,
    kind: tags.TagKind,
    signed: dict | None,
    force: bool,
    reason: str | None,
    commit: str | None,
    progress: ProgressFactory | None,
    endpoints: list[str],
    warn: Warn,
) -> PromoteResult:
    """Blobs, then the manifest, then the tag: a reader can never reach a build that is not complete."""
    uploaded_bytes, uploaded_files = _upload(registry, b, progress)
    _store_build(registry, b, signed)
    move, decision = _commit(registry, b, tag, kind, force=force, reason=reason, commit=commit)
    state, event, pending = move.state, move.event, move.pending
    status = "unchanged" if event is None else "committed" if pending else "promoted"
    result = PromoteResult(
        b.model, b.build_hash, tag, state.build_hash, uploaded_bytes, uploaded_files,
        status, seq=event["seq"] if event else None,
        first=decision.first, forced=decision.forced, reason=reason,
        checks=[c.to_json() for c in decision.checks], pending=pending,
    )  # fmt: skip
    if event is not None:
        message = notify.make_event(b.model, tag, b.build_hash, state.build_hash, registry.uri, seq=event["seq"])
        result.notified = notify.send_all(endpoints, message, warn)
    return result


# --------------------------------------------------------------------------------------------------
# rollback


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
        target = _rollback_target(registry, model, tag, state.build_hash)
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
    message = notify.make_event(model, tag, event["build_hash"], previous, registry.uri, seq=event["seq"])
    endpoints = list(notify_urls) + registry.notify_endpoints()
    result.notified = notify.send_all(endpoints, message, warn)
    return result


def _rollback_target(registry: Registry, model: str, tag: str, current: str) -> str | None:
    """The build before the most recent promotion of `current` to `tag`.

    Rollbacks are skipped when looking, so two rollbacks in a row go back two promotions
    instead of toggling between two builds.
    """
    for event in reversed(registry.events(model)):
        if event["tag"] == tag and event["action"] == "promote" and event["build_hash"] == current:
            return event["previous"]
    return None


# --------------------------------------------------------------------------------------------------
# fetch


@dataclass
class FetchResult:
    model: str
    build_hash: str
    tag: str | None
    out: str
    files: int
    bytes: int
    # The verified manifest (signature checked, every file matched), as written to out/manifest.json.
    manifest: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "manifest"}


def resolve_build(registry: Registry, model: str, build: str) -> str:
    """A full build hash, or a unique prefix of at least 8 hex digits."""
    if tags.BUILD_HASH.fullmatch(build):
        return build
    if len(build) < 8 or not all(c in "0123456789abcdef" for c in build):
        raise UsageError(f"invalid build {build!r}: a build hash (64 hex digits) or a prefix of at least 8")
    matches = [h for h in registry.list_builds(model) if h.startswith(build)]
    if len(matches) != 1:
        found = "no build" if not matches else f"{len(matches)} builds"
        raise UsageError(f"{found} of {model} in {registry.uri} start with {build}")
    return matches[0]


def _no_tag_message(registry: Registry, model: str, tag: str) -> str:
    known = registry.list_tags(model)
    if not known:
        models = registry.list_models()
        if model not in models:
            return str(model_not_in_registry(model, registry.uri, models))
    return f"{model} has no tag {tag!r} in {registry.uri} (tags: {', '.join(known) or 'none'})"


def fetch(
    registry: Registry,
    model: str,
    *,
    out: Path,
    public_key: str,
    tag: str | None = None,
    build: str | None = None,
) -> FetchResult:
    """Downloads a build into `out`, verified; on any failure nothing is left behind.

    By tag, the tag's pointer and the whole history are verified first (signatures, schema, no
    gaps; the pointer names the tag's newest event: Registry.tag_state). The manifest's signature
    is checked before any byte is downloaded; each file is hashed as it streams into a temporary
    directory, which is renamed into place only when every file matched. The temporary directory
    is made in the deepest directory that exists already, so parents that fetch creates appear
    with that rename, never half. Temporaries of killed fetches there are swept first.

    The fetched files are not fsynced: a fetch is a copy of what the registry holds durably, so
    durability would buy nothing a second fetch does not, and cost more than the copy itself (the
    disk's write-back of every byte). A killed process loses nothing (its writes are in the page
    cache); only a machine crash soon after a fetch can leave files short. Serve never reads such
    a directory back (it fetches into a fresh one at every start and serves from memory); anyone
    else can compare its files with the digests in its manifest.json, or fetch again.
    """
    tags.check_model_name(model)
    if (tag is None) == (build is None):
        raise UsageError("pass exactly one of --tag=TAG and --build=HASH")
    if registry.verifier is None:
        registry.use_keys(verifier=signing.RecordVerifier(public_key))
    if tag is not None:
        tags.tag_kind(tag)
        state = registry.tag_state(model, tag, strict=True)
        if state.build_hash is None:
            raise UsageError(_no_tag_message(registry, model, tag))
        build_hash = state.build_hash
    else:
        build_hash = resolve_build(registry, model, build)
    doc = registry.read_build(model, build_hash)
    if doc is None:
        raise UsageError(f"{model} has no build {build_hash[:12]} in {registry.uri}")
    signing.verify(doc, public_key)
    if doc.get("model") != model or doc.get("build_hash") != build_hash:
        raise VerificationError(f"the manifest stored as {model}/{build_hash[:12]} describes another build")
    try:
        bundles.check_manifest(doc, f"{model}/{build_hash[:12]}")
    except BundleError as e:
        raise VerificationError(str(e)) from None

    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output directory {out} already exists and is not empty")
    top = out  # the highest directory that does not exist yet (or `out` itself): renamed into place
    while not top.parent.exists():
        top = top.parent
    if top.parent.exists() and not top.parent.is_dir():
        raise UsageError(f"cannot create {out}: {top.parent} is not a directory")
    leftovers.sweep(top.parent, _FETCH_TEMP)
    held = leftovers.make_dir(top.parent, f".{top.name}.fetch-")
    stage = held.path
    temp = stage / out.relative_to(top) if top != out else stage
    total = 0
    try:
        temp.mkdir(parents=True, exist_ok=True)
        for name, spec in sorted(doc["files"].items()):
            transfer.fetch_file(registry, name, spec, temp / name)  # hashed while written; raises on a mismatch
            total += spec["size"]
        (temp / RELEASE_MANIFEST).write_bytes(signing.signed_bytes(doc))
        (temp / MANIFEST_SIGNATURE).write_bytes(signing.signature_file_bytes(doc))
        for path in temp.iterdir():
            path.chmod(0o644)
        for path in [temp, *temp.parents]:
            path.chmod(0o755)
            if path == stage:
                break
        if top == out:
            os.replace(stage, out)  # replaces an empty directory atomically
        else:
            os.rename(stage, top)  # fails if another process created it meanwhile
    except BaseException:
        leftovers.remove(stage)
        raise
    finally:
        held.release()
    return FetchResult(model, build_hash, tag, str(out), len(doc["files"]), total, manifest={k: v for k, v in doc.items() if k != "signature"})


_FETCH_TEMP = re.compile(r"\..+\.fetch-\d+-[0-9a-f]{16}")


# --------------------------------------------------------------------------------------------------
# ls / show / history


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
    builds = registry.list_builds(model)
    if not builds:
        raise model_not_in_registry(model, registry.uri, registry.list_models())
    seqs = registry.history_seqs(model)
    events = registry.events(model, seqs)
    shown_tags = {}
    details = {}
    for tag in sorted(set(registry.list_tags(model)) | {e["tag"] for e in events}):
        state = registry.tag_state(model, tag, seqs)
        shown_tags[tag] = {
            "build_hash": state.build_hash,
            "seq": state.seq,
            "since": (state.event or {}).get("time"),
            "pending": state.pending,
            "problem": state.problem,
        }
        if state.build_hash and state.build_hash not in details:
            doc = registry.read_checked_build(model, state.build_hash) or {}
            info = doc.get("registry") or {}
            details[state.build_hash] = {
                "metrics": doc.get("metrics", {}),
                "git_commit": info.get("git_commit"),
                "created_at": info.get("created_at"),
                "files": {name: spec["size"] for name, spec in doc.get("files", {}).items()},
                "tests": receipts.summary(doc),
            }
    return {"model": model, "registry": registry.uri, "tags": shown_tags, "builds": len(builds), "tagged_builds": details}


def history(registry: Registry, model: str) -> list[dict]:
    tags.check_model_name(model)
    events = registry.events(model)
    if not events and model not in registry.list_models():
        raise model_not_in_registry(model, registry.uri, registry.list_models())
    return events
