"""What the commands do, independent of argument parsing: promote, rollback, fetch, ls, show, history.

Every function takes an open Registry and plain values and returns dataclasses (or raises a
ModelgateError); printing is the CLI's job. Each verb lives in its own module (promote, rollback,
fetch, inspect); this module is the one place callers import them from.
"""

from __future__ import annotations

from .fetch import FetchResult, fetch, resolve_build
from .inspect import history, list_models, show, verify
from .moves import COMMITTED_MESSAGE, PromoteResult, Warn
from .promote import ProgressFactory, promote, select_bundles
from .rollback import rollback

__all__ = [
    "COMMITTED_MESSAGE",
    "FetchResult",
    "ProgressFactory",
    "PromoteResult",
    "Warn",
    "fetch",
    "history",
    "list_models",
    "promote",
    "resolve_build",
    "rollback",
    "select_bundles",
    "show",
    "verify",
]
