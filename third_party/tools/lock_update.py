"""Regenerates the pinned locks from requirements.in (bazel run //third_party:requirements.update).

requirements_lock.txt: the CPU build of torch (from the machine's wheel directory, --find-links).
requirements_lock_cuda.txt: the same requirements with PyPI's CUDA build of torch, for --config=gpu.
Extra arguments go to pip-compile, e.g. --upgrade-package numpy.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

LOCKS = {
    # lock file -> (find-links, replace torch's local version label)
    "requirements_lock.txt": ["--find-links", "/opt/wheels"],
    "requirements_lock_cuda.txt": ["--no-emit-find-links"],
}


def _reason(stderr: str) -> str:
    """pip-compile's own message, in one line, without the traceback it prints on some errors."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    exception = re.match(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|NotFound|Conflict): (.+)$", lines[-1])
    if exception:
        return exception.group(1)
    errors = [line[len("ERROR:"):].strip() for line in lines if line.startswith("ERROR:")]
    return errors[-1] if errors else lines[-1]


def main(extra):
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        print("run me with: bazel run //third_party:requirements.update", file=sys.stderr)
        return 2
    os.chdir(workspace)
    for lock, flags in LOCKS.items():
        env = dict(os.environ)
        if lock.endswith("_cuda.txt"):
            env["PIP_FIND_LINKS"] = ""  # PyPI's torch is the CUDA build
            env["PIP_CONFIG_FILE"] = os.devnull
        cmd = [
            # -S -s as the toolchain's interpreter runs this script: only the packages on the
            # PYTHONPATH of this binary's runfiles (pip, pip-tools), none of the interpreter's own.
            sys.executable, "-S", "-s", "-m", "piptools", "compile", "--quiet",
            "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-header", "--no-emit-index-url",
            *flags, "--output-file", f"third_party/{lock}", "third_party/requirements.in", *extra,
        ]
        print(f"resolving third_party/{lock}", flush=True)
        result = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if result.returncode:
            why = _reason(result.stderr)
            print(f"pip-compile failed for third_party/{lock} (exit {result.returncode}){': ' + why if why else ''}", file=sys.stderr)
            return result.returncode
        sys.stderr.write(result.stderr)
    print("locks updated; review with: git diff third_party/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
