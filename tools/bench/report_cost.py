"""What the review page adds to a release build: `bazel build //models:releases` in a clone of the
committed HEAD, every gate and review page made to run (a no-op edit of modelgate.report, which the
gate and the page read and no export does), the per-model times of the ReleaseGate action (the
release without its page) and the ReleaseReport action (the page) from one Bazel profile, side by
side, and the page's size beside the bundle's.

    flock -o /tmp/heavy.lock python3 tools/bench/report_cost.py [--keep]

Prints one row per model and the total, with the load average and the CPU. A benchmark, not a test:
nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]
GATE = re.compile(r"^Gating (\S+) release")
PAGE = re.compile(r"^Drawing (\S+)'s release review page")


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown")


def profile_events(path: Path) -> list[dict]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc = json.loads(raw)
    return doc["traceEvents"] if isinstance(doc, dict) else doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", action="store_true", help="keep the clone (and its Bazel server) for a look")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="modelgate-report-bench-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(SRC), str(clone)], check=True)
    # A no-op edit every gate and review page reads and no export does: they all run, nothing else
    # that the machine's disk cache holds (exports, model tests) has to.
    init = clone / "tools/modelgate/report/__init__.py"
    init.write_text(init.read_text() + f"# report_cost.py run {time.time_ns()}\n")
    profile = work / "profile.json"
    load_before = os.getloadavg()
    started = time.monotonic()
    build = subprocess.run(["bazel", "build", "//models:releases", f"--profile={profile}"], cwd=clone, capture_output=True, text=True)
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    try:
        if build.returncode:
            print(build.stderr[-4000:], file=sys.stderr)
            print(f"report_cost: bazel build //models:releases failed in {clone}", file=sys.stderr)
            return 1
        gate, page = {}, {}
        for e in profile_events(profile):
            name, dur = str(e.get("name", "")), e.get("dur")
            if dur is None:
                continue
            for pattern, table in ((GATE, gate), (PAGE, page)):
                m = pattern.match(name)
                if m:
                    table[m.group(1)] = table.get(m.group(1), 0.0) + dur / 1e6
        bin_dir = clone / "bazel-bin" / "models"
        print(f"# review page cost, bazel build //models:releases ({time.strftime('%Y-%m-%d')}, {cpu_model()}, "
              f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / {load_after[0]:.2f} after; build wall {wall:.1f} s)")  # fmt: skip
        print("| model | ReleaseGate s (release without page) | ReleaseReport s (the page) | page / gate | report.html KiB | bundle MiB | page / bundle |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        totals = [0.0, 0.0, 0, 0]
        for model in sorted(set(gate) | set(page)):
            release = bin_dir / model / "release"
            html = (release / "report.html").stat().st_size if (release / "report.html").exists() else 0
            manifest = json.loads((release / "manifest.json").read_text())
            bundle = sum(f["size"] for f in manifest["files"].values())
            g, r = gate.get(model, 0.0), page.get(model, 0.0)
            totals = [totals[0] + g, totals[1] + r, totals[2] + html, totals[3] + bundle]
            print(f"| {model} | {g:.2f} | {r:.2f} | {r / g if g else float('nan'):.2f} | {html / 1024:.0f} | {bundle / 2**20:.1f} | {html / bundle:.2%} |")
        g, r, html, bundle = totals
        print(f"| all | {g:.2f} | {r:.2f} | {r / g if g else float('nan'):.2f} | {html / 1024:.0f} | {bundle / 2**20:.1f} | {html / bundle if bundle else 0:.2%} |")
        return 0
    finally:
        if not args.keep:
            subprocess.run(["bazel", "clean", "--expunge"], cwd=clone, capture_output=True)  # its output base too
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {clone}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
