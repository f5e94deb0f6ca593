"""The modelgate benchmark: what a team asks before adopting it, measured side by side in one run.

    tools/bench/run [--only=affected,cache,overhead,promote,swap,training] [--model=NAME] [--size-mib=1024]
                    [--out=FILE] [--work=DIR] [--keep] [--no-dvc] [--no-whatif]

The code: parse.py (Bazel's and swap_load.py's output -> numbers), runner.py (subprocesses,
clones, the machine), rows.py (each row, measured), report.py (the table and its prose), and this
file (the command line). Run through tools/bench/run, which provides the venv (the pinned lock, outside Bazel). Everything
happens in clones of this repository's committed HEAD under a temporary directory, with Bazel's
machine-wide disk cache switched off (--disk_cache=) so that only what a row sets up can be reused.
Prints the table and, on a full run (or with --out), writes it to BENCHMARKS.md with the date, the
machine, the load average, per-row details and where the time goes in the slowest row.

Rows (each a ratio beside absolute times; timings are never test assertions):
  affected   bazel test //models/... after editing one model, beside that model's tests alone,
             beside pytest over all models
  cache      a fresh clone at another path with a warm remote cache (tools/dev/cache_server), beside a
             cold run; after the fetch and including it
  overhead   cold bazel test //models/... beside pytest of the same files, beside the same export,
             gate and test steps run without Bazel, and beside Bazel with faster sandbox settings
  promote    1 GiB (synthetic) promote and verified fetch, fake-gcs-server and local registry,
             beside raw google-cloud-storage and file copies; re-promote; dvc push as a peer
  swap       promote -> first answer from the new build under load; failed requests; p99
  training   each model's training in the portable numerics mode (what every export runs) beside
             the same training on the CPU's own kernels, fresh processes, alternating
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from report import render_table
from rows import Bench, ROWS
from runner import SRC, log


# Sections of BENCHMARKS.md that other benchmarks write (tools/bench/serving_bench.py, ...) start
# with this heading; a run of this one rewrites its own part and keeps theirs.
OTHER_BENCHMARKS = "\n## Recorded by other benchmarks\n"


def carried_over(out: Path) -> str:
    text = out.read_text() if out.is_file() else ""
    at = text.find(OTHER_BENCHMARKS)
    return text[at:] if at >= 0 else ""


def main() -> int:
    p = argparse.ArgumentParser(prog="tools/bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows to run (default: all of {','.join(ROWS)})")
    p.add_argument("--model", default="tiny_transformer", help="the model row 1 edits (default tiny_transformer)")
    p.add_argument("--size-mib", type=int, default=1024, help="size of the synthetic model for row 4 (default 1024)")
    p.add_argument("--reps", type=int, default=1, help="repetitions of each row-4 transfer, best kept (default 1)")
    p.add_argument("--out", type=Path, help="write the report here (default: BENCHMARKS.md, on a full run only)")
    p.add_argument("--work", type=Path, help="working directory (default: a new one under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the working directory (clones, logs, profiles)")
    p.add_argument("--no-dvc", action="store_true", help="leave out the dvc push peer")
    p.add_argument("--no-whatif", action="store_true", help="leave out row 3c (a third cold Bazel run, sandbox settings flipped)")
    args = p.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(ROWS)
    if unknown or not only:
        p.error(f"--only takes some of {','.join(ROWS)} (got {args.only!r})")
    args.only = only
    if not (SRC / "models").is_dir() or shutil.which("bazel") is None:
        p.error("run from a modelgate checkout with bazel on PATH (tools/bootstrap installs it)")
    full = only == set(ROWS)
    out = args.out or (SRC / "BENCHMARKS.md" if full else None)
    created = args.work is None
    args.work = args.work or Path(tempfile.mkdtemp(prefix="modelgate-bench-"))
    args.work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    log(f"working in {args.work} (clones of {SRC} HEAD; uncommitted changes are not measured)")
    try:
        bench.run()
    finally:
        bench.close()
    report = bench.report()
    print()
    print(render_table(bench.rows, bench.previous))
    print()
    print(bench.where_the_time_goes())
    if out:
        out.write_text(report + carried_over(out))
        log(f"wrote {out}")
    if created and not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    else:
        log(f"kept {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
