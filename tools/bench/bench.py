"""The modelgate benchmark: what a team asks before adopting it, measured side by side in one run.

    tools/bench/run [--only=affected,cache,overhead,promote,swap,training] [--model=NAME] [--size-mib=1024]
                    [--out=FILE] [--work=DIR] [--keep] [--no-dvc] [--no-whatif]

Run through tools/bench/run, which provides the venv (the pinned lock, outside Bazel). Everything
happens in clones of this repository's committed HEAD under a temporary directory, with Bazel's
machine-wide disk cache switched off (--disk_cache=) so that only what a row sets up can be reused.
Prints the table and, on a full run (or with --out), writes it to BENCHMARKS.md with the date, the
machine, the load average, per-row details and where the time goes in the slowest row.

Rows (each a ratio beside absolute times; timings are never test assertions):
  affected   bazel test //models/... after editing one model, beside that model's tests alone,
             beside pytest over all models
  cache      a fresh clone at another path with a warm remote cache (tools/cache_server), beside a
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
import collections
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]
ROWS = ("affected", "cache", "overhead", "promote", "swap", "training")
TRAINING_REPS = 2
BAZEL_FLAGS = ["--disk_cache=", "--noshow_progress", "--color=no", "--curses=no"]
# Sandbox and runfiles settings, each as (the faster setting, Bazel's default). Row 3c runs the cold
# test once more with the other side of whichever .bazelrc sets: the faster settings where it lacks
# them (what they would buy), Bazel's defaults where it has them all (what they buy).
SANDBOX_SETTINGS = [
    ("--sandbox_base=/dev/shm", "--sandbox_base="),
    ("--experimental_sandbox_async_tree_delete_idle_threads=auto", "--experimental_sandbox_async_tree_delete_idle_threads=0"),
    ("--nobuild_runfile_links", "--build_runfile_links"),
]
DVC_PINS = ["dvc==3.67.1", "dvc-gs==3.1.0"]
SWAP_ARGS = ["--rate=200", "--duration=20", "--swap-at=8"]

TARGETS = {
    "affected": "≤ 1.3×",
    "cache": "100% hits, ≤ 0.10×",
    "overhead": "≤ 1.5×",
    "transfer": "≥ 0.9× raw",
    "repromote": "0 B, < 2 s",
    "swap": "0 failed",
    "training": "—",
}


# --------------------------------------------------------------------------------------------------
# Parsing Bazel's output (pure functions; tested in bench_test.py)


def parse_executed(log: str) -> tuple[int, int] | None:
    """'Executed 2 out of 6 tests: ...' -> (2, 6)."""
    m = re.search(r"^Executed (\d+) out of (\d+) tests?", log, re.MULTILINE)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_processes(log: str) -> dict[str, int]:
    """'INFO: 40 processes: 6 remote cache hit, 34 internal.' -> {'remote cache hit': 6, 'internal': 34}."""
    lines = re.findall(r"^INFO: \d+ process(?:es)?(?:: (.*?))?\.?$", log, re.MULTILINE)
    if not lines:
        return {}
    counts = {}
    for part in (lines[-1] or "").split(","):
        m = re.match(r"\s*(\d+) (.+?)\s*$", part)
        if m:
            counts[m.group(2)] = int(m.group(1))
    return counts


def test_results(log: str) -> list[tuple[str, bool, str]]:
    """Summary lines '//pkg:t   (cached) PASSED in 0.2s' -> [(label, cached, status)]."""
    out = []
    for m in re.finditer(r"^(//\S+)\s+(\(cached\) )?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|SKIPPED)", log, re.MULTILINE):
        out.append((m.group(1), bool(m.group(2)), m.group(3)))
    return out


def parse_swap(text: str) -> dict:
    """The numbers tests/serve/swap_load.py prints."""
    out: dict = {}
    m = re.search(r"promote returned -> first response from v2: ([\d.]+) s", text)
    out["rollout_s"] = float(m.group(1)) if m else None
    m = re.search(r"failed requests: (\d+)", text)
    out["failed"] = int(m.group(1)) if m else None
    m = re.search(r"returned after ([\d.]+) s", text)
    out["promote_s"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests to http", text)
    out["requests"] = int(m.group(1)) if m else None
    for phase in ("before", "during", "after", "all"):
        m = re.search(rf"^\s+{phase}\s+(\d+)\s+(\d+)\s+([\d.na]+)\s+([\d.na]+)\s+([\d.na]+)", text, re.MULTILINE)
        if m:
            out[phase] = {
                "requests": int(m.group(1)),
                "failed": int(m.group(2)),
                "p50_ms": float(m.group(3)),
                "p99_ms": float(m.group(4)),
                "max_ms": float(m.group(5)),
            }
    m = re.search(r"server's rollout of v2 \((\w+)\): (.*)", text)
    out["rollout_steps"] = m.group(2).strip() if m else None
    return out


def profile_summary(path: Path) -> dict:
    """Where a `bazel ... --profile` run spent its time: phases, critical path, action kinds and,
    inside sandboxed spawns, sandbox set-up, the process itself and sandbox tear-down."""
    data = json.loads(Path(path).read_text())
    events = data["traceEvents"] if isinstance(data, dict) else data
    spans = [e for e in events if e.get("ph") == "X"]
    if not spans:
        return {}
    begin = min(e["ts"] for e in spans)
    end = max(e["ts"] + e.get("dur", 0) for e in spans)
    kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    spawn: dict[str, float] = collections.defaultdict(float)
    critical = []
    repository = []
    analysis = 0.0
    for e in spans:
        seconds = e.get("dur", 0) / 1e6
        name, cat = e.get("name", ""), e.get("cat")
        if cat == "action processing":
            kind = action_kind(name)
            kinds[kind][0] += 1
            kinds[kind][1] += seconds
        elif cat == "critical path component":
            critical.append((name, seconds))
        elif cat == "general information" and name in (
            "subprocess.run", "sandbox.createFileSystem", "sandbox.delete", "MerkleTree.build(ActionInput)",
            "AbstractSpawnStrategy.getInputMapping",
        ):  # fmt: skip
            spawn[name.split("(")[0]] += seconds
        elif cat in ("remote output download", "remote action cache check"):
            spawn[cat] += seconds
        elif cat == "general information" and name == "runAnalysisPhase":
            analysis += seconds
        elif cat == "Starlark repository function call" and name.startswith("//external:"):
            repository.append((name, seconds))
        elif cat == "Starlark repository function call" and name.startswith("local: "):
            repository.append((repository_command(name), seconds))
    markers = {e["name"]: (e["ts"] - begin) / 1e6 for e in events if e.get("ph") == "i" and "name" in e}
    return {
        "wall_s": (end - begin) / 1e6,
        # Phase boundaries, seconds from the start: start-up, loading and analysis, execution.
        "phases": {k: markers[k] for k in ("Load and analyze dependencies", "Build artifacts", "Complete build") if k in markers},
        "analysis_s": analysis,
        "critical_path": critical,
        "action_kinds": {k: {"count": n, "seconds": s} for k, (n, s) in sorted(kinds.items(), key=lambda kv: -kv[1][1])},
        "spawn": dict(spawn),
        "repository_rules": sorted(repository, key=lambda r: -r[1])[:6],
    }


def repository_command(name: str) -> str:
    """A repository rule's command as the profile names it (truncated by Bazel) -> what it is."""
    if " -m pi" in name:
        return "pip install of the lock"
    if " -S -m" in name:
        return "byte-compiling site-packages (compileall)"
    return name[len("local: "):].replace("/usr/share/bazel/process-wrapper ", "")[:60]


