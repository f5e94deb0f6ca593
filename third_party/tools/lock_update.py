"""Regenerates the pinned locks from requirements.in (bazel run //third_party:requirements.update).

requirements_lock.txt: the CPU build of torch (from the machine's wheel directory, --find-links).
requirements_lock_cuda.txt: the same requirements with PyPI's CUDA build of torch, for --config=gpu.
Extra arguments go to pip-compile, e.g. --upgrade-package numpy.
"""

import os
import subprocess
import sys
from pathlib import Path

LOCKS = {
    # lock file -> (find-links, replace torch's local version label)
    "requirements_lock.txt": ["--find-links", "/opt/wheels"],
    "requirements_lock_cuda.txt": ["--no-emit-find-links"],
}


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
            sys.executable, "-m", "piptools", "compile", "--quiet",
            "--generate-hashes", "--allow-unsafe", "--strip-extras", "--no-header", "--no-emit-index-url",
            *flags, "--output-file", f"third_party/{lock}", "third_party/requirements.in", *extra,
        ]
        print(f"resolving third_party/{lock}", flush=True)
        result = subprocess.run(cmd, env=env)
        if result.returncode:
            print(f"pip-compile failed for third_party/{lock} (exit {result.returncode})", file=sys.stderr)
            return result.returncode
    print("locks updated; review with: git diff third_party/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
