"""Row 3's second baseline: the work `bazel test //models/...` does, without Bazel.

    cd <clone> && python tools/bench/plain_pipeline.py --out=DIR [--jobs=2] [--json=FILE]

For every model: the pinned checkpoint where it has one (tools/bin/checkpoint_tool.py fetch, from
this machine's checkpoint store), export (train or load, safetensors, ONNX: tools/bin/model_tool.py
export), the release gate (gate_tool.py, with the files the bundle ships), the golden test
(pytest tools/bin/golden_test.py on the exported weights) and each of the model's test files
(pytest models/<m>/*_test.py, CPU only), as `bazel test //models/...` runs them. Each step is a fresh Python process in
this venv, with the environment Bazel gives its actions and tests (one thread, fixed hash seed,
no bytecode written), and steps run `--jobs` at a time, as Bazel runs `--jobs` actions on this
machine. What this leaves out is exactly what Bazel adds: analysis, runfiles trees, sandboxes,
caching. Exits non-zero if any step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "PYTHONSAFEPATH": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def models(root: Path) -> list[str]:
    return sorted(p.parent.name for p in (root / "models").glob("*/spec.py"))


def export_inputs(root: Path, model: str) -> list[str]:
    """The files a model_weights action hashes (workspace-relative), for a like-for-like export."""
    files = sorted((root / "models" / model).glob("*.py")) + sorted((root / "tools" / "modelgate").glob("*.py"))
    files += sorted((root / "golden" / model).glob("*")) + [root / "third_party" / "requirements_lock.txt", root / "tools" / "bin" / "model_tool.py"]
    return [f"--input={f.relative_to(root)}={f.relative_to(root)}" for f in files if f.is_file()]


def bundle_files(root: Path, model: str) -> list[str]:
    """--bundle-file NAME=PATH for the installed files model_package(bundle_files = [...]) ships
    (package_file("dist", "P") or a label "@pip//:site/P"), found where this venv installed them."""
    build = (root / "models" / model / "BUILD.bazel").read_text(encoding="utf-8")
    found = []
    for inside in re.findall(r'bundle_files\s*=\s*\[((?:[^\]"]|"[^"]*")*)\]', build):
        paths = re.findall(r'package_file\(\s*"[^"]+"\s*,\s*"([^"]+)"\s*\)', inside) + re.findall(r'"@pip//:site/([^"]+)"', inside)
        for path in paths:
            where = next((Path(e) / path for e in sys.path if (Path(e or ".") / path).is_file()), None)
            if where is None:
                raise SystemExit(f"plain_pipeline: {model}'s bundle file {path} is not installed in this venv")
            found.append(f"--bundle-file={Path(path).name}={where}")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where exports and release manifests go")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--json", type=Path, help="write per-step timings here")
    args = p.parse_args()
    root = Path.cwd()
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tools")])}
    python = sys.executable
    pytest = [python, "-m", "pytest", "-q", "-m", "not gpu", "-p", "no:cacheprovider"]
    steps: dict[str, float] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def step(name: str, argv: list[str], extra_env: dict | None = None) -> bool:
        start = time.perf_counter()
        out = subprocess.run(argv, check=False, cwd=root, env={**env, **(extra_env or {})}, capture_output=True, text=True)
        with lock:
            steps[name] = time.perf_counter() - start
            if out.returncode != 0:
                failures.append(f"{name}: exit {out.returncode}\n{(out.stdout + out.stderr)[-1500:]}")
        return out.returncode == 0

    def pipeline(pool: ThreadPoolExecutor, model: str):
        out = args.out / model
        out.mkdir(parents=True, exist_ok=True)
        tool = [python, "tools/bin/model_tool.py"]
        pin = root / "models" / model / "checkpoint.json"
        checkpoint = []
        if pin.is_file():
            pin_arg = f"models/{model}/checkpoint.json=models/{model}/checkpoint.json"
            fetch = [python, "tools/bin/checkpoint_tool.py", "fetch", "--model", model, "--pin", pin_arg,
                     "--out", str(out / "checkpoint.safetensors")]  # fmt: skip
            if not step(f"checkpoint {model}", fetch):
                return []
            checkpoint = ["--checkpoint", str(out / "checkpoint.safetensors"), "--checkpoint-pin", pin_arg]
        export = [*tool, "export", "--model", model, "--out-dir", str(out), *export_inputs(root, model), *checkpoint]
        if not step(f"export {model}", export):
            return []
        golden_env = {
            "MODELGATE_MODEL": model,
            "MODELGATE_WEIGHTS": str(out / "weights.safetensors"),
            "MODELGATE_GOLDEN_DIR": f"golden/{model}",
        }
        gate = [python, "tools/bin/gate_tool.py", "--model", model, "--export-dir", str(out), "--golden-dir", f"golden/{model}",
                "--out", str(out / "manifest.json"), *bundle_files(root, model)]  # fmt: skip
        return [
            pool.submit(step, f"gate {model}", gate),
            pool.submit(step, f"golden_test {model}", [*pytest, "tools/bin/golden_test.py"], golden_env),
        ]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        # Exports first (the long steps; gate and golden test wait on them), then the model tests.
        # A pipeline runs its export in its own worker and only submits what follows: no worker waits.
        exports = {m: pool.submit(pipeline, pool, m) for m in models(root)}
        tests = [
            pool.submit(step, f"{t.stem} {m}", [*pytest, str(t.relative_to(root))])
            for m in models(root)
            for t in sorted((root / "models" / m).glob("*_test.py"))
        ]
        followups = [f for e in exports.values() for f in e.result()]
        for f in tests + followups:
            f.result()
    wall = time.perf_counter() - start
    summary = {"wall_s": wall, "jobs": args.jobs, "steps": steps, "failures": failures}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print(f"plain pipeline: {len(steps)} steps in {wall:.1f} s with {args.jobs} at a time", flush=True)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