def profile_line(prof: dict) -> str:
    """One sentence of a profile summary, for the details."""
    kinds = ", ".join(f"{k} {v['count']}× {v['seconds']:.1f} s" for k, v in prof.get("action_kinds", {}).items() if v["seconds"] >= 0.5)
    spawn = prof.get("spawn", {})
    return (
        f"{prof.get('wall_s', 0):.1f} s profiled: analysis {prof.get('analysis_s', 0):.1f} s; action threads: {kinds or 'nothing over 0.5 s'}; "
        f"in sandboxes: processes {spawn.get('subprocess.run', 0):.1f} s, set-up {spawn.get('sandbox.createFileSystem', 0):.1f} s, "
        f"tear-down {spawn.get('sandbox.delete', 0):.1f} s"
    )


def action_kind(description: str) -> str:
    """'Exporting tiny_transformer (train, ...)' -> 'Exporting'; 'Creating runfiles tree ...' -> 'Creating runfiles tree'."""
    for prefix in ("Creating runfiles tree", "Creating source manifest", "Testing", "Exporting", "Gating"):
        if description.startswith(prefix):
            return prefix
    return "other"


# --------------------------------------------------------------------------------------------------
# Running things


LOAD_SAMPLES: list[float] = []  # the 1-minute load average at every step, for the report


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    LOAD_SAMPLES.append(os.getloadavg()[0])
    print(f"[bench {stamp}] {message}", flush=True)


def clean_env(**extra: str) -> dict:
    """The caller's environment without settings that would change what a row measures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELGATE_", "STORAGE_EMULATOR_HOST"))}
    env.update(extra)
    return env


@dataclass
class Run:
    wall_s: float
    log: str
    rc: int


def run(argv: list[str], cwd: Path, env: dict, log_path: Path, check: bool = True, timeout: float = 1200) -> Run:
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.run(argv, check=False, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - start
    text = log_path.read_text(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {cwd} exited {proc.returncode}; log {log_path}:\n{text[-3000:]}")
    return Run(wall, text, proc.returncode)


class Clone:
    """A git clone of this repository's HEAD with its own Bazel server and output base."""

    def __init__(self, path: Path, logs: Path):
        self.path = path
        self.logs = logs
        subprocess.run(["git", "clone", "-q", str(SRC), str(path)], check=True)
        self.used_bazel = False

    def bazel(self, name: str, *args: str, env: dict | None = None, check: bool = True) -> Run:
        self.used_bazel = True
        return run(["bazel", *args], self.path, env or clean_env(), self.logs / f"{name}.log", check=check)

    def edit(self, model: str, n: int) -> None:
        """The edit a developer makes: one more line in the model's source (its build hash moves)."""
        with open(self.path / "models" / model / "model.py", "a") as f:
            f.write(f"# benchmark edit {n}\n")

    def close(self) -> None:
        if self.used_bazel:
            for args in (["clean", "--expunge"], ["shutdown"]):
                subprocess.run(["bazel", *args], check=False, cwd=self.path, env=clean_env(), capture_output=True, timeout=300)
            self.used_bazel = False


def variant_flags(clone: Path) -> tuple[list[str], bool]:
    """Row 3c's flags and whether they are the faster settings (True) or Bazel's defaults (False)."""
    rc = (clone / ".bazelrc").read_text()
    missing = [fast for fast, _ in SANDBOX_SETTINGS if not re.search(rf"^build {re.escape(fast)}\s*$", rc, re.MULTILINE)]
    if missing:
        return missing, True
    return [default for _, default in SANDBOX_SETTINGS], False


def bazel_test_flags(profile: Path | None = None, extra: list[str] = ()) -> list[str]:
    flags = ["test", *BAZEL_FLAGS, *extra]
    if profile:
        flags.append(f"--profile={profile}")
    return flags


