"""The errors a user can cause or fix. The CLIs print them as one line, never as a traceback."""


class ModelgateError(Exception):
    """Bad input or an unusable registry: the message is a complete sentence for the user."""

    exit_code = 1


class UsageError(ModelgateError):
    """The command line names something that does not exist or is malformed."""

    exit_code = 2


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


# promote and rollback: the history event is committed (the promotion happened, fetch and serve
# resolve the tag to it), but moving the tag pointer failed; the next promote settles it.
EXIT_COMMITTED_TAG_PENDING = 3
