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
        # sha256 -> a copy already made in the storage's temporaries and checked against the release
        # manifest's digest of it (LocalStorage.staged_copy, via transfer.BlobCopies); put_blob
        # links it into place.
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

    def list_builds(self, model: str) -> list[str]:
        prefix = f"models/{tags.check_model_name(model)}/builds/"
        found = (k[len(prefix) : -len(".json")] for k in self.storage.list(prefix) if k.endswith(".json"))
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

        The history must be gap-free and every event valid (signed, when there is a key); the
        tag's state is its newest event. The pointer must name that event, or lag it only when it
        is the model's newest event (a promote died before moving the pointer: pending). strict
        (fetch, serve): any disagreement is a RegistryContentError. Otherwise (promote) it is
        reported in TagState.problem and the next materialize repairs the pointer."""
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

    def _tag_state(self, model: str, tag: str, seqs: list[int] | None) -> TagState:
        kind = tags.tag_kind(tag)
        pointer, _, problem = self._read_pointer(model, tag)  # first: the history read after it is as new
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
        if problem is None and pointer is not None:
            if pointer.seq > newest_seq:
                raise RegistryContentError(
                    f"the tag pointer {self._where(key)} names history event {pointer.seq}, but the newest event is "
                    f"{newest_seq}: history events were deleted"
                )
            else:
                named = events[pointer.seq - 1]
                if (named["tag"], named["build_hash"], named.get("previous"), named["time"], named.get("release")) != (
                    tag, pointer.build_hash, pointer.doc.get("previous"), pointer.doc["time"], pointer.doc.get("release"),
                ):  # fmt: skip
                    problem = f"the tag pointer {self._where(key)} does not match history event {pointer.seq} it names"
                elif event is not None and pointer.seq < event["seq"] and event["seq"] != newest_seq:
                    problem = (
                        f"the tag pointer {self._where(key)} names event {pointer.seq} ({pointer.build_hash[:12]}), but "
                        f"the history's newest event for {tag} is {event['seq']} ({event['build_hash'][:12]}): "
                        "the pointer was rolled back"
                    )
        elif problem is None and pointer is None and event is not None and event["seq"] != newest_seq:
            problem = f"the tag pointer {self._where(key)} is missing, but history event {event['seq']} set {tag}"
        if event is None:
            return TagState(None, 0, None, pointer, problem)
        return TagState(event["build_hash"], event["seq"], event, pointer, problem)

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
            seqs = self.history_seqs(model)
            self.settle(model, seqs)
            state = self.tag_state(model, tag, seqs)
            if state.problem and self.warn is not None:
                self.warn(f"{state.problem}; promote rewrites it from the signed history")
            event = decide(state, (seqs[-1] if seqs else 0) + 1)
            if event is None:
                if state.event is not None:
                    self.materialize(state.event, repair=state.problem is not None)
                return TagMove(state, None, None)
            if self.append_event(event):
                try:
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
        what = f"the history event {self._where(key)}"
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


def _is_tag(name: str) -> bool:
    try:
        tags.tag_kind(name)
        return True
    except UsageError:
        return False


def backoff(attempt: int) -> None:
    """A short random pause after losing a race, so that retrying writers spread out."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * (attempt + 1))))
