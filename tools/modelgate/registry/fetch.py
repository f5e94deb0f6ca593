"""Fetch: download a build by tag or build hash, every byte checked against its signed manifest."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from modelgate.errors import BundleError, UsageError, VerificationError
from modelgate.formats import MANIFEST_SIGNATURE, RELEASE_MANIFEST

from . import bundle as bundles
from . import leftovers, signing, tags
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


class _VerifyingWriter:
    """Writes a download to disk while checking it against the manifest's size and sha256."""

    def __init__(self, f, name: str, size: int):
        self.f, self.name, self.expected = f, name, size
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.expected:
            raise VerificationError(f"{self.name} is larger than its manifest says ({self.expected} bytes)")
        self.hash.update(chunk)
        self.f.write(chunk)


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
            with open(temp / name, "wb") as f:
                writer = _VerifyingWriter(f, name, spec["size"])
                if not registry.read_blob_into(spec["sha256"], writer.write, spec["size"]):
                    raise VerificationError(f"{name}: blob {spec['sha256'][:12]} is missing from {registry.uri}")
                if writer.size != spec["size"] or writer.hash.hexdigest() != spec["sha256"]:
                    raise VerificationError(
                        f"{name} does not match the signed manifest (got {writer.size} bytes, "
                        f"sha256 {writer.hash.hexdigest()[:12]}; expected {spec['size']} bytes, "
                        f"sha256 {spec['sha256'][:12]})"
                    )
                f.flush()
                os.fsync(f.fileno())
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
