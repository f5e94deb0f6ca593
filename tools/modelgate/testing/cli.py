"""Running modelgate's commands in-process, as a user would, and the ways tests break things."""

from __future__ import annotations

import json
import os

from modelgate.cli import promote
from modelgate.registry.registry import Registry


def run(capsys, main, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def promote_ok(capsys, uri, *releases, tag="stable", extra=()):
    args = ["--tag", tag, "--registry", uri, "--json", *extra]
    for r in releases:
        args += ["--release", r]
    rc, out, err = run(capsys, promote.main, *args)
    assert rc == 0, err
    return json.loads(out)["results"]


def every_command(out_dir, bundle, model: str = "tiny_transformer") -> dict:
    """{name: (main, argv)} of every command that reads the registry (promote, fetch, ls, show,
    history, rollback), for tests that check each one meets the same registry content the same way."""
    from modelgate.cli import fetch
    from modelgate.cli import registry as registry_cli

    return {
        "promote": (promote.main, ["--tag=stable", f"--release={bundle}"]),
        "fetch": (fetch.main, [f"--model={model}", "--tag=stable", f"--out={out_dir}"]),
        "ls": (registry_cli.main, ["ls"]),
        "show": (registry_cli.main, ["show", model]),
        "history": (registry_cli.main, ["history", model]),
        "rollback": (registry_cli.main, ["rollback", model, "--tag=stable"]),
    }


def overwrite(registry: Registry, key: str, data: bytes) -> None:
    """Tampering behind the registry's back, as an attacker or a broken disk would."""
    registry.storage.overwrite(key, data)

def fork(body) -> int:
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
