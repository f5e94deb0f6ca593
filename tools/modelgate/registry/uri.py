"""Which registry a command talks to: --registry, else $MODELGATE_REGISTRY, else the workspace's own.

Only the spellings of the scheme table's registry rows are accepted (modelgate.registry.storage:
gs://BUCKET[/PREFIX] for Google Cloud Storage, file:///ABSOLUTE/PATH for a local directory), so a
typo fails loudly instead of writing somewhere new.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from modelgate.errors import UsageError

from .storage import SCHEMES, RegistryURI, registry_forms  # noqa: F401 - RegistryURI: re-exported

ENV_REGISTRY = "MODELGATE_REGISTRY"
DEFAULT_REGISTRY_DIR = Path(".modelgate") / "registry"


def parse(text: str) -> RegistryURI:
    """Parses a registry URI; raises UsageError with one clear line when it is mistyped."""
    expected = f"expected {registry_forms()}"
    text = text.strip()
    if not text:
        raise UsageError(f"empty registry URI; {expected}")
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", text)
    if not match:
        raise UsageError(f"registry {text!r} is not a URI; {expected} (relative paths are not accepted)")
    scheme, rest = match.group(1).lower(), match.group(2)
    row = SCHEMES.get(scheme)
    if row is None or row.parse is None:
        raise UsageError(f"unsupported registry scheme {scheme!r} in {text!r}; {expected}")
    return row.parse(text, rest, row.registry)


def workspace_dir() -> Path:
    """The user's workspace: where `bazel run` was started from its workspace root, else the cwd."""
    return Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd())


def resolve(flag: str | None) -> RegistryURI:
    """--registry wins, then $MODELGATE_REGISTRY, then <workspace>/.modelgate/registry.

    An empty --registry= is an error (it is a mistake, e.g. an unset shell variable), never the
    workspace default."""
    if flag is not None:
        if not flag.strip():
            raise UsageError(f"empty --registry=: expected {registry_forms()} (omit the flag for the workspace's own registry)")
        return parse(flag)
    env = os.environ.get(ENV_REGISTRY)
    if env:
        return parse(env)
    return RegistryURI(scheme="file", path=workspace_dir() / DEFAULT_REGISTRY_DIR, is_default=True)
