"""Fetch: download a build by tag or build hash, every byte checked against its signed manifest
(each file's blake3, or its sha256 in a build recorded without blake3: modelgate.digests), the
manifest checked as every stored build is (records.check_build: modelgate.manifest.check)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelgate.errors import UsageError, VerificationError
from modelgate.formats import MANIFEST_SIGNATURE, RELEASE_MANIFEST

from . import bundle as bundles
from . import leftovers, records, signing, tags, transfer
from .inspect import _no_tag_message
from .registry import Registry


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
    matches = registry.list_builds(model, build)  # only the builds that start with it
    if len(matches) != 1:
        found = "no build" if not matches else f"{len(matches)} builds"
        raise UsageError(f"{found} of {model} in {registry.uri} start with {build}")
    return matches[0]


def fetch(
    registry: Registry,
    model: str,
    *,
    out: Path,
    public_key: str,
    tag: str | None = None,
    build: str | None = None,
    release: str | None = None,
) -> FetchResult:
    """Downloads a build into `out`, verified; on any failure nothing is left behind.

    By tag, the build and release the tag's newest event names (a build's first manifest, or
    another release of it: the same files, other receipts); by build hash, the build's first
    manifest, or `release` of it. By tag, the tag's pointer and the whole history are verified first (signatures, schema, no
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
        release = state.event.get("release") if state.event else None
    else:
        build_hash = resolve_build(registry, model, build)
    if release is None:
        doc = registry.read_build(model, build_hash)
        if doc is None:
            raise UsageError(f"{model} has no build {build_hash[:12]} in {registry.uri}")
    else:
        doc = registry.read_release(model, build_hash, release)
        if doc is None:
            raise VerificationError(f"{model} {build_hash[:12]}: release {release[:12]}, which the history names, is missing from {registry.uri}")
    signing.verify(doc, public_key)
    records.check_build(doc, f"the manifest stored as {model}/{build_hash[:12]}", model=model, build_hash=build_hash)
    if release is not None and bundles.release_id(doc) != release:
        raise VerificationError(f"the manifest stored as release {release[:12]} of {model}/{build_hash[:12]} is another release")

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
