"""The schema of what the registry stores besides blobs: history events, tag pointers, build manifests.

Every object read from a registry is checked here before any of its values is used, in particular
before a name or hash in it becomes part of a key or a path. A malformed object is one line naming
it (RegistryContentError), never a KeyError or TypeError.
"""

from __future__ import annotations

import json

from modelgate.errors import RegistryContentError, UsageError
from modelgate.formats import BUILD_SCHEMA, EVENT_SCHEMA, TAG_SCHEMA

from . import tags

ACTIONS = ("promote", "rollback")
# Nesting deeper than any object modelgate writes is refused before json.loads recurses into it.
MAX_JSON_DEPTH = 64


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def loads(data: bytes, what: str) -> object:
    """JSON from the registry, or RegistryContentError naming the object."""
    if json_depth(data) > MAX_JSON_DEPTH:
        raise RegistryContentError(f"{what} is malformed: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryContentError(f"{what} is not valid JSON (tampered or corrupt)") from None


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


class _Checker:
    def __init__(self, doc, what: str):
        if not isinstance(doc, dict):
            raise RegistryContentError(f"{what} is malformed: expected a JSON object, got {_type_name(doc)}")
        self.doc, self.what = doc, what

    def fail(self, reason: str):
        raise RegistryContentError(f"{self.what} is malformed: {reason}")

    def field(self, name: str, types: tuple, *, optional: bool = False):
        if name not in self.doc:
            if optional:
                return None
            self.fail(f"missing {name!r}")
        value = self.doc[name]
        if value is None and optional:
            return None
        if type(value) not in types:  # exact types: True is not an integer here
            want = " or ".join(_type_name(t()) for t in types)
            self.fail(f"{name!r} must be {want}, got {_type_name(value)}")
        return value

    def equals(self, name: str, expected):
        value = self.doc.get(name)
        if value != expected:
            self.fail(f"{name!r} is {value!r}, expected {expected!r}")
        return value

    def build_hash(self, name: str, *, optional: bool = False):
        value = self.field(name, (str,), optional=optional)
        if value is not None and not tags.BUILD_HASH.fullmatch(value):
            self.fail(f"{name!r} is not a build hash (64 lowercase hex digits): {value[:80]!r}")
        return value

    def seq(self, name: str = "seq") -> int:
        value = self.field(name, (int,))
        if value < 1:
            self.fail(f"{name!r} must be at least 1, got {value}")
        return value

    def tag(self, name: str = "tag") -> str:
        value = self.field(name, (str,))
        try:
            tags.tag_kind(value)
        except UsageError:
            self.fail(f"{name!r} is not a valid tag: {value[:80]!r}")
        return value

    def model(self, expected: str) -> str:
        value = self.field("model", (str,))
        if value != expected:
            self.fail(f"it belongs to model {value[:80]!r}, not {expected!r}")
        return value


def check_event(doc, what: str, *, model: str, seq: int) -> dict:
    """A history event as promote and rollback write it; its seq must be the one in its name."""
    c = _Checker(doc, what)
    c.equals("schema", EVENT_SCHEMA)
    if c.seq() != seq:
        c.fail(f"'seq' is {doc['seq']} but it is stored as event {seq}")
    c.model(model)
    c.tag()
    if c.field("action", (str,)) not in ACTIONS:
        c.fail(f"'action' must be one of {', '.join(ACTIONS)}, got {doc['action'][:40]!r}")
    c.build_hash("build_hash")
    c.build_hash("previous", optional=True)
    c.build_hash("release", optional=True)  # another release of the build (bundle.release_id)
    c.field("time", (str,))
    c.field("id", (str,))
    for name in ("user", "git_commit", "reason"):
        c.field(name, (str,), optional=True)
    c.field("forced", (bool,), optional=True)
    checks = c.field("checks", (list,), optional=True)
    if checks and not all(isinstance(x, dict) for x in checks):
        c.fail("'checks' must be a list of objects")
    prev = c.field("prev", (str,), optional=True)  # sha256 of event seq-1 (the hash chain); absent in older events
    if prev is not None and not tags.BUILD_HASH.fullmatch(prev):
        c.fail(f"'prev' is not a sha256 (64 lowercase hex digits): {prev[:80]!r}")
    tag_prev = c.field("tag_prev", (int,), optional=True)  # the previous event of the same tag
    if tag_prev is not None and not 1 <= tag_prev < seq:
        c.fail(f"'tag_prev' must be an earlier event, got {tag_prev}")
    c.field("signature", (dict,), optional=True)
    return doc


HEAD_SCHEMA = "modelgate.head/v1"


def check_head(doc, what: str, *, model: str) -> dict:
    """The signed head of a model's history: its newest event (seq, sha256) and, for each tag, the
    newest event that set it (seq, sha256) and how many events set it."""
    c = _Checker(doc, what)
    c.equals("schema", HEAD_SCHEMA)
    c.model(model)
    c.seq()
    c.build_hash("sha256")
    entries = c.field("tags", (dict,))
    for tag, entry in entries.items():
        try:
            tags.tag_kind(tag)
        except UsageError:
            c.fail(f"'tags' names an invalid tag: {tag[:80]!r}")
        if not isinstance(entry, dict):
            c.fail(f"'tags.{tag}' must be an object")
        seq, digest, count = entry.get("seq"), entry.get("sha256"), entry.get("count")
        if type(seq) is not int or not 1 <= seq <= doc["seq"]:
            c.fail(f"'tags.{tag}.seq' must be an event of the history")
        if not isinstance(digest, str) or not tags.BUILD_HASH.fullmatch(digest):
            c.fail(f"'tags.{tag}.sha256' must be a sha256")
        if type(count) is not int or count < 1:
            c.fail(f"'tags.{tag}.count' must be a positive integer")
    c.field("signature", (dict,), optional=True)
    return doc


def check_pointer(doc, what: str, *, model: str, tag: str) -> dict:
    c = _Checker(doc, what)
    c.equals("schema", TAG_SCHEMA)
    c.model(model)
    if c.tag() != tag:
        c.fail(f"it names tag {doc['tag']!r}, not {tag!r}")
    c.build_hash("build_hash")
    c.build_hash("previous", optional=True)
    c.build_hash("release", optional=True)
    c.seq()
    c.field("time", (str,))
    c.field("signature", (dict,), optional=True)
    return doc


def check_build(doc, what: str, *, model: str, build_hash: str) -> dict:
    """A stored build manifest: the release manifest's schema (modelgate.manifest.check) plus the
    registry's own fields, for the build `model`/`build_hash` it is stored as."""
    from modelgate.errors import BundleError
    from modelgate.manifest import check

    c = _Checker(doc, what)
    try:
        check(doc, what)
    except BundleError as e:
        raise RegistryContentError(str(e).replace(f"release bundle {what}", what, 1)) from None
    if doc["model"] != model or doc["build_hash"] != build_hash:
        c.fail(f"it describes {doc['model']}/{doc['build_hash'][:12]}, not {model}/{build_hash[:12]}")
    info = c.field("registry", (dict,), optional=True)
    if info is not None:
        for name in ("git_commit", "created_at", "created_by"):
            if info.get(name) is not None and not isinstance(info[name], str):
                c.fail(f"'registry.{name}' must be a string")
    return doc
