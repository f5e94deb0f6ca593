"""bazel run //tools:serve_package -- --out=DIR: the inference service as a directory that runs
anywhere with CPython 3.11 on x86-64 Linux: no Bazel, no checkout, no network, no torch.

    DIR/bin/serve          the launcher: serve's command line (python3.11 -m modelgate.serve)
    DIR/app/modelgate/     the service's own Python modules, exactly those it imports
    DIR/site/              its pip packages, the pinned lock's files as installed on this machine
    DIR/requirements.txt   the same packages as lock entries (name==version --hash=...), for a
                           container build that installs them itself
    DIR/PACKAGE.json       what is in it: the lock entries, and the sha256 of every app file

The contents are what Bazel gives this tool: its runfiles are the service's closure (//tools/
modelgate/cli:serve_cli, torch-free), and its sys.path names exactly the pip store's
directories of the lock entries that closure depends on. So the package holds the code that the
serve tests ran, and the packages at the versions and hashes of the lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import modelgate
from modelgate.errors import UsageError

LAUNCHER = """#!/bin/sh
# modelgate's inference service, packaged by `bazel run //tools:serve_package`. Needs CPython 3.11
# ($MODELGATE_PYTHON, else python3.11 or python3 on PATH); takes serve's flags (--help).
here=$(cd "$(dirname "$0")/.." && pwd)
python=${MODELGATE_PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
[ -n "$python" ] || { echo "serve: no python3.11 on PATH (set MODELGATE_PYTHON)" >&2; exit 2; }
"$python" -S -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
  { echo "serve: $python is not CPython 3.11, which this package's binary wheels are built for" >&2; exit 2; }
# -S: no site-packages of the machine's, only the package's own; PYTHONSAFEPATH: not the cwd either.
PYTHONPATH="$here/app:$here/site" PYTHONSAFEPATH=1 exec "$python" -S -m modelgate.serve "$@"
"""


def runfiles_root() -> Path:
    """The runfiles directory this tool runs from (the parent of the workspace's own tree)."""
    env = os.environ.get("RUNFILES_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).parents:  # not resolved: runfiles are links into the source tree
        if parent.name.endswith(".runfiles"):
            return parent
    raise UsageError("run this with `bazel run //tools:serve_package -- --out=DIR` (it packages its own runfiles)")


def pip_dirs() -> list[Path]:
    """The pip store's per-distribution directories on this process's sys.path (store mode), or
    the one site directory (MODELGATE_PIP_INPUTS=files)."""
    out = []
    for entry in sys.path:
        path = Path(entry or ".")
        if path.is_dir() and ("/dists/" in str(path) or path.name == "site"):
            out.append(path)
    if not out:
        raise UsageError("no pip packages on sys.path: run this with `bazel run //tools:serve_package`")
    return out


def lock_entries(root: Path) -> list[dict]:
    entries = {}
    for path in sorted(root.glob("*/lock_entries/*.json")):
        doc = json.loads(path.read_text())
        entries[doc["name"]] = doc
    return [entries[k] for k in sorted(entries)]


def requirements(entries: list[dict]) -> str:
    lines = ["# modelgate's serving package: the lock entries of the service's closure (pip install --no-deps --require-hashes -r)"]
    for e in entries:
        hashes = " ".join(f"--hash={h}" for h in e.get("hashes", []))
        lines.append(f"{e['name']}=={e['version']} {hashes}".rstrip())
    return "\n".join(lines) + "\n"


def copy_app(out: Path) -> dict[str, str]:
    """modelgate's modules in this tool's runfiles (the service's closure), but this tool."""
    source = Path(modelgate.__file__).parent
    digests = {}
    for path in sorted(source.rglob("*.py")):
        rel = path.relative_to(source.parent)
        if rel.as_posix() == "modelgate/serve/package.py":
            continue
        target = out / "app" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        target.write_bytes(data)
        digests[rel.as_posix()] = hashlib.sha256(data).hexdigest()
    return digests


def tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            files += 1
            size += p.stat().st_size
    return files, size


def build(out: Path) -> dict:
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; give --out a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    app = copy_app(out)
    for directory in pip_dirs():
        shutil.copytree(directory, out / "site", dirs_exist_ok=True, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    for p in (out / "site").rglob("*"):  # the store is read-only; the copy is the user's
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    entries = lock_entries(runfiles_root())
    (out / "requirements.txt").write_text(requirements(entries))
    launcher = out / "bin" / "serve"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    doc = {
        "schema": "modelgate/serve-package@1",
        "python": "3.11",
        "platform": "linux x86_64",
        "command": "bin/serve --model=M --tag=T --registry=URI --public-key=PEM --state-dir=DIR --host=0.0.0.0",
        "packages": {e["name"]: {"version": e["version"], "hashes": e.get("hashes", [])} for e in entries},
        "app": app,
    }
    (out / "PACKAGE.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    from modelgate.cli import run, user_path

    def _main(args: list[str]) -> int:
        p = argparse.ArgumentParser(prog="serve_package", description="Package the inference service as a directory.")
        p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
        parsed = p.parse_args(args)
        out = Path(user_path(parsed.out))
        start = time.perf_counter()
        doc = build(out)
        files, size = tree_size(out)
        print(
            f"serve_package: {out}: {len(doc['packages'])} packages, {len(doc['app'])} app modules, "
            f"{files} files, {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s; run {out}/bin/serve --help"
        )
        return 0

    return run("serve_package", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
