"""The key of an installed lock in a pip store: <store root>/<key>/{site,dists,entries,COMPLETE}.

    python3.11 -S store_key.py LOCK_FILE FLAVOR FORMAT

Prints the sha256 over the lock's bytes, the torch flavor (cpu, cuda), the store's format and the
interpreter's version. Both the pip repository rule (repositories.bzl: the machine's store) and the
executor image (executor.Dockerfile: where it installs the store) run this file, so the two cannot
disagree on a key. Actions never see it: on an executor they find a package by its own lock
entry's digest under any key (entries/<sha256>), so the key names a directory, not a cache entry.
"""

import hashlib
import sys


def store_key(lock_bytes: bytes, flavor: str, fmt: str, version: str) -> str:
    digest = hashlib.sha256()
    for part in (lock_bytes, flavor.encode(), fmt.encode(), version.encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


if __name__ == "__main__":
    lock, flavor, fmt = sys.argv[1:]
    with open(lock, "rb") as f:
        print(store_key(f.read(), flavor, fmt, "%d.%d.%d" % sys.version_info[:3]))
