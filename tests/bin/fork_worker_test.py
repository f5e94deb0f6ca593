"""tools/bin/fork_worker.py: the persistent worker that forks each Python action.

The worker runs as Bazel starts it (a process reading JSON WorkRequests on stdin), serving
"py_binaries" made here: a launcher that, like Bazel's stub, sets PYTHONPATH and execs the
interpreter on a main file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tools" / "bin" / "fork_worker.py"
sys.path.insert(0, str(WORKER.parent))
import fork_worker  # noqa: E402


def torch_dir() -> str:
    """The sys.path entries this test's numpy and torch come from, with torch's own dependencies
    (under Bazel each distribution is a directory of its own), as one PYTHONPATH string."""
    stdlib = (sys.base_prefix, sys.base_exec_prefix)
    return os.pathsep.join(
        p for p in sys.path if p and not p.startswith(stdlib) and Path(p).is_dir() and not (Path(p) / "tools").is_dir() and p != str(WORKER.parent)
    )


def binary(tmp_path: Path, name: str, main: str, path: list[str]) -> Path:
    """A py_binary stand-in: its launcher sets PYTHONPATH to `path` and execs the interpreter
    on main.py, as Bazel's stub does."""
    d = tmp_path / name
    d.mkdir()
    (d / "main.py").write_text(textwrap.dedent(main))
    interpreter = d / "python3"  # the toolchain's wrapper: the interpreter with -S -s
    interpreter.write_text(f'#!/bin/sh\nexec {sys.executable} -S -s "$@"\n')
    interpreter.chmod(0o755)
    launcher = d / name
    launcher.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"os.environ['PYTHONPATH'] = {os.pathsep.join(path)!r}\n"
        f"main, interpreter = {str(d / 'main.py')!r}, {str(interpreter)!r}\n"
        "os.execv(interpreter, [interpreter, main] + sys.argv[1:])\n"
    )
    launcher.chmod(0o755)
    return launcher


class Worker:
    def __init__(self, tmp_path: Path):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = torch_dir()  # as the worker's own launcher would set it
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-s", str(WORKER), "--persistent_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=tmp_path, text=True,
        )  # fmt: skip
        self.next_id = 1

    def run(self, launcher: Path, *args: str, runfiles: tuple[str, ...] = ()) -> dict:
        arguments = [str(launcher), *runfiles, "--", *args]
        request = {"arguments": arguments, "inputs": [], "requestId": self.next_id}
        self.next_id += 1
        # Bazel prints a request over several lines, the last without a newline: the worker must
        # answer as soon as the request's last byte has arrived.
        self.proc.stdin.write(json.dumps(request, indent=1))
        self.proc.stdin.flush()
        response = json.loads(self.proc.stdout.readline())
        assert response["requestId"] == request["requestId"]
        return response

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path)
    yield w
    assert w.close() == 0


def test_a_request_runs_the_binary_and_returns_its_output_and_status(worker, tmp_path):
    prog = binary(tmp_path, "prog", """
        import sys
        print("out", sys.argv[1:])
        print("err", file=sys.stderr)
        sys.exit(3)
    """, [torch_dir()])  # fmt: skip
    r = worker.run(prog, "a", "b c")
    assert r["exitCode"] == 3
    assert "out ['a', 'b c']" in r["output"] and "err" in r["output"]


def test_the_binary_is_a_fork_that_has_torch_already_and_leaves_nothing_behind(worker, tmp_path):
    prog = binary(tmp_path, "prog", """
        import os, sys
        print("preloaded", "torch" in sys.modules, "parent", os.getppid())
        import builtins
        print("seen", getattr(builtins, "_left_by_an_earlier_action", None))
        builtins._left_by_an_earlier_action = "yes"
    """, [torch_dir()])  # fmt: skip
    first, second = worker.run(prog)["output"], worker.run(prog)["output"]
    assert f"preloaded True parent {worker.proc.pid}" in first
    assert "seen None" in first and "seen None" in second  # each action starts from the worker, not the last one


def test_the_binary_sees_its_own_path_only(worker, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "only_mine.py").write_text("VALUE = 7\n")
    prog = binary(tmp_path, "prog", """
        import only_mine
        print("value", only_mine.VALUE)
        try:
            import fork_worker
        except ImportError:
            print("no fork_worker")
    """, [str(mine), torch_dir()])  # fmt: skip
    out = worker.run(prog)["output"]
    assert "value 7" in out and "no fork_worker" in out


