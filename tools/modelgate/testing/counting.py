"""A Storage that counts its requests: what the bounded-read tests assert and history_bench prints.

Every call of a storage primitive is one request on GCS; `calls` lists them as (method, key) and
`waited` is the time spent inside them, so that what the caller itself did is the rest.
"""

from __future__ import annotations

import time

# The Storage methods that reach the registry (modelgate.registry.storage.base).
REQUESTS = ("read", "read_versioned", "exists", "create", "swap", "list", "list_dirs", "read_into", "read_hashed_into", "put_file", "put_staged")


class Counting:
    def __init__(self, storage):
        self._s, self.calls, self.waited = storage, [], 0.0

    def __getattr__(self, name):
        attr = getattr(self._s, name)
        if name not in REQUESTS:
            return attr

        def counted(*a, **k):
            self.calls.append((name, a[0] if a else None))
            t = time.perf_counter()
            try:
                return attr(*a, **k)
            finally:
                self.waited += time.perf_counter() - t

        return counted