def runfiles_symlinks(clone: Path) -> tuple[int, int]:
    """(runfiles trees, symlinks in them) of a built clone, from the runfiles manifests."""
    trees = links = 0
    out = clone / "bazel-out"
    if not out.exists():
        return 0, 0
    for directory, dirs, files in os.walk(out.resolve()):
        dirs[:] = [x for x in dirs if not x.endswith(".runfiles")]  # the trees themselves: not walked
        for name in files:
            if name.endswith(".runfiles_manifest"):
                trees += 1
                with open(os.path.join(directory, name), "rb") as f:
                    links += sum(1 for _ in f)
    return trees, links


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return {
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "mem_gib": mem_gib,
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


def ensure_dvc(venv: Path) -> tuple[str | None, str]:
    """A throwaway venv with dvc and dvc-gs (not part of the lock: a peer tool, benchmark only)."""
    dvc = venv / "bin" / "dvc"
    if dvc.exists():
        return str(dvc), "reused"
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", *DVC_PINS], check=True, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(venv, ignore_errors=True)
        return None, "pip install dvc dvc-gs took over 5 minutes"
    except subprocess.CalledProcessError as e:
        shutil.rmtree(venv, ignore_errors=True)
        return None, f"pip install {' '.join(DVC_PINS)} failed: {(e.stderr or '').strip()[-300:]}"
    return str(dvc), f"installed in {time.perf_counter() - start:.0f} s"


def swap_bundles_dir() -> Path:
    """Swap-row release bundles are trained once per version of the code that shapes them."""
    tree = subprocess.run(
        ["git", "rev-parse", "HEAD:models/tiny_transformer", "HEAD:tools/modelgate", "HEAD:tests/serve"],
        cwd=SRC, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    key = "-".join(t[:10] for t in tree)
    return Path.home() / ".cache" / "modelgate" / "bench-swap-bundles" / key


# --------------------------------------------------------------------------------------------------
# The table


@dataclass
class Row:
    id: str
    what: str
    measured: str
    baseline: str
    ratio: str
    target: str = "—"
    verdict: str = "—"
    seconds: float = 0.0  # the row's largest absolute time, to find the slowest row
    name: str = ""  # a short name for the prose
    notes: list[str] = field(default_factory=list)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def mib_s(size: int, seconds: float) -> str:
    return f"{size / (1 << 20) / seconds:.0f} MiB/s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def render_table(rows: list[Row]) -> str:
    lines = [
        "| # | what | modelgate | baseline | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r.id} | {r.what} | {r.measured} | {r.baseline} | {r.ratio} | {r.target} | {r.verdict} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows: list[Row] = []
        self.details: list[str] = []
        self.data: dict = {}
        self.left_out: list[str] = []
        self.work = args.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.python = sys.executable  # the bench venv (tools/bench/run)
        self.clones: list[Clone] = []
        self.cache_dir = self.work / "http-cache"
        self.cache_url = None
        self.variant: tuple[list[str], bool] = ([], True)

    def detail(self, row: str, text: str) -> None:
        """A line under "Details", sorted by row."""
        self.details.append((row, text))

    # ---- setup and teardown

    def clone(self, name: str) -> Clone:
        c = Clone(self.work / name, self.logs)
        self.clones.append(c)
        return c

    def start_cache(self) -> str:
        out = subprocess.run(
            [str(SRC / "tools" / "cache_server"), "start", "--port=0", f"--dir={self.cache_dir}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        self.cache_url = out.stdout.strip().splitlines()[-1]
        return self.cache_url

    def close(self) -> None:
        if self.cache_url:
            subprocess.run([str(SRC / "tools" / "cache_server"), "stop", f"--dir={self.cache_dir}"], check=False, capture_output=True)
        for c in self.clones:
            c.close()

    # ---- rows 1-3: Bazel

    def bazel_rows(self, only: set[str]) -> None:
        model = self.args.model
        need_a = bool(only & {"affected", "cache"})
        need_b = bool(only & {"cache", "overhead"})
        cold_a = fetch_b = warm_b = cold_b = whatif = None
        if need_a:
            a = self.clone("a")
            log(f"clone A {a.path}: bazel fetch //models/...")
            fetch_a = a.bazel("a-fetch", "fetch", *BAZEL_FLAGS[1:], "//models/...")
            log(f"  fetched in {fetch_a.wall_s:.1f} s")
            env = clean_env()
            if "cache" in only:
                url = self.start_cache()
                env = clean_env(MODELGATE_REMOTE_CACHE=url, MODELGATE_REMOTE_CACHE_WRITE="1")
                log(f"tools/cache_server at {url}; clone A fills it (MODELGATE_REMOTE_CACHE_WRITE=1)")
            log("clone A: cold bazel test //models/... (no disk cache)")
            cold_a = a.bazel("a-cold", *bazel_test_flags(), "//models/...", env=env)
            log(f"  {cold_a.wall_s:.1f} s, {parse_processes(cold_a.log)}")
            if "affected" in only:
                # Same settings as the cold run (a changed option can discard Bazel's analysis cache):
                # A stays the CI clone that writes to the cache, as in a team's pipeline.
                a.edit(model, 1)
                log(f"clone A: edit models/{model}/model.py, bazel test //models/...")
                all_models = a.bazel("a-affected-all", *bazel_test_flags(), "//models/...", env=env)
                log(f"  {all_models.wall_s:.1f} s, executed {parse_executed(all_models.log)}")
                a.edit(model, 2)
                log(f"clone A: edit models/{model}/model.py again, bazel test //models/{model}/...")
                one_model = a.bazel("a-affected-one", *bazel_test_flags(), f"//models/{model}/...", env=env)
                log(f"  {one_model.wall_s:.1f} s, executed {parse_executed(one_model.log)}")
                self.data["affected"] = {"all": all_models, "one": one_model}
            a.close()  # one Bazel server at a time: A's goes before B's starts
        if need_b:
            b = self.clone("b")
            log(f"clone B {b.path} (another path): bazel fetch //models/... (profiled)")
            fetch_b = b.bazel("b-fetch", "fetch", *BAZEL_FLAGS[1:], f"--profile={self.work / 'profile-fetch.json'}", "//models/...")
            log(f"  fetched in {fetch_b.wall_s:.1f} s")
            if "cache" in only:
                log("clone B: bazel test //models/... reading the warm remote cache")
                warm_b = b.bazel(
                    "b-warm", *bazel_test_flags(self.work / "profile-warm.json"), "//models/...",
                    env=clean_env(MODELGATE_REMOTE_CACHE=self.cache_url),
                )  # fmt: skip
                log(f"  {warm_b.wall_s:.1f} s, {parse_processes(warm_b.log)}, executed {parse_executed(warm_b.log)}")
            b.bazel("b-clean", "clean")
            log("clone B: bazel clean; cold bazel test //models/... without any cache (profiled)")
            cold_b = b.bazel("b-cold", *bazel_test_flags(self.work / "profile-cold.json"), "//models/...")
            log(f"  {cold_b.wall_s:.1f} s, {parse_processes(cold_b.log)}")
            self.data["runfiles"] = runfiles_symlinks(b.path)
            self.variant = variant_flags(b.path)
            if "overhead" in only and not self.args.no_whatif:
                b.bazel("b-clean2", "clean")
                log(f"clone B: bazel clean; cold again with {' '.join(self.variant[0])} (profiled)")
                whatif = b.bazel(
                    "b-whatif", *bazel_test_flags(self.work / "profile-whatif.json", self.variant[0]), "//models/..."
                )
                log(f"  {whatif.wall_s:.1f} s")
            b.close()
        self.data.update(cold_a=cold_a, fetch_b=fetch_b, warm_b=warm_b, cold_b=cold_b, whatif=whatif)

    def pytest_all(self, clone: Path) -> Run:
        env = clean_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        log("pytest -m 'not gpu' models/ in the venv")
        r = run([self.python, "-m", "pytest", "-q", "-m", "not gpu", "models/"], clone, env, self.logs / "pytest-models.log")
        log(f"  {r.wall_s:.1f} s: {r.log.strip().splitlines()[-1]}")
        return r

    def plain_pipeline(self, clone: Path) -> dict:
        log("the same export, gate and test steps without Bazel (venv, 2 at a time)")
        out = self.work / "plain.json"
        r = run(
            [self.python, str(SRC / "tools" / "bench" / "plain_pipeline.py"), f"--out={self.work / 'plain-out'}",
             f"--jobs={os.cpu_count() or 2}", f"--json={out}"],
            clone, clean_env(), self.logs / "plain-pipeline.log",
        )  # fmt: skip
        log(f"  {r.wall_s:.1f} s")
        return json.loads(out.read_text())

    # ---- row 4: registry

    def promote_rows(self, clone: Path) -> None:
        dvc, why = (None, "skipped with --no-dvc") if self.args.no_dvc else ensure_dvc(Path.home() / ".cache" / "modelgate" / "bench-dvc-venv")
        self.data["dvc_setup"] = why
        out = self.work / "registry.json"
        argv = [self.python, str(SRC / "tools" / "bench" / "registry_bench.py"), f"--work={self.work / 'registry'}",
                f"--json={out}", f"--size-mib={self.args.size_mib}", f"--reps={self.args.reps}", "--profile"]  # fmt: skip
        if dvc:
            argv.append(f"--dvc={dvc}")
        log(f"promote/fetch of a {self.args.size_mib} MiB synthetic model (fake-gcs-server, local registry)")
        env = clean_env(PYTHONPATH=f"{clone}{os.pathsep}{clone / 'tools'}", PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run(argv, check=False, cwd=clone, env=env, text=True)
        if proc.returncode != 0:
            raise RuntimeError("registry_bench.py failed (see above)")
        self.data["registry"] = json.loads(out.read_text())

    # ---- row 5: swap

    def swap_rows(self, clone: Path) -> None:
        bundles = swap_bundles_dir()
        bundles.mkdir(parents=True, exist_ok=True)
        log(f"swap under load: tests/serve/swap_load.py {' '.join(SWAP_ARGS)} (bundles: {bundles})")
        env = clean_env(PYTHONPATH=f"{clone}{os.pathsep}{clone / 'tools'}", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        r = run(
            [self.python, "tests/serve/swap_load.py", *SWAP_ARGS, f"--bundles={bundles}", f"--work={self.work / 'swap'}"],
            clone, env, self.logs / "swap.log", check=False,
        )  # fmt: skip
        parsed = parse_swap(r.log)
        if parsed.get("failed") is None:
            raise RuntimeError(f"swap_load.py printed no result (exit {r.rc}):\n{r.log[-3000:]}")
        self.data["swap"] = parsed
        log(f"  rollout {parsed['rollout_s']} s, failed {parsed['failed']}")

    # ---- row 6: the cost of portable training numerics

    def training_rows(self, clone: Path) -> None:
        """Trains every model TRAINING_REPS times in each mode, alternating, in fresh processes
        (tests/portability/train_digest.py: the export's own training path), full steps."""
        models = sorted(p.parent.name for p in (clone / "models").glob("*/spec.py"))
        env = clean_env(PYTHONPATH=f"{clone}{os.pathsep}{clone / 'tools'}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                        PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")  # fmt: skip
        results: dict = {m: {"native": [], "portable": [], "digests": set()} for m in models}
        log(f"training {', '.join(models)}: portable numerics beside the CPU's own kernels, {TRAINING_REPS} runs each")
        for rep in range(TRAINING_REPS):
            for numerics in ("native", "portable"):
                r = run([self.python, "tests/portability/train_digest.py", f"--numerics={numerics}", *models],
                        clone, env, self.logs / f"training-{numerics}-{rep}.log")  # fmt: skip
                for line in r.log.splitlines():
                    if line.startswith("{"):
                        row = json.loads(line)
                        results[row["model"]][numerics].append(row["seconds"])
                        if numerics == "portable":
                            results[row["model"]]["digests"].add(row["digest"])
        self.data["training"] = results

    # ---- everything

    def run(self) -> None:
        only = self.args.only
        self.data["machine"] = machine()
        self.data["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SRC, capture_output=True, text=True, check=True).stdout.strip()
        self.data["started"] = datetime.datetime.now().astimezone()
        m = self.data["machine"]
        log(f"{m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.0f} GiB, load average {m['loadavg_start'][0]:.2f} at start")
        if m["loadavg_start"][0] > (m["nproc"] or 1):
            log("  the machine is busy: absolute times will be slow and noisy; the ratios are measured side by side")
        start = time.perf_counter()
        if only & {"affected", "cache", "overhead"}:
            self.bazel_rows(only)
        # The Python rows run the committed code of an unedited clone (B, or a fresh one).
        self.code_clone = self.work / "b" if (self.work / "b").is_dir() else self.clone("code").path
        if only & {"affected", "overhead"}:
            self.data["pytest"] = self.pytest_all(self.code_clone)
        if "overhead" in only:
            self.data["plain"] = self.plain_pipeline(self.code_clone)
        if "promote" in only:
            self.promote_rows(self.code_clone)
        if "swap" in only:
            self.swap_rows(self.code_clone)
        if "training" in only:
            self.training_rows(self.code_clone)
        self.data["total_s"] = time.perf_counter() - start
        self.data["loadavg_end"] = os.getloadavg()
        self.build_rows(only)
        self.static_details(only)

    def build_rows(self, only: set[str]) -> None:
        d = self.data
        model = self.args.model
        if "affected" in only:
            all_models, one_model = d["affected"]["all"], d["affected"]["one"]
            ea, eo = parse_executed(all_models.log), parse_executed(one_model.log)
            ratio = all_models.wall_s / one_model.wall_s
            self.rows.append(Row(
                "1", f"Affected-only: `bazel test //models/...` after editing `models/{model}/model.py`",
                f"{fmt_s(all_models.wall_s)}; executed {ea[0]} of {ea[1]} tests",
                f"`bazel test //models/{model}/...` after the same kind of edit: {fmt_s(one_model.wall_s)}; executed {eo[0]} of {eo[1]}",
                f"{ratio:.2f}×", TARGETS["affected"], verdict(ratio <= 1.3), all_models.wall_s,
                name="affected-only `bazel test //models/...`",
            ))  # fmt: skip
            p = d["pytest"]
            self.rows.append(Row(
                "1b", "… the same affected-only run beside `pytest models/` (all models' model tests, one venv process)",
                fmt_s(all_models.wall_s), f"{fmt_s(p.wall_s)} ({p.log.strip().splitlines()[-1].strip('= ')})",
                f"{all_models.wall_s / p.wall_s:.1f}×", "—", "info", all_models.wall_s, name="affected-only run beside pytest",
            ))  # fmt: skip
        if "cache" in only:
            warm, cold, fetch = d["warm_b"], d["cold_b"], d["fetch_b"]
            procs = parse_processes(warm.log)
            tests = test_results(warm.log)
            cached = sum(1 for _, c, s in tests if c and s == "PASSED")
            executed = parse_executed(warm.log)
            hits = procs.get("remote cache hit", 0)
            ran_here = sum(n for k, n in procs.items() if k not in ("internal", "remote cache hit", "remote"))
            all_hit = bool(tests) and cached == len(tests) and executed is not None and executed[0] == 0 and ran_here == 0
            share = cached / len(tests) if tests else 0.0
            ratio = warm.wall_s / cold.wall_s
            self.rows.append(Row(
                "2", "Shared cache: fresh clone at another path, warm remote cache, `bazel test //models/...` (deps fetched)",
                f"{fmt_s(warm.wall_s)}; {cached}/{len(tests)} tests cached ({share:.0%}), {hits} remote cache hits, {ran_here} actions run",
                f"same clone, cold, no cache: {fmt_s(cold.wall_s)}",
                f"{ratio:.3f}×", TARGETS["cache"], verdict(all_hit and ratio <= 0.10), cold.wall_s,
                name="cold run of the shared-cache row",
            ))  # fmt: skip
            ratio_f = (fetch.wall_s + warm.wall_s) / (fetch.wall_s + cold.wall_s)
            self.rows.append(Row(
                "2b", "… the same, including `bazel fetch` (pip repository: install + byte-compile)",
                f"{fmt_s(fetch.wall_s + warm.wall_s)} ({fmt_s(fetch.wall_s)} fetch + {fmt_s(warm.wall_s)})",
                f"{fmt_s(fetch.wall_s + cold.wall_s)} ({fmt_s(fetch.wall_s)} fetch + {fmt_s(cold.wall_s)})",
                f"{ratio_f:.2f}×", TARGETS["cache"], verdict(all_hit and ratio_f <= 0.10), fetch.wall_s + cold.wall_s,
                name="a fresh clone's cold `bazel fetch` + `bazel test //models/...`",
            ))  # fmt: skip
            warm_profile = self.work / "profile-warm.json"
            if warm_profile.exists():
                self.detail("2w", self.warm_detail(profile_summary(warm_profile), warm, cold.wall_s))
            if d.get("cold_a"):
                self.detail("2a",
                    f"- Row 2: clone A's cold run, which also uploaded every result to the cache "
                    f"(`MODELGATE_REMOTE_CACHE_WRITE=1`), took {fmt_s(d['cold_a'].wall_s)}; clone B read it with "
                    f"`MODELGATE_REMOTE_CACHE` (tools/bazel adds `--config=remote-cache`). B's processes: {procs}."
                )  # fmt: skip
        if "overhead" in only:
            cold, p, plain = d["cold_b"], d["pytest"], d["plain"]
            ratio = cold.wall_s / p.wall_s
            tests = test_results(cold.log)
            self.rows.append(Row(
                "3", "Bazel overhead: cold `bazel test //models/...` (deps fetched, no cache) beside `pytest models/`",
                f"{fmt_s(cold.wall_s)}: {len(tests)} tests + {len(tests) // 2} exports + {len(tests) // 2} gates",
                f"`pytest models/` in one venv: {fmt_s(p.wall_s)} (model tests only)",
                f"{ratio:.1f}×", TARGETS["overhead"], verdict(ratio <= 1.5), cold.wall_s,
                name="cold `bazel test //models/...`",
            ))  # fmt: skip
            self.rows.append(Row(
                "3b", "… beside the same export, gate, golden-test and model-test processes without Bazel (venv, 2 at a time)",
                fmt_s(cold.wall_s), f"{fmt_s(plain['wall_s'])} ({len(plain['steps'])} processes)",
                f"{cold.wall_s / plain['wall_s']:.2f}×", "—", "info", cold.wall_s, name="cold `bazel test //models/...`",
            ))  # fmt: skip
            if d.get("whatif"):
                w = d["whatif"]
                flags, faster = self.variant
                label = ", ".join(f"`{f}`" for f in flags)
                self.rows.append(Row(
                    "3c", f"… cold `bazel test //models/...` with {label} added "
                    + ("(what-if: settings `.bazelrc` lacks)" if faster else "(Bazel's defaults for the sandbox and runfiles settings `.bazelrc` sets)"),
                    fmt_s(w.wall_s), f"cold with `.bazelrc` as is: {fmt_s(cold.wall_s)}",
                    f"{w.wall_s / cold.wall_s:.2f}×", "—", "what-if", w.wall_s, name="cold run, sandbox settings flipped",
                ))  # fmt: skip
        if "promote" in only:
            self.registry_rows(d["registry"])
        if "swap" in only:
            s = d["swap"]
            during, before = s.get("during") or {}, s.get("before") or {}
            ratio = during.get("p99_ms", float("nan")) / before.get("p99_ms", float("nan")) if before else float("nan")
            self.rows.append(Row(
                "5", "Serving swap under load (tiny_transformer, 200 req/s open loop, 20 s; promote at 8 s, notified)",
                f"promote's return → first answer from the new build: {fmt_s(s['rollout_s'])}; "
                f"failed {s['failed']} of {s['requests']}; p99 during the swap {during.get('p99_ms', float('nan')):.1f} ms",
                f"p99 before the promote: {before.get('p99_ms', float('nan')):.1f} ms",
                f"p99 {ratio:.2f}×", TARGETS["swap"], verdict(s["failed"] == 0), s["rollout_s"] + (s.get("promote_s") or 0),
                name="serving swap",
            ))  # fmt: skip
            self.detail("5",
                f"- Row 5: promote itself took {fmt_s(s.get('promote_s') or 0)} (a separate process); the server's rollout "
                f"steps: {s.get('rollout_steps')}; p99 after the swap {(s.get('after') or {}).get('p99_ms', float('nan')):.1f} ms. "
                "Client and server share the machine's CPUs."
            )  # fmt: skip

        if "training" in only:
            for index, (model, r) in enumerate(sorted(self.data["training"].items())):
                portable_s, native_s = min(r["portable"]), min(r["native"])
                self.rows.append(Row(
                    f"6{'abcdefgh'[index]}", f"Training `{model}` in the portable numerics mode (every export), best of {TRAINING_REPS}",
                    f"{fmt_s(portable_s)}; {len(r['digests'])} weight digest(s) over {len(r['portable'])} runs",
                    f"the CPU's own kernels: {fmt_s(native_s)}", f"{portable_s / native_s:.2f}×", TARGETS["training"],
                    "cost" if len(r["digests"]) == 1 else "**NOT REPRODUCIBLE**", portable_s, name=f"training {model}",
                ))  # fmt: skip
            self.detail("6", (
                "- Rows 6: training only (no ONNX export, no evaluation), in fresh processes through "
                "`tests/portability/train_digest.py`, the export's own path (`modelgate.portable.train`); the portable mode "
                "is MKL's compatible branch, ATen's default kernels, oneDNN off and a correctly rounded sqrt (README, "
                "\"Portable training\")."
            ))

    def warm_detail(self, prof: dict, warm: Run, cold_s: float) -> str:
        """Where a fully cached run's seconds go: none of them in running tests."""
        phases, spawn, kinds = prof.get("phases", {}), prof.get("spawn", {}), prof.get("action_kinds", {})
        analysis_start = phases.get("Load and analyze dependencies", 0.0)
        build = phases.get("Build artifacts", analysis_start)
        done = phases.get("Complete build", prof.get("wall_s", 0.0))
        configured = re.search(r"(\d+) targets configured", warm.log)
        manifests = kinds.get("Creating source manifest", {"count": 0, "seconds": 0.0})
        keys = spawn.get("AbstractSpawnStrategy.getInputMapping", 0.0) + spawn.get("MerkleTree.build", 0.0)
        return (
            f"- Row 2, where the warm run's {fmt_s(warm.wall_s)} go (`--profile`; nothing ran): start-up "
            f"{analysis_start:.1f} s; loading and analysis {build - analysis_start:.1f} s"
            + (f" ({int(configured.group(1)):,} configured targets)" if configured else "")
            + f"; execution {done - build:.1f} s, in which the action threads spent {manifests['seconds']:.1f} s writing "
            f"{manifests['count']} runfiles manifests, {keys:.1f} s mapping each action's inputs and building its Merkle "
            f"tree to compute the remote cache key, {spawn.get('remote action cache check', 0.0):.1f} s asking the cache "
            f"and {spawn.get('remote output download', 0.0):.1f} s downloading. Each of those scales with the ~24k input "
            "files per test or tool, so a cached test costs what its inputs cost to list: fewer, larger inputs (site-"
            "packages as a few archives) would cut it, as would Bazel 5+'s `--experimental_remote_merkle_tree_cache` "
            f"(not in 4.2.3). Against a cold run of {fmt_s(cold_s)}, these fixed seconds decide the ratio."
        )

    def registry_rows(self, r: dict) -> None:
        size, b = r["size_bytes"], r["best"]
        gib = f"{size / (1 << 30):.2f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MiB"
        reps = f"best of {r['reps']}"

        def transfer(row_id: str, what: str, mine: str, raw: str, raw_label: str, extra: str = "") -> None:
            ratio = b[raw] / b[mine]
            self.rows.append(Row(
                row_id, what, f"{fmt_s(b[mine])} ({mib_s(size, b[mine])})",
                f"{raw_label}: {fmt_s(b[raw])} ({mib_s(size, b[raw])}){extra}",
                f"{ratio:.2f}× raw throughput", TARGETS["transfer"], verdict(ratio >= 0.9), b[mine],
                name=what.split(" (")[0],
            ))  # fmt: skip

        transfer("4a", f"Promote {gib} to fake-gcs-server (verify, sign, upload blobs, manifest, tag; {reps})",
                 "promote", "raw_upload", "`blob.upload_from_filename`, same server and client settings")  # fmt: skip
        transfer("4b", f"Promote {gib} to the local registry (`file://`)", "local_promote", "copy", "`shutil.copyfile`",
                 f"; with fsync {fmt_s(b['copy_fsync'])}")  # fmt: skip
        for row_id, key, where in (("4c", "repromote", "fake-gcs-server"), ("4d", "local_repromote", "local registry")):
            uploaded = max(r["repromote_bytes"]["gcs" if key == "repromote" else "local"])
            first = b["promote" if key == "repromote" else "local_promote"]
            self.rows.append(Row(
                row_id, f"Re-promote of the unchanged build ({where})", f"{fmt_s(b[key])}, {uploaded} bytes uploaded",
                f"first promote: {fmt_s(first)}", f"{b[key] / first:.3f}×", TARGETS["repromote"],
                verdict(uploaded == 0 and b[key] < 2.0), b[key], name=f"re-promote ({where})",
            ))  # fmt: skip
        transfer("4e", f"Fetch {gib} with verification (signature, sha256 and size of every file) from fake-gcs-server",
                 "fetch", "raw_download", "`blob.download_to_filename`")  # fmt: skip
        transfer("4f", "Fetch with verification from the local registry", "local_fetch", "local_copy_out",
                 "`shutil.copyfile` of the stored blobs")  # fmt: skip
        if r.get("dvc"):
            dvc = r["dvc"]["best"]
            self.rows.append(Row(
                "4g", f"Peer: `dvc push` of the same weights to the same fake-gcs-server (dvc {r['dvc']['version']}, dvc-gs)",
                f"{fmt_s(dvc)} ({mib_s(size, dvc)})", f"raw upload {fmt_s(b['raw_upload'])}; modelgate promote {fmt_s(b['promote'])}",
                f"{b['raw_upload'] / dvc:.2f}× raw throughput", "—", "peer", dvc, name="dvc push",
            ))  # fmt: skip
        else:
            self.left_out.append(f"`dvc push` (row 4g): {self.data.get('dvc_setup')}")
        self.detail("4",
            f"- Row 4: one sha256 pass over the {gib} of weights (page-cached) takes {fmt_s(r['sha256_seconds'])}: promote "
            "hashes every file before uploading (`verify_files`), fetch hashes while it streams, and re-promote is "
            "that pass plus a few small reads. All samples (s): "
            + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in r["samples"].items())
            + "."
        )  # fmt: skip

    # ---- the report

    def slowest(self) -> Row:
        """The slowest measurement of modelgate itself (what-if and peer rows are comparisons)."""
        return max((r for r in self.rows if r.verdict not in ("what-if", "peer")), key=lambda r: r.seconds)

    def where_the_time_goes(self) -> str:
        d = self.data
        parts = []
        slow = self.slowest()
        parts.append(f"The slowest row is **{slow.id}** ({slow.name or slow.what}, {fmt_s(slow.seconds)}).")
        cold_profile = self.work / "profile-cold.json"
        if d.get("cold_b") and cold_profile.exists():
            parts.append(self.bazel_paragraph(profile_summary(cold_profile), d))
        if (d.get("registry") or {}).get("profile"):
            parts.append(self.promote_paragraph(d["registry"]))
        return "\n\n".join(parts)

    def bazel_paragraph(self, prof: dict, d: dict) -> str:
        kinds = prof["action_kinds"]
        thread_s = sum(k["seconds"] for k in kinds.values())
        spawn = prof["spawn"]
        runfiles = kinds.get("Creating runfiles tree", {"count": 0, "seconds": 0.0})
        create, delete = spawn.get("sandbox.createFileSystem", 0.0), spawn.get("sandbox.delete", 0.0)
        processes = spawn.get("subprocess.run", 0.0)
        trees, links = d.get("runfiles", (0, 0))
        crit = sum(sec for _, sec in prof["critical_path"])
        crit_top = max(prof["critical_path"], key=lambda c: c[1], default=("?", 0.0))
        spawns = sum(kinds.get(k, {"count": 0})["count"] for k in ("Exporting", "Gating", "Testing"))

        def share(x: float) -> str:
            return f"{x:.0f} s ({x / thread_s:.0%})" if thread_s else f"{x:.0f} s"

        text = (
            f"**Profile of the cold `bazel test //models/...` (`--profile`, {fmt_s(d['cold_b'].wall_s)} wall).** "
            f"Bazel's action threads were busy for {thread_s:.0f} s in all. The {spawns} processes themselves (training "
            f"in the exports, gates, tests; each imports torch) ran {share(processes)}. Setting up and deleting their "
            f"linux-sandboxes took {share(create + delete)} (set-up {create:.0f} s, deletion {delete:.0f} s): each "
            f"sandbox is a tree of one symlink per input file, and the {trees} runfiles manifests list {links:,} files, "
            f"~{links // max(trees, 1):,} per test or tool, nearly all of them the pinned site-packages (torch), file by file. "
        )
        if runfiles["seconds"] >= 1:
            text += f"Building runfiles symlink trees in the output tree took another {share(runfiles['seconds'])}. "
        text += (
            f"Analysis took {prof['analysis_s']:.1f} s. The critical path was {crit:.0f} s, led by {crit_top[0]} "
            f"({crit_top[1]:.0f} s): with {os.cpu_count()} CPUs and {spawns} heavy processes the run is throughput-bound, "
            "so every second spent on file trees is a second of wall time. "
        )
        fetch_profile = self.work / "profile-fetch.json"
        if d.get("fetch_b") and fetch_profile.exists():
            rules = profile_summary(fetch_profile).get("repository_rules", [])
            repos = [(n, sec) for n, sec in rules if n.startswith("//external:")]
            commands = [(n, sec) for n, sec in rules if not n.startswith("//external:")]
            if repos:
                text += (
                    f"The fetch in row 2b ({fmt_s(d['fetch_b'].wall_s)}, also profiled) is mostly the repository rule "
                    f"`{repos[0][0]}` ({repos[0][1]:.0f} s"
                    + (": " + ", ".join(f"{n} {sec:.0f} s" for n, sec in commands[:2]) if commands else "")
                    + "); a remote cache does not carry external repositories, so every fresh clone pays it once. "
                )
        if d.get("whatif"):
            w = d["whatif"]
            flags, faster = self.variant
            wprof_path = self.work / "profile-whatif.json"
            wprof = profile_summary(wprof_path) if wprof_path.exists() else {}
            wspawn = wprof.get("spawn", {})
            wcreate, wdelete = wspawn.get("sandbox.createFileSystem", 0.0), wspawn.get("sandbox.delete", 0.0)
            wtrees = wprof.get("action_kinds", {}).get("Creating runfiles tree", {"seconds": 0.0})["seconds"]
            label = " and ".join(f"`{f}`" for f in flags)
            pairs = [
                ("sandbox set-up", create, wcreate),
                ("sandbox deletion on the action threads", delete, wdelete),
                ("runfiles trees", runfiles["seconds"], wtrees),
            ]
            moved = ", ".join(f"{what} {a:.0f} s → {b:.0f} s" for what, a, b in pairs if max(a, b) >= 1)
            if faster:
                text += (
                    f"**What makes it faster, measured in this run (row 3c):** {label} took the same cold run from "
                    f"{fmt_s(d['cold_b'].wall_s)} to {fmt_s(w.wall_s)} ({w.wall_s / d['cold_b'].wall_s:.2f}×): {moved}. "
                    "None of them is part of an action's key, so cache hits are unaffected. Adding them to `.bazelrc` "
                    "is the first fix. "
                )
            else:
                text += (
                    f"**What `.bazelrc`'s sandbox settings buy, measured in this run (row 3c):** with Bazel's defaults "
                    f"({label}) the same cold run took {fmt_s(w.wall_s)}, {w.wall_s / d['cold_b'].wall_s:.1f}× as long "
                    f"({moved} with the defaults). "
                )
        text += (
            "**What would make it faster next:** fewer input files per sandbox (site-packages as a few archives or "
            "directory-level inputs, which must keep cache hits across clones), and one pytest process per model instead "
            "of one per test target (each pays the torch import). The floor is the work itself: the same processes "
            "without Bazel (row 3b). `pytest models/` (row 3) is not that floor: it does a fraction of the work (no "
            "export, gate or golden test), which is why row 3 misses by far more than Bazel's overhead. For the fetch: "
            "keep the installed, byte-compiled site-packages once per machine, keyed by the lock's hash, and hard-link "
            "it into each output base, so a fresh clone fetches in seconds."
        )
        return text

    def promote_paragraph(self, r: dict) -> str:
        secs = r.get("profile_seconds", {})
        b = r["best"]
        chunks = r.get("chunk_bytes", {})
        mine, default = chunks.get("modelgate", 0), chunks.get("client_default", 0)
        size = r["size_bytes"]

        def kinds(name: str) -> str:
            found = r["profile"].get(f"promote_{name}_kinds") or {}
            return ", ".join(f"{kind} {sec:.2f} s" for kind, sec in found.items() if sec >= 0.01)

        text = (
            "**Profile of promote (cProfile, one extra promote per backend, not among the timings; own time by kind "
            f"of work).** To fake-gcs-server, {fmt_s(secs.get('gcs', 0))}: {kinds('gcs')}. "
        )
        if mine and default and mine < default:
            text += (
                f"Modelgate uploads in {mine >> 20} MiB chunks (`UPLOAD_CHUNK` in `tools/modelgate/registry/storage.py`, "
                f"{-(-size // mine)} requests per blob) where `upload_from_filename` uses the client's default "
                f"{default >> 20} MiB ({-(-size // default)}), and fake-gcs-server's cost per chunk grows with the bytes "
                "already received: raise `UPLOAD_CHUNK` to the client default. "
            )
        else:
            text += (
                f"Uploads use the client's {default >> 20} MiB chunks, like `upload_from_filename`; what is left beyond "
                "the wait on the server is the sha256 check of every file before upload (`verify_files`) and signing. "
            )
        text += (
            f"To the local registry, {fmt_s(secs.get('local', 0))} beside a {fmt_s(b['copy'])} `copyfile` "
            f"({fmt_s(b['copy_fsync'])} with fsync): {kinds('local')}. Promote first hashes every file to check it "
            "against the manifest, then copies it and fsyncs it; `copyfile` does neither check nor fsync. Hashing "
            "while copying (one pass, the digest compared before the blob is linked into place) would remove the "
            "separate read, and the fsync is the price of a registry that survives a crash. Verified fetch pays the "
            f"same: a sha256 pass over the bytes ({fmt_s(r['sha256_seconds'])} for these {size / (1 << 30):.2f} GiB) and an fsync."
        )
        return text

    def report(self) -> str:
        d, m = self.data, self.data["machine"]
        started = d["started"].strftime("%Y-%m-%d %H:%M %Z")
        lines = [
            "# modelgate benchmarks",
            "",
            f"Produced by `tools/bench/run` on {started}, commit `{d['commit'][:12]}`, in {d['total_s'] / 60:.1f} minutes.",
            "",
            f"Machine: `{m['host']}`, {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.1f} GiB memory, Linux {m['kernel']}. "
            f"Load average at start {m['loadavg_start'][0]:.2f} / {m['loadavg_start'][1]:.2f} / {m['loadavg_start'][2]:.2f} "
            f"(1/5/15 min); the 1-minute load average ranged {min(LOAD_SAMPLES, default=0):.1f}–"
            f"{max(LOAD_SAMPLES, default=0):.1f} over the run's steps and was {d['loadavg_end'][0]:.2f} at the end"
            + (" — **the machine was shared and busy: absolute times are slow and noisy; each ratio compares runs made "
               "minutes apart in this one run.**" if m["loadavg_start"][0] > (m["nproc"] or 1) else "."),
            "",
            (
                "Every Bazel run is in a fresh clone of HEAD with `--disk_cache=` (the machine-wide disk cache off), so "
                "only what a row sets up is reused. Targets come from the adoption checklist; a row that misses says so."
            ),
            "",
            render_table(self.rows),
            "",
            "## Details",
            "",
            *[text for _, text in sorted(self.details)],
            "",
            "## Where the time goes",
            "",
            self.where_the_time_goes(),
            "",
        ]
        if self.left_out:
            lines += ["## Left out", "", *[f"- {x}" for x in self.left_out], ""]
        lines += [
            "## Reproduce",
            "",
            "```sh",
            "tools/bench/run                      # everything, 10-20 minutes; writes BENCHMARKS.md",
            "tools/bench/run --only=promote,swap  # a subset: prints the table, writes nothing unless --out=FILE",
            "```",
            "",
        ]
        return "\n".join(lines)

    def static_details(self, only: set[str]) -> None:
        if "affected" in only:
            results = test_results(self.data["affected"]["all"].log)
            ran = [label for label, cached, _ in results if not cached]
            cached = [label for label, c, _ in results if c]
            self.detail("1", (
                "- Row 1: the edit appends a comment line to the model's `model.py`, which moves its build hash, so its "
                "export, gate, golden test and model test re-run, correctly. In the `//models/...` run Bazel executed "
                f"{', '.join(f'`{x}`' for x in ran) or 'nothing'} and reported {len(cached)} other test(s) `(cached)`. "
                "Clone A keeps the cold run's settings (it writes to the remote cache, as CI does). `pytest models/` "
                "covers only the model-logic tests: no export, gate or golden test."
            ))
        if "overhead" in only:
            self.detail("3", (
                "- Row 3: `pytest models/` runs three files in one process; `bazel test //models/...` also trains and "
                "exports three models, gates three releases and runs three golden tests, each in its own sandboxed "
                "process. Row 3b runs those same processes without Bazel (`tools/bench/plain_pipeline.py`)."
            ))


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
    print(render_table(bench.rows))
    print()
    print(bench.where_the_time_goes())
    if out:
        out.write_text(report)
        log(f"wrote {out}")
    if created and not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    else:
        log(f"kept {args.work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
