"""Entry point of every py_test that model_test declares: runs pytest on the given files.

Leading arguments set by the macro, then pytest's own:
  --modelgate-env=KEY=VALUE   set an environment variable for the tests (repeatable)
  --modelgate-require-gpu     fail at once, with a clear message, where no CUDA device is visible
"""

import os
import sys


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.stderr.write(
            "modelgate: this is a GPU-tagged test and no CUDA device is visible "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
            "run it on a CUDA machine with: bazel test --config=gpu //models/...\n"
        )
        sys.exit(1)


def main() -> int:
    args = sys.argv[1:]
    require_gpu = False
    while args and args[0].startswith("--modelgate-"):
        flag = args.pop(0)
        if flag.startswith("--modelgate-env="):
            key, _, value = flag[len("--modelgate-env="):].partition("=")
            os.environ[key] = value
        elif flag == "--modelgate-require-gpu":
            require_gpu = True
        else:
            sys.stderr.write(f"pytest_main: unknown flag {flag}\n")
            return 2
    if require_gpu:
        _require_cuda()
    import pytest

    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args = ["--junitxml", xml] + args
    return pytest.main(["-q"] + args)


if __name__ == "__main__":
    sys.exit(main())
