"""The Python actions' persistent worker: torch imported once, each action a fork of it.

Every export, gate and model-test action is a Python process that imports torch first (1-1.5 s
on this 2-core machine, more than some of the actions' own work). Bazel keeps this worker
running between actions (`supports-workers`, the JSON worker protocol): it imports torch once,
and for each WorkRequest forks a child that becomes the action's own py_binary, as the py_binary
would have started in a fresh process, and writes its WorkResponse when the child exits.

    fork_worker @FLAGFILE          one action (no worker: a sandbox, a remote executor)
    fork_worker --persistent_worker  Bazel's worker: WorkRequests on stdin, WorkResponses on stdout

The flag file (tools/private/common.bzl, python_tool_args) is the action's command line: the
py_binary's path, its runfiles as RUNFILES_PATH=EXEC_PATH lines (EMPTY_PATH= for the empty
__init__.py files Bazel adds), `--`, then the binary's arguments. The runfiles are plain inputs of
the action, not a runfiles tree (Bazel keys a worker by its tools and runfiles, so a tree of each
model's tool would mean a worker per model): the worker lays the tree out in a temporary
directory, and the binary then starts from it exactly as from the tree Bazel would have made.

What the child does is what the py_binary's two launchers do, in this process instead of after
exec(2): Bazel's stub (run here, up to its exec) sets PYTHONPATH and RUNFILES_DIR from the
binary's runfiles; the toolchain's wrapper (@python_interpreter//:bin/python3) replaces the pip
`site` entry with the `dists/<name>` of exactly the lock entries in those runfiles; the
interpreter's sys.path is then that PYTHONPATH before the standard library, and the binary's
main file runs as __main__. The interpreter, its flags (-S -s, PYTHONSAFEPATH, PYTHONHASHSEED)
and the environment are the action's own: Bazel starts one worker per mnemonic, environment and
worker binary, so a worker serves only actions with the environment it was started in.

What the child inherits from this process beyond a fresh interpreter is the modules imported
here, torch and what it imports, all from the pinned lock. Before running anything the child
checks that each of them lies in its own sys.path, realpath for realpath: an action whose
packages do not include this worker's torch (another lock, another flavor) gets a fresh
interpreter instead (exec of the binary, as without a worker), so no action can import a module
it does not depend on, and none runs with another copy of a package than its own.

`fork` and `wait` (a child that starts and ends as a fresh process would, its status as
subprocess reports one) are also how tools/bin/receipt_runner.py runs pytest in a fork of itself.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import shutil
import signal
import sys
import tempfile
from typing import Callable

# Preloaded once per worker: what every action that uses the worker imports first. numpy before
# torch, as in the actions: torch records at import whether numpy can be imported.
PRELOAD = ("numpy", "torch")


def _stdlib_path() -> list[str]:
    """The standard library's entries of this interpreter's sys.path (what every child keeps)."""
    prefixes = tuple({os.path.join(p, "") for p in (sys.base_prefix, sys.base_exec_prefix)})
    return [p for p in sys.path if p and os.path.join(p, "").startswith(prefixes)]


# What this worker's own launchers (Bazel's stub, the toolchain's wrapper) added to the
# environment Bazel gave it; an action's launchers set them afresh for the action's binary (the
# stub appends an inherited PYTHONPATH to its own), so they go before any action starts.
LAUNCHER_ENV = ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE")


class _Exec(BaseException):
    """Raised in place of os.execv by Bazel's stub: the program and argv it would have run."""

    def __init__(self, program: str, argv: list[str]):
        super().__init__(program)
        self.program, self.argv = program, argv


