"""The report suite's fixtures: a clean workspace with the test key pair (modelgate.testing.fixtures)."""

from modelgate.testing.fixtures import clean_env, keys  # noqa: F401 - fixtures, used by name
