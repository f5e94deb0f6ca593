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
pointer forward if needed), so only the newest event can ever be unsettled: finding a tag's true
state takes one pointer read and one event read, however long the history is.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Callable

from .bundle import ReleaseFile
from .errors import StorageError, VerificationError
from .signing import canonical_json
from .storage import Progress, Storage

EVENT_SCHEMA = "modelgate/event@1"
TAG_SCHEMA = "modelgate/tag@1"
BUILD_SCHEMA = "modelgate/build@1"
SEQ_DIGITS = 10
NOTIFY_CONFIG = "config/notify.json"


@dataclass(frozen=True)
class Pointer:
    build_hash: str
    seq: int
    doc: dict
    version: object  # for Storage.swap


@dataclass(frozen=True)
class TagState:
    """Where a tag points according to the log (which may be ahead of the pointer object)."""

    build_hash: str | None
    seq: int  # the event that set it; 0 when the tag was never set
    event: dict | None
    pointer: Pointer | None

    @property
    def pending(self) -> bool:
        """True when the pointer object lags the log (a writer died between the two steps)."""
        return self.build_hash is not None and (self.pointer is None or self.pointer.seq < self.seq)


class Registry:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.uri = storage.uri

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

    # ---- blobs

    def has_blob(self, sha256: str) -> bool:
        return self.storage.exists(self.blob_key(sha256))

    def put_blob(self, f: ReleaseFile, progress: Progress | None = None) -> bool:
        """Uploads a release file unless its blob is already there. True if bytes were uploaded."""
        if self.has_blob(f.sha256):
            return False
        return self.storage.put_file(self.blob_key(f.sha256), f.path, f.size, progress)

    def read_blob_into(self, sha256: str, write: Callable[[bytes], None]) -> bool:
        return self.storage.read_into(self.blob_key(sha256), write)

    # ---- builds

    def read_build(self, model: str, build_hash: str) -> dict | None:
        key = self.build_key(model, build_hash)
        data = self.storage.read(key)
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            raise VerificationError(f"the manifest {key} in {self.uri} is not valid JSON (tampered or corrupt)") from None
        if not isinstance(doc, dict):
            raise VerificationError(f"the manifest {key} in {self.uri} is not a JSON object")
        return doc

    def create_build(self, model: str, build_hash: str, doc: dict) -> bool:
        return self.storage.create(self.build_key(model, build_hash), canonical_json(doc))

    def list_builds(self, model: str) -> list[str]:
        prefix = f"models/{model}/builds/"
        return [k[len(prefix) : -len(".json")] for k in self.storage.list(prefix) if k.endswith(".json")]

    def list_models(self) -> list[str]:
        return self.storage.list_dirs("models/")

    # ---- tags

    def list_tags(self, model: str) -> list[str]:
        prefix = f"models/{model}/tags/"
        return [k[len(prefix) : -len(".json")] for k in self.storage.list(prefix) if k.endswith(".json")]

    def read_pointer(self, model: str, tag: str) -> Pointer | None:
        key = self.tag_key(model, tag)
        found = self.storage.read_versioned(key)
        if found is None:
            return None
        data, version = found
        try:
            doc = json.loads(data)
            return Pointer(doc["build_hash"], int(doc["seq"]), doc, version)
        except (ValueError, KeyError, TypeError):
            raise StorageError(f"the tag pointer {key} in {self.uri} is corrupt") from None

    def tag_state(self, model: str, tag: str, seqs: list[int] | None = None) -> TagState:
        """The tag's build according to the log: its pointer, or the newest event if that is for
        this tag and not yet materialized (every older event is: see `settle`)."""
        pointer = self.read_pointer(model, tag)
        if seqs is None:
            seqs = self.history_seqs(model)
        if seqs and (pointer is None or pointer.seq < seqs[-1]):
            newest = self.read_event(model, seqs[-1])
            if newest.get("tag") == tag:
                return TagState(newest["build_hash"], newest["seq"], newest, pointer)
        if pointer:
            return TagState(pointer.build_hash, pointer.seq, None, pointer)
        return TagState(None, 0, None, None)

    def settle(self, model: str, seqs: list[int]) -> None:
        """Materializes the newest event, completing the work of a writer that died after committing it.

        Every writer calls this before claiming the next slot, so all older events are settled.
        """
        if seqs:
            newest = self.read_event(model, seqs[-1])
            self.materialize(model, newest["tag"], newest["seq"], newest["build_hash"], newest["time"])

    def materialize(self, model: str, tag: str, seq: int, build_hash: str, when: str) -> None:
        """Moves the tag pointer forward to event `seq`; never back. Safe to repeat."""
        key = self.tag_key(model, tag)
        doc = {"schema": TAG_SCHEMA, "model": model, "tag": tag, "build_hash": build_hash, "seq": seq, "time": when}
        for attempt in range(100):
            current = self.read_pointer(model, tag)
            if current is not None and current.seq >= seq:
                return
            if self.storage.swap(key, canonical_json(doc), current.version if current else None):
                return
            backoff(attempt)
        raise StorageError(f"could not move {key} in {self.uri}: too many concurrent writers")

    # ---- history

    def history_seqs(self, model: str) -> list[int]:
        prefix = f"models/{model}/history/"
        seqs = []
        for key in self.storage.list(prefix):
            stem = key[len(prefix) :].removesuffix(".json")
            if stem.isdigit():
                seqs.append(int(stem))
        return sorted(seqs)

    def read_event(self, model: str, seq: int) -> dict:
        key = self.history_key(model, seq)
        data = self.storage.read(key)
        if data is None:
            raise StorageError(f"history event {key} disappeared from {self.uri}")
        try:
            return json.loads(data)
        except ValueError:
            raise StorageError(f"history event {key} in {self.uri} is corrupt") from None

    def events(self, model: str) -> list[dict]:
        return [self.read_event(model, seq) for seq in self.history_seqs(model)]

    def append_event(self, event: dict) -> bool:
        """Commits an event at event["seq"] unless another writer claimed that slot first."""
        if self.storage.create(self.history_key(event["model"], event["seq"]), canonical_json(event)):
            return True
        # A retried request may find its own first attempt already there.
        existing = self.read_event(event["model"], event["seq"])
        return existing.get("id") == event["id"]

    # ---- configuration

    def notify_endpoints(self) -> list[str]:
        data = self.storage.read(NOTIFY_CONFIG)
        if data is None:
            return []
        try:
            endpoints = json.loads(data).get("endpoints", [])
        except (ValueError, AttributeError):
            raise StorageError(f"{NOTIFY_CONFIG} in {self.uri} is not a JSON object with 'endpoints'") from None
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise StorageError(f"{NOTIFY_CONFIG} in {self.uri}: 'endpoints' must be a list of URLs")
        return endpoints


def backoff(attempt: int) -> None:
    """A short random pause after losing a race, so that retrying writers spread out."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * (attempt + 1))))