def read_flagfile(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


class Action:
    """One action's command line: the py_binary, its runfiles, its arguments."""

    def __init__(self, arguments: list[str]):
        if not arguments:
            raise ValueError("the command line names no program")
        self.binary = arguments[0]
        try:
            end = arguments.index("--", 1)
        except ValueError:
            raise ValueError(f"{self.binary}: no `--` after the runfiles list") from None
        self.runfiles = [line.partition("=")[::2] for line in arguments[1:end]]
        self.args = arguments[end + 1 :]

    def lay_out(self, where: str) -> str:
        """The runfiles tree under `where` (links to the inputs, empty files), and a link to the
        binary beside it, whose path is returned: the binary's launcher finds `<it>.runfiles`."""
        name = os.path.basename(self.binary)
        tree = os.path.join(where, name + ".runfiles")
        for path, target in self.runfiles:
            dest = os.path.join(tree, path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if target:
                os.symlink(os.path.abspath(target), dest)
            else:
                open(dest, "wb").close()
        binary = os.path.join(where, name)
        os.symlink(os.path.abspath(self.binary), binary)
        return binary


def wrapper_pythonpath(pythonpath: str) -> str:
    """PYTHONPATH as @python_interpreter//:bin/python3 rewrites it: an entry `<repo>/site` whose
    lock entries link into a lock-entries @pip (INPUTS_ARE_LOCK_ENTRIES) becomes one
    `<@pip>/dists/<name>` per lock entry there, in name order (the shell glob's); every other
    entry stays. third_party/python/repositories.bzl, _WRAPPER, is the original."""
    out = []
    for entry in pythonpath.split(os.pathsep) if pythonpath else []:
        if os.path.basename(entry) == "site":
            lock_dir = os.path.join(os.path.dirname(entry), "lock_entries")
            names = sorted(n for n in _listdir(lock_dir) if n.endswith(".json"))
            if names:
                repo = os.path.dirname(os.path.dirname(os.path.realpath(os.path.join(lock_dir, names[0]))))
                if os.path.isfile(os.path.join(repo, "INPUTS_ARE_LOCK_ENTRIES")):
                    out.extend(os.path.join(repo, "dists", n[: -len(".json")]) for n in names)
                    continue
        out.append(entry)
    return os.pathsep.join(out)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def launch_plan(binary: str, args: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """(main file, argv, environment changes) that `binary` (a py_binary) would run with: its
    stub runs here until its exec, which is caught; os.environ is restored afterwards."""
    saved_env, saved_argv, saved_execv = dict(os.environ), sys.argv, os.execv

    def caught(program, argv):
        raise _Exec(program, list(argv))

    os.execv = caught
    sys.argv = [binary, *args]
    try:
        runpy.run_path(binary, run_name="__main__")
    except _Exec as e:
        plan = e
    else:
        raise RuntimeError(f"{binary}: its launcher returned without starting the program")
    finally:
        os.execv, sys.argv = saved_execv, saved_argv
        changed = {k: v for k, v in os.environ.items() if saved_env.get(k) != v}
        os.environ.clear()
        os.environ.update(saved_env)
    # argv: [interpreter, main file, *args]; the interpreter is the toolchain's wrapper.
    if len(plan.argv) < 2:
        raise RuntimeError(f"{binary}: unexpected launch {plan.argv!r}")
    if "PYTHONPATH" in changed:
        changed["PYTHONPATH"] = wrapper_pythonpath(changed["PYTHONPATH"])
    return plan.argv[1], plan.argv[2:], changed


_SELF = os.path.realpath(__file__)


def _inherited_files() -> list[str]:
    """The files of the modules imported in this process that are not the standard library's."""
    stdlib = tuple(os.path.realpath(p) + os.sep for p in _stdlib_path() if p)
    files = []
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        # (torch.ops and torch.classes name files that do not exist: nothing was read from them.
        # This worker's own module is not importable by the action: its main file replaces it.)
        if f and os.path.isabs(f) and not os.path.realpath(f).startswith(stdlib) and os.path.realpath(f) != _SELF:
            files.append(os.path.realpath(f))
    return files


# The files of what persistent() preloaded, found once (resolving ~1,500 module paths is
# not a cost each action should pay); None until then, and in a process that preloaded nothing.
_preloaded: list[str] | None = None


def foreign_modules(path: list[str]) -> list[str]:
    """The inherited module files that no entry of `path` holds (empty: the child may keep them)."""
    roots = tuple(os.path.realpath(p) + os.sep for p in path if p)
    files = _preloaded if _preloaded is not None else _inherited_files()
    return [f for f in files if not f.startswith(roots)]


def run_in_this_process(binary: str, args: list[str]) -> int:
    """Becomes `binary` with `args` in this (forked) process; its exit status. Where an inherited
    module is not on the binary's own path, execs the binary instead (never returns then)."""
    main, argv, env = launch_plan(binary, args)
    os.environ.update(env)
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    foreign = foreign_modules(path)
    if foreign:
        print(f"fork_worker: {os.path.basename(binary)} runs in a fresh interpreter: {len(foreign)} preloaded files are not on its path "
              f"(the first: {foreign[0]})", file=sys.stderr)
        sys.stderr.flush()
        os.execv(binary, [binary, *args])
    sys.path[:] = path + _stdlib_path()
    sys.argv = [main, *argv]
    try:
        runpy.run_path(main, run_name="__main__")
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


def serve_one(request: dict) -> dict:
    """Runs one WorkRequest in a forked child; the WorkResponse."""
    arguments = list(request.get("arguments", []))
    if len(arguments) == 1 and arguments[0].startswith("@"):
        arguments = read_flagfile(arguments[0][1:])
    response = {"requestId": request.get("requestId", 0)}
    try:
        action = Action(arguments)
    except ValueError as e:
        return {**response, "exitCode": 2, "output": f"fork_worker: {e}\n"}
    where = tempfile.mkdtemp(prefix="fork_worker.")
    try:
        with tempfile.TemporaryFile() as log:
            code = wait(fork(lambda: run_in_this_process(action.lay_out(where), action.args), log.fileno()))
            log.seek(0)
            output = log.read().decode("utf-8", errors="replace")
    finally:
        shutil.rmtree(where, ignore_errors=True)
    if code < 0:
        output += f"\nfork_worker: the action was killed by signal {-code}\n"
    return {**response, "exitCode": _shell_status(code), "output": output}


# ------------------------------------------------------------------------------------------------
# A child that runs as a fresh process would: also how tools/bin/receipt_runner.py runs pytest.


def fork(body: Callable[[], int], log_fd: int) -> int:
    """Forks a child that runs `body` with a fresh process's streams (stdin from /dev/null,
    stdout and stderr to `log_fd`) and tempfile's directory found again from its environment, then
    exits with what body returns (1, with the traceback in the log, where it raises), never
    returning to the caller's code. Returns the child's pid (see `wait`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1  # an uncaught exception: what a fresh interpreter exits with
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__
        tempfile.tempdir = None
        code = body()
    except BaseException:  # noqa: BLE001 - reported in the child's log
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF if isinstance(code, int) else 1)


def wait(pid: int, timeout: float | None = None) -> int | None:
    """The child's exit status, as subprocess reports one (minus the signal that killed it); None
    where it ran past `timeout` seconds (it is then killed and reaped)."""
    if timeout is not None:
        pidfd = os.pidfd_open(pid)
        try:
            if not select.select([pidfd], [], [], timeout)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
        finally:
            os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _shell_status(code: int) -> int:
    """An exit status as a shell reports it: 128 + the signal for a killed process."""
    return 128 - code if code < 0 else code


def one_shot(arguments: list[str]) -> int:
    """The action without a worker: the same runfiles tree, then the binary in a process of its
    own (exec, in a child, so that the tree can be removed afterwards); its exit status."""
    try:
        action = Action(arguments)
    except ValueError as e:
        print(f"fork_worker: {e}", file=sys.stderr)
        return 2
    where = tempfile.mkdtemp(prefix="fork_worker.")
    try:
        binary = action.lay_out(where)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                os.execv(binary, [binary, *action.args])
            finally:
                os._exit(127)
        code = wait(pid)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return _shell_status(code)


def requests(fd: int):
    """WorkRequests from Bazel's JSON stream on `fd`: one JSON object after another, with or
    without whitespace between them (Bazel may print one over several lines, the last without a
    newline), so each is parsed as soon as its last byte has arrived."""
    decoder = json.JSONDecoder()
    buffer = ""
    raw = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        raw += chunk
        try:
            buffer += raw.decode("utf-8")
            raw = b""
        except UnicodeDecodeError:
            continue  # a character split between reads: wait for the rest
        while True:
            stripped = buffer.lstrip()
            if not stripped:
                buffer = ""
                break
            try:
                obj, end = decoder.raw_decode(stripped)
            except json.JSONDecodeError:
                buffer = stripped
                break
            yield obj
            buffer = stripped[end:]


def persistent() -> int:
    global _preloaded
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass  # nothing preloaded: each child imports what it needs
    _preloaded = _inherited_files()
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but WorkResponses on the protocol's stream
    for request in requests(sys.stdin.fileno()):
        out.write(json.dumps(serve_one(request)) + "\n")
        out.flush()
    return 0


def main(argv: list[str]) -> int:
    for key in LAUNCHER_ENV:
        os.environ.pop(key, None)
    if "--persistent_worker" in argv:
        return persistent()
    if len(argv) != 1 or not argv[0].startswith("@"):
        print("usage: fork_worker @FLAGFILE | --persistent_worker", file=sys.stderr)
        return 2
    return one_shot(read_flagfile(argv[0][1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
