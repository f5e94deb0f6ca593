"""Promote: publish each release bundle by its build hash (blobs, then the signed manifest), then
move the tag to it, deciding the metric gate against the build the tag names at commit time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modelgate import notify
from modelgate.errors import BundleError, GateError, ModelgateError, StorageError, UsageError, VerificationError

from . import bundle as bundles
from . import budgets, policy, records, signing, tags, transfer
from .moves import PromoteResult, Warn, _event, _notify_endpoints, _now, _signer, _user
from .registry import BUILD_SCHEMA, Registry, TagMove, TagState


# progress(description, total_bytes) -> an object with update(n) and close(), e.g. a tqdm bar.
ProgressFactory = Callable[[str, int], object]


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


def _build_document(b: bundles.Bundle, commit: str | None) -> dict:
    """The registry's manifest: the release manifest plus what is known only at promotion time."""
    doc = dict(b.manifest)
    doc["registry"] = {"schema": BUILD_SCHEMA, "git_commit": commit, "created_at": _now(), "created_by": _user()}
    return doc


@dataclass
class _Record:
    """What promote stores for a bundle's manifest: the build's first manifest (builds/<hash>.json),
    another release of a build the registry holds (releases/<hash>/<release>.json: the same files
    but other receipts or gate results), or nothing (the registry holds this release already)."""

    key: str | None  # "build", "release" or None
    release: str | None  # the release the tag's event names; None: the build's first manifest
    doc: dict | None = None  # signed, for `key`


def _plan_record(registry: Registry, b: bundles.Bundle, load_verifier: Callable[[], None]) -> _Record:
    """Decides, before anything is written, how this bundle's manifest relates to the registry's.
    A build hash names the bytes of what the build made: a bundle whose weights, ONNX file, golden
    data or bundle files differ from the stored build's is refused; one that differs only in its
    receipts or gate results is another release of the same build, recorded under its own
    identity (bundle.release_id), so that a second runner (whose tests re-ran) or a test added
    later can promote a build the registry already holds."""
    if registry.read_build(b.model, b.build_hash) is None:
        return _Record("build", None)
    # What the registry holds decides what is written next: verified first, as fetch verifies it.
    load_verifier()
    existing = registry.read_verified_build(b.model, b.build_hash)
    if existing is None:
        return _Record("build", None)
    release = bundles.release_id(b.manifest)
    if release == bundles.release_id(existing):
        return _Record(None, None)
    differ = bundles.differing_artifacts(existing.get("files"), b.manifest["files"])
    if differ:
        raise BundleError(
            f"{registry.uri} already holds build {b.build_hash[:12]} of {b.model} with other bytes for "
            f"{', '.join(differ[:4])}; a build hash must always name the same bytes, so this export is not reproducible: "
            f"compare the two bundles' digests (registry show {b.model}) and fix what makes them differ"
        )
    stored = registry.read_release(b.model, b.build_hash, release)
    if stored is not None:
        what = f"release {release[:12]} of {b.model}/{b.build_hash[:12]}"
        signing.verify(stored, registry.verifier.public_key, registry.verifier.setting)
        records.check_build(stored, what, model=b.model, build_hash=b.build_hash)
        if bundles.release_id(stored) != release:
            raise VerificationError(f"the manifest stored as {what} is another release (tampered with)")
        return _Record(None, release)
    return _Record("release", release)


def _store_build(registry: Registry, b: bundles.Bundle, record: _Record) -> str | None:
    """Writes the planned manifest (create-only: a concurrent promoter of the same release wrote the
    same one); returns the release the tag's event names."""
    if record.key == "build" and not registry.create_build(b.model, b.build_hash, record.doc):
        if _plan_record(registry, b, lambda: None).key == "release":  # a concurrent first promote of another release
            raise BundleError(f"{b.model} {b.build_hash[:12]}: another release of this build was stored meanwhile; promote again")
    elif record.key == "release":
        registry.create_release(b.model, b.build_hash, record.release, record.doc)
    return record.release


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


def _commit(
    registry: Registry,
    b: bundles.Bundle,
    tag: str,
    kind: tags.TagKind,
    *,
    force: bool,
    reason: str | None,
    commit: str | None,
    release: str | None = None,
    load_verifier: Callable[[], None] = lambda: None,
) -> tuple[TagMove, policy.Decision]:
    """Moves `tag` to this build (Registry.move_tag), deciding against the tag's state at commit time."""
    decisions = []

    def decide(state: TagState, seq: int) -> dict | None:
        decision = policy.decide(registry, b, tag, kind, state, force, load_verifier)
        decisions.append(decision)
        if decision.unchanged:
            return None
        return _event(
            seq, "promote", b.model, tag, b.build_hash, state.build_hash, commit, reason,
            forced=decision.forced, checks=decision.checks, release=release,
        )  # fmt: skip

    move = registry.move_tag(b.model, tag, decide, what="moving")
    return move, decisions[-1]


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
    require: frozenset[str] = frozenset({"cpu"}),
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
    for b in selected:  # policy check 1, before anything is written: the release's tests passed
        for note in policy.check_release(b, set(require)):
            warn(note)
    copies = transfer.BlobCopies(registry, selected, dry_run=dry_run)  # a local registry's are checked as copied
    for b in selected:
        bundles.verify_files(b, skip=copies.checked_later(b))
    if not dry_run:
        # The key is loaded before anything is written, so that a missing or unusable key writes
        # nothing; from here the registry verifies every event and pointer it reads with it.
        _signer(registry, signing_key, warn)

    def load_verifier() -> None:
        if registry.verifier is None:  # a dry run: the baseline is verified with the promoter's key all the same
            _signer(registry, signing_key, warn)

    planned, plans = {}, {}
    for b in selected:
        plans[b.model] = _plan_record(registry, b, load_verifier)  # refuses other bytes under a stored build hash
        state = registry.tag_state(b.model, tag)
        planned[b.model] = (state, policy.decide(registry, b, tag, kind, state, force, load_verifier))

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
    signed: dict[str, _Record] = {}
    key = None
    for b in selected:
        signed[b.model] = record = plans[b.model]
        if record.key is not None:
            key = key or signing_key()
            doc = _build_document(b, commit)
            doc["signature"] = signing.sign(doc, key)
            record.doc = doc
    _check_space(registry, selected)
    try:
        registry.storage.sweep_temporaries()
    except StorageError as e:  # .tmp is not a real directory: nothing is swept; a write through it is refused
        warn(f"not sweeping temporaries: {e}")

    endpoints = _notify_endpoints(registry, notify_urls, warn)
    results = []
    with copies.staged():  # every copy made and checked before the first blob is linked
        for b in selected:
            try:
                results.append(_promote_one(registry, b, tag, kind, signed[b.model], force, reason, commit, progress, endpoints, warn, load_verifier))
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
    signed: _Record,
    force: bool,
    reason: str | None,
    commit: str | None,
    progress: ProgressFactory | None,
    endpoints: list[str],
    warn: Warn,
    load_verifier: Callable[[], None],
) -> PromoteResult:
    """Blobs, then the manifest, then the tag: a reader can never reach a build that is not complete."""
    uploaded_bytes, uploaded_files = _upload(registry, b, progress)
    release = _store_build(registry, b, signed)
    move, decision = _commit(
        registry, b, tag, kind, force=force, reason=reason, commit=commit, release=release, load_verifier=load_verifier
    )
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
