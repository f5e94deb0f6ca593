"""Where bytes live: one storage interface, one module per backend, and the one scheme table that
both registry URIs (modelgate.registry.uri, open_storage) and checkpoint sources
(modelgate.sources) go through.

    base.py       the Storage interface, its optional capabilities with their defaults, the
                  table's row (Scheme) and RegistryURI
    local.py      file://   a local directory (LocalStorage); file sources
    gcs.py        gs://     Google Cloud Storage (GCSStorage) and its per-call deadline; gs:// sources
    https.py      https://, http://   checkpoint sources only
    installed.py  pip://    checkpoint sources only: a file of an installed distribution

Adding a backend (say s3://) is one new module and one row of SCHEMES below:
  - a Storage subclass implementing base.Storage's abstract methods (the primitives, and
    `overwrite`/`delete` that the tests tamper with); the optional capabilities (staged_copy,
    free_bytes, sweep_temporaries, ...) have defaults, overridden only where the backend does better;
  - for registries, `parse(text, rest, form) -> RegistryURI` (bucket/prefix or path) and the
    Storage's constructor from a RegistryURI; for checkpoint sources, `read(source, write, **_)`;
    a scheme may be either or both;
  - its row here. Messages that list the accepted URIs are made from the table.
Then add the backend to modelgate.testing.fixtures.BACKENDS (and its registry_uri fixture) so that
the shared suites (tests/registry/storage_test.py and every registry test) run on it too.

`from modelgate.registry.storage import X` keeps working for every name the package used to have
as one module.
"""

from __future__ import annotations

from . import gcs, https, installed, local
from .base import (  # noqa: F401 - re-exported: the package's interface
    CHUNK,
    DEFAULT_READ_LIMIT,
    ObjectRefused,
    Progress,
    RegistryURI,
    Scheme,
    Staged,
    Storage,
    Write,
    human_size,
)
from .gcs import (  # noqa: F401 - re-exported: tools/bench and the tests read these
    CONNECT_TIMEOUT_S,
    DEFAULT_GCS_TIMEOUT_S,
    ENV_GCS_TIMEOUT,
    READ_TIMEOUT_S,
    UPLOAD_CHUNK,
    GCSStorage,
)
from .local import LOCK_DIR, TEMP_DIR, LocalStorage  # noqa: F401 - re-exported

# The one scheme table: what each URI scheme is good for (a registry, a checkpoint source, both).
# Its order is the order messages list the forms in.
SCHEMES: dict[str, Scheme] = {
    "gs": Scheme(
        registry="gs://BUCKET[/PREFIX]", parse=gcs.parse_uri, open=gcs.GCSStorage,
        source="gs://BUCKET/OBJECT", read=gcs.read_source,
    ),
    "https": Scheme(source="https://HOST/PATH", read=https.read_source),
    "http": Scheme(source="http://HOST/PATH", read=https.read_source),
    "file": Scheme(
        registry="file:///ABSOLUTE/PATH", parse=local.parse_uri, open=local.LocalStorage.from_uri,
        source="file:///ABSOLUTE/PATH", read=local.read_source,
    ),
    "pip": Scheme(source="pip://DISTRIBUTION/PATH", read=installed.read_source),
}  # fmt: skip


def _either(forms: list[str]) -> str:
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


def registry_forms() -> str:
    """How a registry URI may be written: "gs://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH"."""
    return _either([s.registry for s in SCHEMES.values() if s.open is not None])


def source_forms() -> str:
    """How a checkpoint source may be written, for messages."""
    return _either([s.source for s in SCHEMES.values() if s.read is not None])


def source_reader(source: str):
    """The `read` of the scheme `source` is written in, or None if no row reads it."""
    scheme, sep, _ = source.partition("://")
    row = SCHEMES.get(scheme.lower()) if sep else None
    return row.read if row is not None else None


def open_storage(uri: RegistryURI) -> Storage:
    return SCHEMES[uri.scheme].open(uri)
