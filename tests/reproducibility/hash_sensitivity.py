#!/usr/bin/env python3
"""Which edits change which models' build hashes.

Clones this repository, exports every model once, then applies one edit at a time, re-exports,
and reports which build hashes moved. Expected: a model's source, its golden data, its
hyperparameters and the lock entry of a pip package it depends on change its hash; another
model, the lock entry of a package no model depends on (httpx), a comment in the lock, the
README and test-only files do not.

    tests/reproducibility/hash_sensitivity.py
"""

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]

EDITS = [
    # (description, file, how to edit, models whose hash should move: "one" = the edited one, "all", "none")
    ("model source", "models/tiny_transformer/model.py", "append", "one"),
    ("golden data", "golden/tiny_transformer/golden.json", "golden", "one"),
    ("hyperparameter", "models/tiny_transformer/BUILD.bazel", "hparam", "one"),
    # An extra --hash line: pip still installs the entry (any listed hash may match the wheel).
    ("lock: numpy", "third_party/requirements_lock.txt", "hash:numpy", "all"),
    ("lock: httpx", "third_party/requirements_lock.txt", "hash:httpx", "none"),
    ("lock: comment", "third_party/requirements_lock.txt", "append", "none"),
    ("another model", "models/image_cnn/model.py", "append", "other"),
    ("README", "README.md", "append", "none"),
    ("test-only file", "models/tiny_transformer/model_test.py", "append", "none"),
]


def sh(cmd, cwd, check=True):
    return subprocess.run(cmd, cwd=cwd, check=check, capture_output=True, text=True)


def export_hashes(clone: Path) -> dict[str, str]:
    targets = sh(["bazel", "query", "kind(_model_weights, //models/...)"], clone).stdout.split()
    result = sh(["bazel", "build", *targets], clone, check=False)
    if result.returncode:
        sys.exit(f"build failed:\n{result.stderr[-2000:]}")
    hashes = {}
    for target in targets:
        package, name = target[2:].split(":")
        manifest = json.loads((clone / "bazel-bin" / package / name / "export.json").read_text())
        hashes[manifest["model"]] = manifest["build_hash"]
    return hashes


def apply(clone: Path, path: str, how: str) -> None:
    file = clone / path
    text = file.read_text()
    if how == "append":
        comment = "#" if not path.endswith(".md") else ""
        file.write_text(text + f"\n{comment} edited by hash_sensitivity.py\n")
    elif how.startswith("hash:"):
        package = how[len("hash:"):]
        match = re.search(rf"^{re.escape(package)}==\S+ \\\n", text, re.MULTILINE)
        if not match:
            sys.exit(f"no entry for {package} in {path}")
        file.write_text(text[: match.end()] + f"    --hash=sha256:{'0' * 64} \\\n" + text[match.end() :])
    elif how == "golden":
        config = json.loads(text)
        config["provenance"]["reviewed_by"] = "hash_sensitivity.py"
        file.write_text(json.dumps(config, indent=2) + "\n")
    elif how == "hparam":
        old = 'model_weights(\n    name = "weights",\n    deps = [":tiny_transformer"],\n)'
        new = 'model_weights(\n    name = "weights",\n    hparams = {"steps": "260"},\n    deps = [":tiny_transformer"],\n)'
        if old not in text:
            sys.exit(f"could not add hparams to {path}")
        file.write_text(text.replace(old, new))


def main() -> int:
    only = set(sys.argv[1:])  # optional: descriptions to run, e.g. README "test-only file"
    with tempfile.TemporaryDirectory(prefix="modelgate-hash-") as tmp:
        clone = Path(tmp) / "modelgate"
        sh(["git", "clone", "-q", str(SRC), str(clone)], SRC)
        try:
            base = export_hashes(clone)
            print(f"{'edit':<16} {'file':<42} {'hashes that moved':<40} {'expected':<10} ok")
            all_ok = True
            for description, path, how, expect in EDITS:
                if only and description not in only:
                    continue
                if not (clone / path).exists():
                    print(f"{description:<16} {path:<42} (file absent; skipped)")
                    continue
                start = time.time()
                apply(clone, path, how)
                after = export_hashes(clone)
                moved = sorted(m for m in base if after.get(m) != base[m])
                edited = path.split("/")[1] if path.startswith(("models/", "golden/")) else None
                want = {"one": [edited], "other": [edited], "all": sorted(base), "none": []}[expect]
                ok = moved == sorted(want)
                all_ok &= ok
                print(f"{description:<16} {path:<42} {', '.join(moved) or '-':<40} {expect:<10} {ok}  ({time.time() - start:.0f} s)")
                sh(["git", "checkout", "-q", "--", "."], clone)
            return 0 if all_ok else 1
        finally:
            sh(["bazel", "shutdown"], clone, check=False)


if __name__ == "__main__":
    sys.exit(main())