def test_a_binary_without_the_preloaded_torch_on_its_path_gets_a_fresh_interpreter(worker, tmp_path):
    prog = binary(tmp_path, "prog", """
        import os, sys
        print("preloaded", "torch" in sys.modules)
        try:
            import torch
        except ImportError:
            print("no torch")
    """, [str(tmp_path)])  # fmt: skip
    r = worker.run(prog)
    assert r["exitCode"] == 0
    assert "preloaded False" in r["output"] and "no torch" in r["output"]


def test_a_crashing_action_is_a_failure_and_the_worker_serves_the_next(worker, tmp_path):
    crash = binary(tmp_path, "crash", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", [torch_dir()])
    raising = binary(tmp_path, "raising", "raise ValueError('bad input')\n", [torch_dir()])
    fine = binary(tmp_path, "fine", "print('fine')\n", [torch_dir()])
    r = worker.run(crash)
    assert r["exitCode"] == 128 + 9 and "killed by signal 9" in r["output"]
    r = worker.run(raising)
    assert r["exitCode"] == 1 and "ValueError: bad input" in r["output"]
    assert worker.run(fine) == {"requestId": 3, "exitCode": 0, "output": "fine\n"}


def test_without_a_worker_the_flag_file_is_executed(tmp_path):
    prog = binary(tmp_path, "prog", "import sys\nprint('args', sys.argv[1:])\nsys.exit(5)\n", [str(tmp_path)])
    flags = tmp_path / "prog.params"
    flags.write_text(f"{prog}\n--\n--flag\nvalue with spaces\n")
    out = subprocess.run([sys.executable, "-S", "-s", str(WORKER), f"@{flags}"], capture_output=True, text=True, check=False)
    assert out.returncode == 5
    assert "args ['--flag', 'value with spaces']" in out.stdout


def test_the_binary_starts_from_its_runfiles_tree_laid_out_from_the_list(worker, tmp_path):
    data = tmp_path / "inputs" / "table.txt"
    data.parent.mkdir()
    data.write_text("rows\n")
    prog = binary(tmp_path, "prog", """
        import os, sys
        tree = os.environ["TREE"]
        print("table", open(os.path.join(tree, "ws/data/table.txt")).read().strip())
        print("empty", os.path.getsize(os.path.join(tree, "ws/data/__init__.py")))
    """, [torch_dir()])  # fmt: skip
    # The launcher, like Bazel's stub, finds the tree beside the path it was started by.
    text = prog.read_text().replace("import os, sys\n", "import os, sys\nos.environ['TREE'] = sys.argv[0] + '.runfiles'\n")
    prog.write_text(text)
    r = worker.run(prog, runfiles=(f"ws/data/table.txt={data}", "ws/data/__init__.py="))
    assert r["exitCode"] == 0, r["output"]
    assert "table rows" in r["output"] and "empty 0" in r["output"]


def test_a_command_line_without_the_runfiles_list_is_refused(worker, tmp_path):
    request = {"arguments": ["some_binary", "--flag"], "requestId": 9}
    worker.proc.stdin.write(json.dumps(request) + "\n")
    worker.proc.stdin.flush()
    r = json.loads(worker.proc.stdout.readline())
    assert r["exitCode"] == 2 and "no `--` after the runfiles list" in r["output"]


def test_the_pip_site_entry_becomes_the_dists_of_its_lock_entries(tmp_path):
    pip = tmp_path / "external" / "pip"
    (pip / "lock_entries").mkdir(parents=True)
    (pip / "INPUTS_ARE_LOCK_ENTRIES").write_text("")
    runfiles = tmp_path / "bin.runfiles" / "pip"
    (runfiles / "lock_entries").mkdir(parents=True)
    for name in ("torch", "numpy"):
        (pip / "lock_entries" / f"{name}.json").write_text("{}")
        (runfiles / "lock_entries" / f"{name}.json").symlink_to(pip / "lock_entries" / f"{name}.json")
    got = fork_worker.wrapper_pythonpath(os.pathsep.join(["/code", str(runfiles / "site"), "/more"]))
    real = os.path.realpath(pip)
    assert got.split(os.pathsep) == ["/code", f"{real}/dists/numpy", f"{real}/dists/torch", "/more"]
    # A files-mode @pip (no marker) keeps its site directory, as the wrapper does.
    (pip / "INPUTS_ARE_LOCK_ENTRIES").unlink()
    assert fork_worker.wrapper_pythonpath(str(runfiles / "site")) == str(runfiles / "site")
