"""The registry layout on top of a Storage, and the rules that keep it consistent.

    blobs/sha256/<hex>                          immutable bytes (create-only)
    models/<model>/builds/<build_hash>.json     signed manifest (create-only)
    models/<model>/history/<seq>.json           promotion events, seq zero-padded (create-only)
    models/<model>/tags/<tag>.json              pointer to a build (compare-and-swap)
    config/notify.json                          {"endpoints": [URL, ...]} (optional, written by people)

How tags move without lost updates. The history is the model's write-ahead log: an event is
committed when its history object is created, and seq slots are claimed create-only, each by a
writer that has seen every earlier slot (it lists the history and claims max+1). So events are
totally ordered and each one was decided against the complete state before it. Tag pointers
are a materialized view of that log: after committing, the writer swaps the pointer forward to its
event's seq, and a pointer never moves back to a lower seq.

A writer killed between the two steps leaves one pointer behind the log, still naming a complete
build. Before claiming a slot, every writer first settles the newest event (moves its tag's
pointer forward if needed), so only the newest event can ever be unsettled.

Trust. Events and pointers are signed by the promoter's key (modelgate.registry.signing) and bind
model, tag, build hash, seq, previous build and time, after the model of TUF: signed, versioned
metadata. A reader with a public key (fetch, serve, promote) accepts a tag only when its pointer is
signed, names an event of this tag, and that event is the newest one for the tag in a gap-free,
signed history (or the pointer lags only the model's newest event: a promote died before moving
it). A version tag must have exactly one event. A pointer rewritten to an older build, replayed
from an older promotion or copied from another tag, an edited or deleted event: each is refused.
What a stateless reader cannot see (the newest events deleted together with the pointer rolled
back) the service catches with the highest seq it has accepted (modelgate.serve.deployment).
Signed tag state does not expire: see README "Registry" for why.

Why not python-tuf (tuf 7 is in the lock, through sigstore): its client's guarantees come from the
chain root -> timestamp -> snapshot -> targets, with one snapshot version for the whole repository
and a timestamp that must be re-signed online before it expires. Here every model has its own log,
written concurrently by create-only seq slots and moved by per-object compare-and-swap (the only
precondition fake-gcs-server and GCS enforce on small objects); a repository-wide snapshot would
serialize every promotion of every model behind one object and need an online key. Its metadata
envelope ({"signed", "signatures"}) would also change the shape of every stored event and pointer.
What is taken from TUF is its rules: signed, versioned records; never accept a version lower than
one seen (the service's state); a rollback is a new, higher version; an explicit expiry decision.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from modelgate.errors import ModelgateError, RegistryContentError, StorageError, UsageError, VerificationError
from modelgate.formats import canonical_json

from . import records, tags
from .records import BUILD_SCHEMA, EVENT_SCHEMA, TAG_SCHEMA  # noqa: F401 - re-exported
from .storage import Progress, Storage, human_size

if TYPE_CHECKING:  # the keys are handed in; this layer only calls sign() and verify() on them
    from .signing import RecordSigner, RecordVerifier

SEQ_DIGITS = 10
TAG_STATE_ATTEMPTS = 3
MOVE_TAG_ATTEMPTS = 200
NOTIFY_CONFIG = "config/notify.json"

# Everything but blobs is read whole into memory, so each kind of object has a cap, far above what
# modelgate writes (measured: a signed tag pointer 431 bytes, a history event 565, the manifests of
# this repository's models 40-55 KiB): a planted 64 GiB object is one line, not a MemoryError.
# Another release's manifest (releases/<build>/<release>.json) has a manifest's cap.
# Blobs are streamed, and stopped at the size their signed manifest gives (transfer.TooLarge).
POINTER_MAX_BYTES = 64 << 10
EVENT_MAX_BYTES = 64 << 10
NOTIFY_CONFIG_MAX_BYTES = 64 << 10
MANIFEST_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class Pointer:
    build_hash: str
    seq: int
    doc: dict
    version: object  # for Storage.swap


@dataclass(frozen=True)
class TagMove:
    """What move_tag did: the tag's state it decided against, the event it committed (None: the
    decision was to leave the tag where it is), and why the pointer still lags that event (None:
    it moved; otherwise the event is committed and the next writer settles the pointer)."""

    state: "TagState"
    event: dict | None
    pending: str | None


@dataclass(frozen=True)
class TagState:
    """Where a tag points according to the log (which may be ahead of the pointer object)."""

    build_hash: str | None
    seq: int  # the event that set it; 0 when the tag was never set
    event: dict | None
    pointer: Pointer | None
    problem: str | None = None  # the pointer disagrees with the log (only when not strict)

    @property
    def pending(self) -> bool:
        """True when the pointer object lags the log (a writer died between the two steps)."""
        return self.build_hash is not None and (self.pointer is None or self.pointer.seq < self.seq)


class Registry:
    def __init__(self, storage: Storage, *, signer: RecordSigner | None = None, verifier: RecordVerifier | None = None):
        self.storage = storage
        self.uri = storage.uri
        self.signer = signer
        self.verifier = verifier or (signer.verifier() if signer else None)
        self._events: dict[tuple[str, int], dict] = {}  # checked events: create-only, so cacheable
        self.warn: Callable[[str], None] | None = None  # told when materialize repairs a broken pointer
        # sha256 -> a copy already checked against the release manifest's digest of it
        # (Storage.staged_copy, via transfer.BlobCopies); put_blob stores it (put_staged).
        self.staged: dict[str, object] = {}

    def use_keys(self, *, signer: RecordSigner | None = None, verifier: RecordVerifier | None = None) -> None:
        """Signs what this registry writes with `signer`; verifies what it reads with `verifier`
        (by default the signer's own public key)."""
        if signer is not None:
            self.signer = signer
        if verifier is not None or signer is not None:
            self.verifier = verifier or signer.verifier()
        self._events.clear()

    # ---- keys

    @staticmethod
    def blob_key(sha256: str) -> str:
        return f"blobs/sha256/{sha256}"

    @staticmethod
    def build_key(model: str, build_hash: str) -> str:
        return f"models/{model}/builds/{build_hash}.json"

    @staticmethod
    def tag_key(model: str, tag: str) -> str:
        return f"models/{model}/tags/{tag}.json"

    @staticmethod
    def head_key(model: str) -> str:
        return f"models/{model}/head.json"

    @staticmethod
    def history_key(model: str, seq: int) -> str:
        return f"models/{model}/history/{seq:0{SEQ_DIGITS}d}.json"

    def _where(self, key: str) -> str:
        return f"{key} in {self.uri}"

    # ---- blobs

    def has_blob(self, sha256: str) -> bool:
        return self.storage.exists(self.blob_key(tags.check_build_hash(sha256)))

    def put_blob(self, sha256: str, path: Path, size: int, progress: Progress | None = None) -> bool:
        """Uploads a file as blob `sha256` unless it is already there. True if bytes were uploaded."""
        if self.has_blob(sha256):
            return False
        staged = self.staged.get(sha256)
        if staged is not None:
            return self.storage.put_staged(self.blob_key(sha256), staged, progress)
        return self.storage.put_file(self.blob_key(sha256), path, size, progress)

    def read_blob_into(self, sha256: str, write: Callable[[bytes], None], size: int | None = None) -> bool:
        return self.storage.read_into(self.blob_key(tags.check_build_hash(sha256)), write, size)

    def read_blob_hashed_into(self, sha256: str, target_fd: int, limit: int, algorithm: str = "sha256") -> tuple[int, str] | None:
        """The blob written to an open file: (bytes, hex digest by `algorithm`) of what was
        written, for the caller to compare; None if the blob is missing (Storage.read_hashed_into)."""
        return self.storage.read_hashed_into(self.blob_key(tags.check_build_hash(sha256)), target_fd, limit, algorithm)

    # ---- builds

    def read_build(self, model: str, build_hash: str) -> dict | None:
        """The stored manifest as a JSON object (not yet checked: see records.check_build)."""
        return self._read_manifest(self.build_key(tags.check_model_name(model), tags.check_build_hash(build_hash)))

    def _read_manifest(self, key: str) -> dict | None:
        data = self.storage.read(key, MANIFEST_MAX_BYTES)
        if data is None:
            return None
        doc = records.loads(data, f"the manifest {self._where(key)}")
        if not isinstance(doc, dict):
            raise VerificationError(f"the manifest {key} in {self.uri} is not a JSON object")
        return doc

    @staticmethod
    def release_key(model: str, build_hash: str, release: str) -> str:
        return f"models/{model}/releases/{build_hash}/{release}.json"

    def read_release(self, model: str, build_hash: str, release: str) -> dict | None:
        """Another release of a build (bundle.release_id): the same files but its receipts,
        stored beside the build's first manifest (builds/<hash>.json). Not yet checked."""
        return self._read_manifest(
            self.release_key(tags.check_model_name(model), tags.check_build_hash(build_hash), tags.check_build_hash(release))
        )

    def create_release(self, model: str, build_hash: str, release: str, doc: dict) -> bool:
        data = canonical_json(doc)
        if len(data) > MANIFEST_MAX_BYTES:
            raise UsageError(
                f"the manifest of {model} {build_hash[:12]} (release {release[:12]}) is {human_size(len(data))}, over the "
                f"{human_size(MANIFEST_MAX_BYTES)} that registry readers accept: nothing was written"
            )
        return self.storage.create(self.release_key(model, build_hash, release), data)

    def read_checked_build(self, model: str, build_hash: str) -> dict | None:
        doc = self.read_build(model, build_hash)
        if doc is None:
            return None
        return records.check_build(doc, f"the manifest {self._where(self.build_key(model, build_hash))}", model=model, build_hash=build_hash)

    def read_verified_build(self, model: str, build_hash: str) -> dict | None:
        """The stored manifest, checked as fetch checks it: its signature verified (model-signing)
        with the public key of this registry's verifier, then its schema and its name. None if
        it does not exist; VerificationError (one line) if it does not verify, or if there is no
        key to verify it with."""
        from . import signing  # model-signing is imported only where a manifest is verified

        what = f"the manifest {self._where(self.build_key(model, build_hash))}"
        if self.verifier is None:
            raise VerificationError(f"{what} cannot be verified: no public key")
        doc = self.read_build(model, build_hash)
        if doc is None:
            return None
        try:
            signing.verify(doc, self.verifier.public_key, self.verifier.setting)
        except VerificationError as e:
            raise VerificationError(f"{what}: {e}") from None
        return records.check_build(doc, what, model=model, build_hash=build_hash)

    def create_build(self, model: str, build_hash: str, doc: dict) -> bool:
        data = canonical_json(doc)
        if len(data) > MANIFEST_MAX_BYTES:
            raise UsageError(
                f"the manifest of {model} {build_hash[:12]} is {human_size(len(data))}, over the {human_size(MANIFEST_MAX_BYTES)} "
                "that registry readers accept: nothing was written"
            )
        return self.storage.create(self.build_key(model, build_hash), data)

    def list_builds(self, model: str, start: str = "") -> list[str]:
        """The model's builds (those whose hash starts with `start`: one listing of just those)."""
        prefix = f"models/{tags.check_model_name(model)}/builds/"
        found = (k[len(prefix) : -len(".json")] for k in self.storage.list(prefix + start) if k.endswith(".json"))
        return [h for h in found if tags.BUILD_HASH.fullmatch(h)]

    def list_models(self) -> list[str]:
        return [m for m in self.storage.list_dirs("models/") if tags.MODEL_NAME.fullmatch(m)]

    # ---- tags

    def list_tags(self, model: str) -> list[str]:
        prefix = f"models/{tags.check_model_name(model)}/tags/"
        found = [k[len(prefix) : -len(".json")] for k in self.storage.list(prefix) if k.endswith(".json")]
        return [t for t in found if _is_tag(t)]

    def _read_pointer(self, model: str, tag: str) -> tuple[Pointer | None, object, str | None]:
        """(pointer, storage version, problem): a pointer that fails its checks comes back as None
        with the reason, so that promote can repair it and readers can refuse it."""
        key = self.tag_key(model, tag)
        found = self.storage.read_versioned(key, POINTER_MAX_BYTES)
        if found is None:
            return None, None, None
        data, version = found
        what = f"the tag pointer {self._where(key)}"
        try:
            doc = records.check_pointer(records.loads(data, what), what, model=model, tag=tag)
            if self.verifier is not None:
                self.verifier.verify(doc, what)
        except VerificationError as e:
            return None, version, str(e)
        return Pointer(doc["build_hash"], doc["seq"], doc, version), version, None

    def read_pointer(self, model: str, tag: str) -> Pointer | None:
        """The tag's pointer object, checked (and its signature verified when there is a key)."""
        tags.check_model_name(model)
        tags.tag_kind(tag)
        pointer, _, problem = self._read_pointer(model, tag)
        if problem:
            raise RegistryContentError(problem)
        return pointer

    def tag_state(self, model: str, tag: str, seqs: list[int] | None = None, *, strict: bool = False) -> TagState:
        """The tag's build according to the signed history, checked against its pointer.

        With a signed head (every registry promoted to since the hash chain): a bounded number of
        reads, whatever the history's length (Registry.head_view). Without one (a registry written
        before it): the whole history, gap-free and every event valid. The tag's state is its
        newest event. The pointer must name that event, or lag it only when it is the model's
        newest event (a promote died before moving the pointer: pending). strict (fetch, serve):
        any disagreement is a RegistryContentError. Otherwise (promote) it is reported in
        TagState.problem and the next materialize repairs the pointer."""
        tags.check_model_name(model)
        tags.tag_kind(tag)
        for attempt in range(TAG_STATE_ATTEMPTS):
            state = self._tag_state(model, tag, seqs)
            if state.problem is None:
                return state
            # A pointer read just before concurrent promotions can look behind the history:
            # look again before calling it a problem.
            seqs = None
            backoff(attempt)
        if strict:
            raise RegistryContentError(state.problem)
        return state

    def _tag_state(self, model: str, tag: str, seqs: list[int] | None, view: "HeadView | None" = None) -> TagState:
        pointer, _, problem = self._read_pointer(model, tag)  # first: the history read after it is as new
        if view is None:
            view = self.head_view(model)
        elif pointer is not None and problem is None and pointer.seq > view.seq:
            # The caller's view was read before this pointer, and writers moved on meanwhile (events
            # are create-only and a pointer only names one that exists): follow the chain to it.
            view = self._forward(model, view)
        if view is None:  # a registry written before the signed head: the whole history
            return self._legacy_tag_state(model, tag, seqs, pointer, problem)
        kind = tags.tag_kind(tag)
        key = self.tag_key(model, tag)
        entry = view.tags.get(tag)
        if not kind.movable and entry is not None and entry["count"] > 1:
            raise RegistryContentError(
                f"version tag {tag} of {model} has {entry['count']} history events in {self.uri} "
                f"(the newest is seq {entry['seq']}); a version tag is set once: the history was tampered with"
            )
        event = self._event_named(model, entry["seq"], entry["sha256"], "the signed head") if entry else None
        if event is not None:
            self._check_link(model, event)
        newest_seq = view.seq
        problem = self._pointer_problem(
            key, tag, pointer, problem, event, newest_seq,
            lambda seq: event if event is not None and seq == event["seq"] else self.read_event(model, seq),
        )  # fmt: skip
        if event is None:
            return TagState(None, 0, None, pointer, problem)
        return TagState(event["build_hash"], event["seq"], event, pointer, problem)

    def _legacy_tag_state(self, model: str, tag: str, seqs: list[int] | None, pointer, problem) -> TagState:
        kind = tags.tag_kind(tag)
        if seqs is not None and pointer is not None and (not seqs or pointer.seq > seqs[-1]):
            seqs = None  # the caller's listing predates a concurrent promotion: list again
        events = self.events(model, seqs)
        mine = [e for e in events if e["tag"] == tag]
        newest_seq = events[-1]["seq"] if events else 0
        key = self.tag_key(model, tag)
        if not kind.movable and len(mine) > 1:
            raise RegistryContentError(
                f"version tag {tag} of {model} has {len(mine)} history events in {self.uri} "
                f"(seq {', '.join(str(e['seq']) for e in mine)}); a version tag is set once: the history was tampered with"
            )
        event = mine[-1] if mine else None
        problem = self._pointer_problem(key, tag, pointer, problem, event, newest_seq, lambda seq: events[seq - 1])
        if event is None:
            return TagState(None, 0, None, pointer, problem)
        return TagState(event["build_hash"], event["seq"], event, pointer, problem)

    def _pointer_problem(
        self, key: str, tag: str, pointer, problem: str | None, event: dict | None, newest_seq: int, named: Callable[[int], dict]
    ) -> str | None:
        """The one rule for a tag pointer against the signed history (both ways of reading it): it
        must name an event that exists (else RegistryContentError: events were deleted), match that
        event, and name the tag's newest event, or lag it only when that is the model's newest (a
        promote killed before moving the pointer). `named(seq)` is history event `seq`. Returns the
        problem for TagState (promote repairs it, strict readers refuse it), or None."""
        if problem is not None:
            return problem
        if pointer is None:
            if event is not None and event["seq"] != newest_seq:
                return f"the tag pointer {self._where(key)} is missing, but history event {event['seq']} set {tag}"
            return None
        if pointer.seq > newest_seq:
            raise RegistryContentError(
                f"the tag pointer {self._where(key)} names history event {pointer.seq}, but the newest event is "
                f"{newest_seq}: history events were deleted"
            )
        it = named(pointer.seq)
        if (it["tag"], it["build_hash"], it.get("previous"), it["time"], it.get("release")) != (
            tag, pointer.build_hash, pointer.doc.get("previous"), pointer.doc["time"], pointer.doc.get("release"),
        ):  # fmt: skip
            return f"the tag pointer {self._where(key)} does not match history event {pointer.seq} it names"
        if event is not None and pointer.seq < event["seq"] and event["seq"] != newest_seq:
            return (
                f"the tag pointer {self._where(key)} names event {pointer.seq} ({pointer.build_hash[:12]}), but "
                f"the history's newest event for {tag} is {event['seq']} ({event['build_hash'][:12]}): "
                "the pointer was rolled back"
            )
        return None

    # ---- the signed head and the hash chain

    def _read_head(self, model: str) -> tuple[dict | None, object, str | None]:
        """(head, storage version, problem), like _read_pointer."""
        key = self.head_key(model)
        found = self.storage.read_versioned(key, POINTER_MAX_BYTES)
        if found is None:
            return None, None, None
        data, version = found
        what = f"the history head {self._where(key)}"
        try:
            doc = records.check_head(records.loads(data, what), what, model=model)
            if self.verifier is not None:
                self.verifier.verify(doc, what)
        except VerificationError as e:
            return None, version, str(e)
        return doc, version, None

    def head_view(self, model: str) -> "HeadView | None":
        """The model's history as its signed head says, brought forward over the events committed
        after it (a writer died between creating its event and moving the head): a few reads, not
        the history. None when there is no head (a registry written before it: read it whole).
        A head that fails its checks is a RegistryContentError (promote rewrites it from the full
        history: move_tag)."""
        head, version, problem = self._read_head(model)
        if problem:
            raise RegistryContentError(problem)
        if head is None:
            return None
        return self._forward(model, HeadView.of(head, version))

    def _forward(self, model: str, view: "HeadView") -> "HeadView":
        """Follows the chain past the head: each event after it must be signed and name the hash
        of the one before it. Normally one read (the slot after the head is empty)."""
        while True:
            key = self.history_key(model, view.seq + 1)
            data = self.storage.read(key, EVENT_MAX_BYTES)
            if data is None:
                return view
            event = self._check_event_data(model, view.seq + 1, data)
            if event.get("prev") != view.sha256:
                raise RegistryContentError(
                    f"the history event {self._where(key)} does not name the hash of event {view.seq} "
                    "(the hash chain is broken: an event was rewritten or forged)"
                )
            view = view.after(event)

    def _event_named(self, model: str, seq: int, sha256: str, by: str) -> dict:
        """Event `seq`, which must have the hash that `by` (a signed record) gives it."""
        key = self.history_key(model, seq)
        try:
            event = self.read_event(model, seq)
        except RegistryContentError as e:
            if "is missing" in str(e):
                raise RegistryContentError(f"{e}; {by} of {model} names it: history events were deleted") from None
            raise
        if event_hash(event) != sha256:
            raise RegistryContentError(f"the history event {self._where(key)} is not the one {by} names (edited or replaced)")
        return event

    def _check_link(self, model: str, event: dict) -> None:
        """The event before `event` exists and is the one it names (one read: a deleted or edited
        event next to the tag's is caught by every reader; the whole chain by `registry verify`)."""
        seq = event["seq"]
        if seq <= 1:
            return
        before = self.read_event(model, seq - 1)  # missing: "is missing (deleted?)"
        if event.get("prev") is not None and event_hash(before) != event["prev"]:
            raise RegistryContentError(
                f"the history event {self._where(self.history_key(model, seq - 1))} is not the one event {seq} "
                "names (the hash chain is broken: edited or replaced)"
            )

    def _write_head(self, view: "HeadView", expected: object) -> bool:
        if self.signer is None:
            raise UsageError("no signing key: moving a tag needs the promoter's key (--signing-key)")
        doc = self.signer.sign(view.doc(view.model))
        return self.storage.swap(self.head_key(view.model), canonical_json(doc), expected)

    def _view_from_history(self, model: str) -> "HeadView | None":
        """The head as the whole, verified history gives it (a registry without a head, or whose
        head fails its checks)."""
        view = None
        for event in self.events(model):
            view = HeadView.start(model, event) if view is None else view.after(event, chained=False)
        return view

    def _writer_view(self, model: str) -> tuple["HeadView | None", object]:
        """(view, head's storage version) for a writer: the head brought forward; without a head
        or with one that fails its checks, built from the whole verified history (the upgrade of
        a registry written before the head, or the repair of a tampered head)."""
        head, version, problem = self._read_head(model)
        if head is not None:
            return self._forward(model, HeadView.of(head, version)), version
        if problem and self.warn is not None:
            self.warn(f"{problem}; promote rewrites it from the signed history")
        return self._view_from_history(model), version

    def verify_history(self, model: str) -> dict:
        """The audit (`registry verify`): every event read, signed and gap-free; each event that
        carries a prev hash names the one before it; the head matches the history; every tag's
        state resolves. Returns a summary; raises RegistryContentError on the first problem."""
        tags.check_model_name(model)
        events = self.events(model)
        chained_from = None
        view = None
        for event in events:
            if event.get("prev") is not None:
                chained_from = chained_from or event["seq"]
                if event_hash(view_last := self.read_event(model, event["seq"] - 1)) != event["prev"]:
                    raise RegistryContentError(
                        f"the history event {self._where(self.history_key(model, view_last['seq']))} is not the one event "
                        f"{event['seq']} names (the hash chain is broken)"
                    )
            elif chained_from is not None:
                raise RegistryContentError(
                    f"the history event {self._where(self.history_key(model, event['seq']))} carries no prev hash after the chain began"
                )
            view = HeadView.start(model, event) if view is None else view.after(event, chained=False)
        head = self.head_view(model)
        if head is not None and view is not None:
            if (head.seq, head.sha256) != (view.seq, view.sha256) or head.tags != view.tags:
                raise RegistryContentError(f"the history head {self._where(self.head_key(model))} does not match the history")
        tag_names = sorted(set(self.list_tags(model)) | (set(view.tags) if view else set()))
        for tag in tag_names:
            self.tag_state(model, tag, strict=True)
        return {
            "model": model, "events": len(events), "chained_from": chained_from, "head": head is not None,
            "tags": {t: (view.tags[t]["seq"] if view and t in view.tags else None) for t in tag_names},
        }  # fmt: skip

    def history_page(self, model: str, limit: int | None = None) -> list[dict]:
        """The newest `limit` events, newest first (each read and verified; a head: no listing)."""
        tags.check_model_name(model)
        view = self.head_view(model)
        newest = view.seq if view is not None else (self.history_seqs(model) or [0])[-1]
        first = 1 if limit is None else max(1, newest - limit + 1)
        return [self.read_event(model, seq) for seq in range(newest, first - 1, -1)]

    def settle(self, model: str, seqs: list[int]) -> None:
        """Materializes the newest event, completing the work of a writer that died after committing it.

        Every writer calls this before claiming the next slot, so all older events are settled.
        """
        if seqs:
            self.materialize(self.read_event(model, seqs[-1]), repair=True)

    def pointer_doc(self, event: dict) -> dict:
        return {
            "schema": TAG_SCHEMA,
            "model": event["model"],
            "tag": event["tag"],
            "build_hash": event["build_hash"],
            "previous": event.get("previous"),
            "seq": event["seq"],
            "time": event["time"],
            **({"release": event["release"]} if event.get("release") else {}),
        }

    def materialize(self, event: dict, *, repair: bool = False) -> None:
        """Moves the event's tag pointer forward to it; never back. Safe to repeat.

        repair: also replace a pointer that fails its checks (unsigned, forged, malformed); the
        caller has established from the signed history that `event` is the tag's state."""
        model, tag, seq = event["model"], event["tag"], event["seq"]
        if self.signer is None:
            raise UsageError("no signing key: moving a tag needs the promoter's key (--signing-key)")
        key = self.tag_key(model, tag)
        data = canonical_json(self.signer.sign(self.pointer_doc(event)))
        for attempt in range(100):
            current, version, problem = self._read_pointer(model, tag)
            if problem is None and current is not None and current.seq >= seq:
                return  # never back: a valid pointer only moves forward, whoever writes
            if problem is not None and not repair:
                raise RegistryContentError(problem)
            if self.storage.swap(key, data, version):
                if problem is not None and self.warn is not None:
                    self.warn(f"{problem}; promote rewrites it from the signed history")
                return
            backoff(attempt)
        raise StorageError(f"could not move {key} in {self.uri}: too many concurrent writers")

    def move_tag(
        self,
        model: str,
        tag: str,
        decide: Callable[["TagState", int], dict | None],
        *,
        what: str = "moving",
    ) -> TagMove:
        """The one way a tag moves: settle the newest event, read the tag's state from the signed
        history, decide, commit the event, then move the pointer (the protocol in this module's
        docstring); on losing the slot to another writer, back off and decide again.

        decide(state, seq) returns the history event to commit at `seq` (it may raise to refuse
        the move), or None to leave the tag where it is. A pointer that disagrees with the history
        is reported (self.warn) and rewritten from it."""
        for attempt in range(MOVE_TAG_ATTEMPTS):
            view, version = self._writer_view(model)
            if view is not None and (view.stale or version is None):  # settle the head first (or write the first one)
                if not self._write_head(view, version):
                    backoff(attempt)
                    continue
                view, version = self._writer_view(model)
            if view is not None:
                self.materialize(self.read_event(model, view.seq), repair=True)
            state = self._tag_state(model, tag, None, view) if view is not None else self.tag_state(model, tag)
            if state.problem and self.warn is not None:
                self.warn(f"{state.problem}; promote rewrites it from the signed history")
            event = decide(state, (view.seq if view else 0) + 1)
            if event is None:
                if state.event is not None:
                    self.materialize(state.event, repair=state.problem is not None)
                return TagMove(state, None, None)
            if view is not None:
                event["prev"] = view.sha256
                if tag in view.tags:
                    event["tag_prev"] = view.tags[tag]["seq"]
            if self.append_event(event):
                try:
                    new = view.after(event) if view is not None else HeadView.start(model, event)
                    if not self._write_head(new, version):
                        # Another writer settled it already (it found our event past the head), or
                        # will: the next writer settles a head behind the history.
                        pass
                    self.materialize(event, repair=state.problem is not None)
                except ModelgateError as e:  # committed: the move stands, the next writer settles the pointer
                    return TagMove(state, event, str(e))
                return TagMove(state, event, None)
            backoff(attempt)
        raise StorageError(f"{model}: gave up {what} {tag} after {MOVE_TAG_ATTEMPTS} concurrent attempts")

    # ---- history

    def history_seqs(self, model: str) -> list[int]:
        prefix = f"models/{tags.check_model_name(model)}/history/"
        seqs = []
        for key in self.storage.list(prefix):
            stem = key[len(prefix) :].removesuffix(".json")
            if len(stem) == SEQ_DIGITS and stem.isascii() and stem.isdigit() and key.endswith(".json"):
                seqs.append(int(stem))
        return sorted(seqs)

    def read_event(self, model: str, seq: int) -> dict:
        """A history event, checked against the schema and its name (and its signature with a key)."""
        cached = self._events.get((model, seq))
        if cached is not None:
            return cached
        key = self.history_key(tags.check_model_name(model), seq)
        data = self.storage.read(key, EVENT_MAX_BYTES)
        if data is None:
            raise RegistryContentError(f"history event {self._where(key)} is missing (deleted?)")
        return self._check_event_data(model, seq, data)

    def _check_event_data(self, model: str, seq: int, data: bytes) -> dict:
        what = f"the history event {self._where(self.history_key(model, seq))}"
        event = records.check_event(records.loads(data, what), what, model=model, seq=seq)
        if self.verifier is not None:
            self.verifier.verify(event, what)
        self._events[(model, seq)] = event
        return event

    def events(self, model: str, seqs: list[int] | None = None) -> list[dict]:
        """The whole history, oldest first; a gap (a deleted event) is a RegistryContentError."""
        if seqs is None:
            seqs = self.history_seqs(model)
        if seqs and seqs != list(range(1, len(seqs) + 1)):
            missing = next(n for n in range(1, seqs[-1] + 1) if n not in set(seqs))
            raise RegistryContentError(
                f"history event {self._where(self.history_key(model, missing))} is missing (deleted?): "
                f"the history of {model} has {len(seqs)} events up to {seqs[-1]}"
            )
        return [self.read_event(model, seq) for seq in seqs]

    def append_event(self, event: dict) -> bool:
        """Commits an event at event["seq"] unless another writer claimed that slot first."""
        if self.signer is None:
            raise UsageError("no signing key: writing a history event needs the promoter's key (--signing-key)")
        if "prev" not in event and event["seq"] > 1:  # chained, whoever calls: the hash of the event before
            event["prev"] = event_hash(self.read_event(event["model"], event["seq"] - 1))
        signed = self.signer.sign(event)
        event["signature"] = signed["signature"]
        data = canonical_json(signed)
        if len(data) > EVENT_MAX_BYTES:
            raise UsageError(
                f"the history event would be {human_size(len(data))}, over the {human_size(EVENT_MAX_BYTES)} that registry "
                "readers accept (a shorter --reason?): nothing was written"
            )
        if self.storage.create(self.history_key(event["model"], event["seq"]), data):
            self._events[(event["model"], event["seq"])] = signed
            return True
        # A retried request may find its own first attempt already there.
        existing = self.read_event(event["model"], event["seq"])
        return existing.get("id") == event["id"]

    # ---- configuration

    def notify_endpoints(self) -> list[str]:
        data = self.storage.read(NOTIFY_CONFIG, NOTIFY_CONFIG_MAX_BYTES)
        if data is None:
            return []
        doc = records.loads(data, f"{NOTIFY_CONFIG} in {self.uri}")
        endpoints = doc.get("endpoints", []) if isinstance(doc, dict) else None
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise StorageError(f"{NOTIFY_CONFIG} in {self.uri} is not a JSON object with 'endpoints', a list of URLs")
        return endpoints


def event_hash(event: dict) -> str:
    """The sha256 of an event as stored (canonical JSON, signature included): what the next event's
    "prev" and the head name."""
    import hashlib

    return hashlib.sha256(canonical_json(event)).hexdigest()


@dataclass(frozen=True)
class HeadView:
    """A model's history in brief: its newest event, and each tag's newest event and event count."""

    model: str
    seq: int
    sha256: str
    tags: dict  # tag -> {"seq", "sha256", "count"}
    stale: bool = False  # events were found past the stored head: it needs settling

    @classmethod
    def of(cls, head: dict, version: object) -> "HeadView":
        return cls(head["model"], head["seq"], head["sha256"], {t: dict(e) for t, e in head["tags"].items()})

    @classmethod
    def start(cls, model: str, event: dict) -> "HeadView":
        return cls(model, 0, "", {}).after(event, chained=False)

    def after(self, event: dict, *, chained: bool = True) -> "HeadView":
        digest = event_hash(event)
        entries = {t: dict(e) for t, e in self.tags.items()}
        count = entries.get(event["tag"], {}).get("count", 0)
        entries[event["tag"]] = {"seq": event["seq"], "sha256": digest, "count": count + 1}
        return HeadView(self.model, event["seq"], digest, entries, stale=chained or self.stale)

    def doc(self, model: str) -> dict:
        return {"schema": records.HEAD_SCHEMA, "model": model, "seq": self.seq, "sha256": self.sha256, "tags": self.tags}


def _is_tag(name: str) -> bool:
    try:
        tags.tag_kind(name)
        return True
    except UsageError:
        return False


def backoff(attempt: int) -> None:
    """A short random pause after losing a race, so that retrying writers spread out."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * (attempt + 1))))
