"""The build action behind every model_test variant: run pytest once, write its receipt.

    receipt_runner @PARAMS   (written by tools/private/receipts.bzl)

A failing test is a result, not an error: the action succeeds and records it (the test target
then fails by the receipt's status, and the release refuses). The action itself fails, recording nothing,
only where the outcome is not a function of its inputs, so that no cache keeps it: a run past the
target's timeout or killed by a signal, a GPU variant where no CUDA device is visible (a cached
"failed" receipt would then stand for a GPU machine's run), or a broken command line.

pytest runs in a fork of this process (tools/bin/fork_worker.py's fork and wait: no second
interpreter start, and in the fork worker no second import of torch). The receipt lists the
sha256 of every file the tests read (modelgate.receipts.input_digests): hashed here, but for a
file an export record given with --record lists (a golden test's weights), whose digest the
export computed in this build already.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

from modelgate import receipts


def _cuda_visible() -> tuple[bool, str]:
    # pytest_main's --modelgate-require-gpu makes the same check inside the run; here it decides
    # whether there is anything to record at all.
    code = "import torch,sys; print(torch.__version__); sys.exit(0 if torch.cuda.is_available() else 3)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return out.returncode == 0, out.stdout.strip() or "unknown"


# Environment variables that libraries read once, when they load: where one of them is set for the
# tests and differs from this process's while torch is already imported here (the fork worker
# preloads it, tools/bin/fork_worker.py), pytest runs in a fresh interpreter instead of a fork.
_READ_AT_LOAD = ("PYTHON", "MKL_", "OMP_", "KMP_", "ATEN_", "CUBLAS_", "CUDA_", "TORCH_", "NVIDIA_", "LD_")


def _fork_safe(env: dict[str, str]) -> bool:
    changed = {k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)}
    if any(k.startswith("PYTHON") for k in changed):
        return False  # read by the interpreter at start
    return "torch" not in sys.modules or not any(k.startswith(_READ_AT_LOAD) for k in changed)


def run_pytest(pytest_main: Path, pytest_args: list[str], env: dict[str, str], log, timeout: float) -> int | None:
    """pytest_main.py with `pytest_args` and `env`, stdout and stderr to `log`; its exit status
    (negative: killed by that signal), None past `timeout` seconds (then killed).

    A fork of this process runs it, as a fresh interpreter would (same interpreter, flags and
    sys.path; pytest_main.py as __main__ with the tests' environment): no second interpreter start
    and, in the fork worker, no second import of torch. Where the tests' environment changes what
    an interpreter or an already loaded library read at start, a fresh interpreter runs it."""
    if not _fork_safe(env):
        try:
            proc = subprocess.run([sys.executable, str(pytest_main), *pytest_args], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return None
        return proc.returncode
    forked = _fork_worker()
    return forked.wait(forked.fork(lambda: _pytest_here(pytest_main, pytest_args, env), log.fileno()), timeout)


def _pytest_here(pytest_main: Path, pytest_args: list[str], env: dict[str, str]) -> int:
    """In the forked child: pytest_main.py as __main__ with the tests' environment; its exit status."""
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [str(pytest_main), *pytest_args]
    try:
        runpy.run_path(str(pytest_main), run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _fork_worker():
    """tools/bin/fork_worker.py, beside this file (not importable by name: no package), whose
    fork and wait start and end a child as the worker starts and ends an action."""
    path = Path(__file__).resolve().with_name("fork_worker.py")
    spec = importlib.util.spec_from_file_location("fork_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="receipt_runner", fromfile_prefix_chars="@")
    p.add_argument("--target", required=True)
    p.add_argument("--variant", required=True, choices=["cpu", "gpu"])
    p.add_argument("--receipt", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--xml", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--input", action="append", default=[], help="REL=PATH of a file the tests read (hashed, or see --record)")
    p.add_argument("--record", action="append", default=[], help="REL=PATH of an export.json: the files it lists take its sha256s")
    p.add_argument("--test-file", action="append", default=[], help="REL=PATH of a pytest file")
    p.add_argument("--lock-entry", action="append", default=[])
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the tests")
    p.add_argument("--outputs-dir", help="the tests' undeclared outputs ($TEST_UNDECLARED_OUTPUTS_DIR): a report for a person")
    p.add_argument("--outputs-display", help="that directory as a person finds it (bazel-bin/...), for the tests' messages")
    p.add_argument("pytest_args", nargs="*")
    args = p.parse_args(argv)

    if args.variant == "gpu":
        visible, torch_version = _cuda_visible()
        if not visible:
            print(
                f"modelgate: {args.target} is a GPU variant and no CUDA device is visible here (torch {torch_version}); "
                "run it on a CUDA machine (or a GPU pool: --config=rbe) with --config=gpu",
                file=sys.stderr,
            )
            return 1

    receipt_path, log_path, xml_path = (Path(x).resolve() for x in (args.receipt, args.log, args.xml))
    tmp = receipt_path.with_name(receipt_path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = dict(os.environ)
    for pair in args.env:
        key, _, value = pair.partition("=")
        env[key] = value
    env.update({"TEST_TMPDIR": str(tmp), "TMPDIR": str(tmp), "HOME": str(tmp), "XML_OUTPUT_FILE": str(xml_path)})
    if args.outputs_dir:
        outputs_dir = Path(args.outputs_dir).resolve()
        shutil.rmtree(outputs_dir, ignore_errors=True)
        outputs_dir.mkdir(parents=True)
        env["TEST_UNDECLARED_OUTPUTS_DIR"] = str(outputs_dir)
        if args.outputs_display:
            env["MODELGATE_REPORT_DISPLAY_DIR"] = args.outputs_display
    pytest_main = Path(__file__).resolve().with_name("pytest_main.py")

    started = time.monotonic()
    with open(log_path, "wb") as log:
        exit_code = run_pytest(pytest_main, args.pytest_args, env, log, args.timeout)
    timed_out = exit_code is None
    duration = time.monotonic() - started
    shutil.rmtree(tmp, ignore_errors=True)
    if timed_out or exit_code is None or exit_code < 0:
        # Not a property of the inputs (a loaded machine, a kill): fail the action, so that no
        # cache keeps it as this input's result; the next build runs the tests again.
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        why = f"ran past its {args.timeout:g} s timeout" if timed_out else f"was killed by signal {-exit_code}"
        print("\n".join(tail), file=sys.stderr)
        print(
            f"modelgate: {args.target}: pytest {why} after {duration:.0f} s; nothing recorded (a timeout or a kill depends "
            "on the machine, not on the inputs): run it again, or give the test a larger size",
            file=sys.stderr,
        )
        return 1

    inputs = receipts.input_digests([pair.partition("=")[::2] for pair in args.input], [pair.partition("=")[::2] for pair in args.record])
    test_files = {pair.partition("=")[0]: inputs.get(pair.partition("=")[0]) or receipts.sha256_file(pair.partition("=")[2]) for pair in args.test_file}
    packages = {}
    for path in args.lock_entry:
        entry = json.loads(Path(path).read_text())
        packages[entry["name"]] = {"version": entry["version"], "hashes": sorted(entry["hashes"])}

    results = receipts.parse_junit(xml_path) if xml_path.is_file() and xml_path.stat().st_size else None
    if not xml_path.exists():
        xml_path.write_text("")
    doc = receipts.make_receipt(
        target=args.target,
        variant=args.variant,
        exit_code=exit_code,
        timed_out=timed_out,
        timeout_s=args.timeout,
        results=results,
        test_files=test_files,
        inputs=inputs,
        packages=packages,
    )
    receipt_path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    with open(log_path, "a") as log:
        log.write(f"\nmodelgate: {receipts.one_line(doc, duration)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
