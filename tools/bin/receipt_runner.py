"""The build action behind every model_test variant: run pytest once, write its receipt.

    receipt_runner @PARAMS   (written by tools/private/receipts.bzl)

A failing test is a result, not an error: the action succeeds and records it (the test target
then fails by the receipt's status, and the release refuses). The action itself fails, recording nothing,
only where the outcome is not a function of its inputs, so that no cache keeps it: a run past the
target's timeout or killed by a signal, a GPU variant where no CUDA device is visible (a cached
"failed" receipt would then stand for a GPU machine's run), or a broken command line.
"""

from __future__ import annotations

import argparse
import json
import os
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="receipt_runner", fromfile_prefix_chars="@")
    p.add_argument("--target", required=True)
    p.add_argument("--variant", required=True, choices=["cpu", "gpu"])
    p.add_argument("--receipt", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--xml", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--input", action="append", default=[], help="REL=PATH of a file the tests read (hashed)")
    p.add_argument("--test-file", action="append", default=[], help="REL=PATH of a pytest file")
    p.add_argument("--lock-entry", action="append", default=[])
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the tests")
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
    pytest_main = Path(__file__).resolve().with_name("pytest_main.py")
    command = [sys.executable, str(pytest_main), *args.pytest_args]

    started = time.monotonic()
    timed_out = False
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.timeout, check=False)
            exit_code = proc.returncode
        except subprocess.TimeoutExpired:
            timed_out, exit_code = True, None
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

    inputs = {}
    for pair in args.input:
        rel, _, path = pair.partition("=")
        inputs[rel] = receipts.sha256_file(path)
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
        duration_s=duration,
        results=results,
        test_files=test_files,
        inputs=inputs,
        packages=packages,
    )
    receipt_path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    with open(log_path, "a") as log:
        log.write(f"\nmodelgate: {receipts.one_line(doc)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
