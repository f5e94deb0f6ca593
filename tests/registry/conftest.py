"""The registry suite's fixtures (modelgate.testing.fixtures): every test gets a clean workspace
with the test key pair configured, and `registry_uri`/`registry` run it on both backends."""

from modelgate.testing.fixtures import (  # noqa: F401 - fixtures, used by name
    clean_env,
    fake_gcs,
    keys,
    registry,
    registry_uri,
)
