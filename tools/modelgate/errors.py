"""The errors a user can cause or fix, under one base: every command prints one as a single line
(`<prog>: <message>`) and exits with its `exit_code`, never with a traceback.

Standard library only: the build tools, the registry, the service and `affected` all import it.
"""


class ModelgateError(Exception):
    """Bad input, unusable data or an unusable registry: the message is a complete sentence for the user."""

    exit_code = 1


class UsageError(ModelgateError):
    """The command line names something that does not exist or is malformed."""

    exit_code = 2


# --- building: export, golden data -----------------------------------------------------------


class ExportError(ModelgateError):
    """An export that must not produce outputs; the message says what went wrong."""


class GoldenError(ModelgateError):
    """Golden data that cannot be used: the message names the file and the key."""


class WeightsError(ModelgateError):
    """Saved weights that do not fit the model they are loaded into."""


class LockEntryError(ModelgateError, ValueError):
    """A lock entry file (lock_entries/<name>.json of the pip repository) that is not one."""


# --- the registry -----------------------------------------------------------------------------


class StorageError(ModelgateError):
    """The registry cannot be reached, read or written."""


class BundleError(ModelgateError):
    """A release bundle is not promotable (unknown schema, failed gate, files that do not match)."""


class GateError(ModelgateError):
    """A promotion would regress a metric beyond its budget, or would move an immutable tag."""


class VerificationError(ModelgateError):
    """Fetched bytes or a manifest do not match what was signed."""


class RegistryContentError(VerificationError):
    """An object read from the registry is malformed, unsigned, or inconsistent with the history."""


def model_not_in_registry(model: str, uri: str, models: list[str]) -> UsageError:
    """The one wording for a model the registry has never seen."""
    return UsageError(f"model {model!r} is not in registry {uri} (models: {', '.join(models) or 'none'})")


# promote and rollback: the history event is committed (the promotion happened, fetch and serve
# resolve the tag to it), but moving the tag pointer failed; the next promote settles it.
EXIT_COMMITTED_TAG_PENDING = 3


# --- serving ----------------------------------------------------------------------------------


class RolloutError(ModelgateError):
    """A build that must not be served; the message says which step refused it and why."""


class InputError(ModelgateError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --- CI tooling (affected) ----------------------------------------------------------------------


class GitError(ModelgateError):
    """A git command failed; the message is git's own."""


class QueryError(ModelgateError):
    """A bazel query failed; the message is Bazel's own."""
