"""How every modelgate command ends: one runner for the mains Bazel runs and the CLI alike.

A user's mistake (any ModelgateError) is one line on stderr and the error's exit code, an OSError
is one line naming the file, Ctrl-C is 130, argparse's own exits pass through; never a traceback.
Standard library only: build actions' mains (checkpoint_tool, the release action's manifest) import it too.
"""

from __future__ import annotations

import sys
from typing import Callable

from modelgate.errors import ModelgateError


def run(prog: str | None, body: Callable[[list[str]], int], argv: list[str] | None) -> int:
    """Runs a command body; a user's mistake becomes one line on stderr and a non-zero status. The
    line is `<prog>: <message>`, or the message alone where prog is None (an action's error that
    names its model and file itself)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prefix = f"{prog}: " if prog else ""
    try:
        return body(argv)
    except SystemExit as e:  # argparse: --help, or a usage error it has already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except ModelgateError as e:
        print(f"{prefix}{e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"{prefix}{e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return 130
