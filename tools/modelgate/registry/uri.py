"""Which registry a command talks to: --registry, else $MODELGATE_REGISTRY, else the workspace's own.

Two spellings are accepted, nothing else, so a typo fails loudly instead of writing somewhere new:
    gs://BUCKET[/PREFIX]        Google Cloud Storage
    file:///ABSOLUTE/PATH       a local directory
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from modelgate.errors import UsageError

ENV_REGISTRY = "MODELGATE_REGISTRY"
DEFAULT_REGISTRY_DIR = Path(".modelgate") / "registry"
_EXPECTED = "expected gs://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"
# GCS bucket names: 3-63 characters of lowercase letters, digits, '-', '_' and '.'.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class RegistryURI:
    scheme: str  # "gs" or "file"
    bucket: str = ""  # gs only
    prefix: str = ""  # gs only: object-name prefix without leading or trailing '/'
    path: Path | None = None  # file only: absolute directory
    is_default: bool = False  # the workspace's own registry (dev signing keys are allowed for it)

    def __str__(self) -> str:
        if self.scheme == "gs":
            return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"
        return f"file://{self.path}"


def parse(text: str) -> RegistryURI:
    """Parses a registry URI; raises UsageError with one clear line when it is mistyped."""
    text = text.strip()
    if not text:
        raise UsageError(f"empty registry URI; {_EXPECTED}")
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", text)
    if not match:
        raise UsageError(f"registry {text!r} is not a URI; {_EXPECTED} (relative paths are not accepted)")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "gs":
        if not rest.startswith("//"):
            raise UsageError(f"malformed registry URI {text!r}: {_EXPECTED}")
        bucket, _, prefix = rest[2:].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise UsageError(f"malformed registry URI {text!r}: {bucket!r} is not a valid GCS bucket name")
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise UsageError(f"malformed registry URI {text!r}: empty, '.' or '..' path segment in the prefix")
        return RegistryURI(scheme="gs", bucket=bucket, prefix=prefix)
    if scheme == "file":
        if not rest.startswith("//"):
            raise UsageError(f"malformed registry URI {text!r}: {_EXPECTED}")
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost") or not slash:
            raise UsageError(
                f"registry URI {text!r} is not an absolute path: write file:///ABSOLUTE/PATH (three slashes)"
            )
        path = "/" + path
        if any(part in (".", "..") for part in path.split("/")):
            raise UsageError(f"registry URI {text!r}: '.' and '..' are not allowed in the path")
        return RegistryURI(scheme="file", path=Path(os.path.normpath(path)))
    raise UsageError(f"unsupported registry scheme {scheme!r} in {text!r}; {_EXPECTED}")


def workspace_dir() -> Path:
    """The user's workspace: where `bazel run` was started from its workspace root, else the cwd."""
    return Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd())


def resolve(flag: str | None) -> RegistryURI:
    """--registry wins, then $MODELGATE_REGISTRY, then <workspace>/.modelgate/registry.

    An empty --registry= is an error (it is a mistake, e.g. an unset shell variable), never the
    workspace default."""
    if flag is not None:
        if not flag.strip():
            raise UsageError(f"empty --registry=: {_EXPECTED} (omit the flag for the workspace's own registry)")
        return parse(flag)
    env = os.environ.get(ENV_REGISTRY)
    if env:
        return parse(env)
    return RegistryURI(scheme="file", path=workspace_dir() / DEFAULT_REGISTRY_DIR, is_default=True)
