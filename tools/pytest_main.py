"""Entry point of every py_test that model_test declares: runs pytest on the given files.

Arguments (set by the macro): optional --modelgate-require-gpu, then pytest's own arguments.
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
    if args and args[0] == "--modelgate-require-gpu":
        args = args[1:]
        _require_cuda()
    import pytest

    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args = ["--junitxml", xml] + args
    return pytest.main(["-q"] + args)


if __name__ == "__main__":
    sys.exit(main())
