"""Loads tools/ci/ci.py for the tests in this directory."""

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("TEST_SRCDIR", "")) / os.environ.get("TEST_WORKSPACE", "")
if not (ROOT / "tools/ci/ci.py").is_file():
    ROOT = Path(__file__).resolve().parents[2]


def load_ci():
    """tools/ci/ci.py, a script, as a module (by path: `ci` is also a directory on the path)."""
    spec = importlib.util.spec_from_file_location("modelgate_ci", ROOT / "tools/ci/ci.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["modelgate_ci"] = module
    spec.loader.exec_module(module)
    return module
