"""The benchmark's rows: each one measured side by side in one run (see bench.py for what they are)."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from parse import parse_executed, parse_processes, parse_swap, profile_summary, test_results
from report import ReportProse, Row, fmt_s, mib_s, previous_ratios, verdict
from runner import (
    BAZEL_FLAGS,
    SRC,
    Clone,
    Run,
    bazel_test_flags,
    clean_env,
    ensure_dvc,
    log,
    machine,
    run,
    runfiles_symlinks,
    swap_bundles_dir,
    variant_flags,
)


ROWS = ("affected", "cache", "overhead", "promote", "swap", "training")
TRAINING_REPS = 2
SWAP_ARGS = ["--rate=200", "--duration=20", "--swap-at=8"]

TARGETS = {
    "affected": "≤ 1.3×",
    "cache": "100% hits, ≤ 0.10×",
    "cache_fetch": "100% hits, ≤ 0.15×",
    "fetch": "≤ 3 s",
    "noop": "≤ 1.0 s",
    "overhead": "≤ 1.5×",
    "plain": "≤ 1.05×",
    "transfer": "≥ 0.9× raw",
    "repromote": "0 B, < 2 s",
    "swap": "0 failed",
    "training": "—",
}


class Bench(ReportProse):
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
        self.models = len(list((SRC / "models").glob("*/spec.py")))
        earlier = SRC / "BENCHMARKS.md"
        self.previous = previous_ratios(earlier.read_text(encoding="utf-8")) if earlier.is_file() else None

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
            [str(SRC / "tools" / "dev" / "cache_server"), "start", "--port=0", f"--dir={self.cache_dir}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        self.cache_url = out.stdout.strip().splitlines()[-1]
        return self.cache_url

    def close(self) -> None:
        if self.cache_url:
            subprocess.run([str(SRC / "tools" / "dev" / "cache_server"), "stop", f"--dir={self.cache_dir}"], check=False, capture_output=True)
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
            # A is the machine that has never installed this lock: its own pip install, no store.
            log(f"clone A {a.path}: bazel fetch //models/... without the machine's pip store (MODELGATE_PIP_STORE=off)")
            fetch_a = a.bazel("a-fetch", "fetch", *BAZEL_FLAGS[1:], "//models/...", env=clean_env(MODELGATE_PIP_STORE="off"))
            log(f"  fetched in {fetch_a.wall_s:.1f} s")
            self.data["fetch_a"] = fetch_a
            env = clean_env(MODELGATE_PIP_STORE="off")
            if "cache" in only:
                url = self.start_cache()
                env = clean_env(MODELGATE_PIP_STORE="off", MODELGATE_REMOTE_CACHE=url, MODELGATE_REMOTE_CACHE_WRITE="1")
                log(f"tools/dev/cache_server at {url}; clone A fills it (MODELGATE_REMOTE_CACHE_WRITE=1)")
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
            log("clone B: the same bazel test //models/... again, unchanged tree, server running (no-op), twice")
            noop = [b.bazel(f"b-noop{i}", *bazel_test_flags(), "//models/...") for i in (1, 2)]
            log(f"  {noop[0].wall_s:.2f} s, {noop[1].wall_s:.2f} s")
            self.data["noop"] = noop
            self.data["runfiles"] = runfiles_symlinks(b.path)
            self.variant = variant_flags(b.path)
            if "overhead" in only and not self.args.no_whatif:
                b.bazel("b-clean2", "clean")
                log(f"clone B: bazel clean; cold again with {' '.join(self.variant[0])} (profiled)")
                whatif = b.bazel(
                    "b-whatif", *bazel_test_flags(self.work / "profile-whatif.json", self.variant[0]), "//models/..."
                )
                log(f"  {whatif.wall_s:.1f} s")
            if "overhead" in only:
                # Row 3b compares two runs of about a minute whose samples swing by 10-20% here:
                # each side is the best of two.
                b.bazel("b-clean3", "clean")
                log("clone B: bazel clean; cold bazel test //models/... again (row 3b's second sample)")
                self.data["cold_b2"] = b.bazel("b-cold2", *bazel_test_flags(), "//models/...")
                log(f"  {self.data['cold_b2'].wall_s:.1f} s")
            b.close()
        self.data.update(cold_a=cold_a, fetch_b=fetch_b, warm_b=warm_b, cold_b=cold_b, whatif=whatif)

    def pytest_all(self, clone: Path) -> Run:
        env = clean_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        log("pytest -m 'not gpu' models/ in the venv")
        r = run([self.python, "-m", "pytest", "-q", "-m", "not gpu", "models/"], clone, env, self.logs / "pytest-models.log")
        log(f"  {r.wall_s:.1f} s: {r.log.strip().splitlines()[-1]}")
        return r

    def plain_pipeline(self, clone: Path, i: int = 1) -> dict:
        log(f"the same export, gate and test steps without Bazel (venv, 2 at a time), run {i}")
        out = self.work / f"plain{i}.json"
        shutil.rmtree(self.work / "plain-out", ignore_errors=True)
        r = run(
            [self.python, str(SRC / "tools" / "bench" / "plain_pipeline.py"), f"--out={self.work / 'plain-out'}",
             f"--jobs={os.cpu_count() or 2}", f"--json={out}"],
            clone, clean_env(), self.logs / f"plain-pipeline{i}.log",
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
        # The models the build trains; a pinned checkpoint's (minilm) is trained outside the build.
        models = sorted(p.parent.name for p in (clone / "models").glob("*/spec.py") if not (p.parent / "checkpoint.json").exists())
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
            self.data["plain_runs"] = [self.plain_pipeline(self.code_clone, i) for i in (1, 2)]
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
            fetch_a = d.get("fetch_a")
            first = fetch_a if fetch_a is not None else fetch
            ratio_f = (fetch.wall_s + warm.wall_s) / (first.wall_s + cold.wall_s)
            self.rows.append(Row(
                "2b", "… the same, including `bazel fetch` (the pip store of this machine has the lock), beside a cold run "
                "on a machine that never installed it",
                f"{fmt_s(fetch.wall_s + warm.wall_s)} ({fmt_s(fetch.wall_s)} fetch + {fmt_s(warm.wall_s)})",
                f"{fmt_s(first.wall_s + cold.wall_s)} ({fmt_s(first.wall_s)} fetch + {fmt_s(cold.wall_s)})",
                f"{ratio_f:.3f}×", TARGETS["cache_fetch"], verdict(all_hit and ratio_f <= 0.15), first.wall_s + cold.wall_s,
                name="a fresh clone's cold `bazel fetch` + `bazel test //models/...`",
            ))  # fmt: skip
            if fetch_a is not None:
                self.rows.append(Row(
                    "2c", "`bazel fetch` in a fresh clone, on a machine that installed the same lock before (pip store)",
                    fmt_s(fetch.wall_s), f"the same fetch with `MODELGATE_PIP_STORE=off` (pip install + compileall): {fmt_s(fetch_a.wall_s)}",
                    f"{fetch.wall_s / fetch_a.wall_s:.3f}×", TARGETS["fetch"], verdict(fetch.wall_s <= 3.0), fetch_a.wall_s,
                    name="`bazel fetch` without the pip store",
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
            cold, p = d["cold_b"], d["pytest"]
            plain = min(d["plain_runs"], key=lambda r: r["wall_s"])
            ratio = cold.wall_s / p.wall_s
            tests = test_results(cold.log)
            self.rows.append(Row(
                "3", "Bazel overhead: cold `bazel test //models/...` (deps fetched, no cache) beside `pytest models/`",
                f"{fmt_s(cold.wall_s)}: {len(tests)} tests + {self.models} exports + {self.models} gates",
                f"`pytest models/` in one venv: {fmt_s(p.wall_s)} (model tests only)",
                f"{ratio:.1f}×", TARGETS["overhead"], verdict(ratio <= 1.5), cold.wall_s,
                name="cold `bazel test //models/...`",
            ))  # fmt: skip
            colds = [c.wall_s for c in (cold, d.get("cold_b2")) if c]
            plains = [r["wall_s"] for r in d["plain_runs"]]
            ratio_p = min(colds) / plain["wall_s"]
            self.rows.append(Row(
                "3b", "… beside the same checkpoint, export, gate, golden-test and model-test processes without Bazel "
                f"(venv, 2 at a time; best of {len(colds)} and of {len(plains)})",
                f"{fmt_s(min(colds))} (runs: {', '.join(fmt_s(x) for x in colds)})",
                f"{fmt_s(plain['wall_s'])} ({len(plain['steps'])} processes; runs: {', '.join(fmt_s(x) for x in plains)})",
                f"{ratio_p:.2f}×", TARGETS["plain"], verdict(ratio_p <= 1.05), min(colds), name="cold `bazel test //models/...`",
            ))  # fmt: skip
            noop = d.get("noop")
            if noop:
                self.rows.append(Row(
                    "3d", "No-op: `bazel test //models/...` again on the unchanged tree, Bazel server running",
                    f"{fmt_s(noop[1].wall_s)} (the first repeat: {fmt_s(noop[0].wall_s)})", f"the cold run: {fmt_s(cold.wall_s)}",
                    f"{noop[1].wall_s / cold.wall_s:.3f}×", TARGETS["noop"], verdict(noop[1].wall_s <= 1.0), noop[1].wall_s,
                    name="no-op `bazel test //models/...`",
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
            f"and {spawn.get('remote output download', 0.0):.1f} s downloading. Each of those scales with the input "
            "files of each test or tool, which are now the workspace's files and one lock entry per pip package (the "
            "previous layout had ~24k installed files per test); against a cold run of "
            f"{fmt_s(cold_s)}, these fixed seconds decide the ratio."
        )

    def registry_rows(self, r: dict) -> None:
        size, b = r["size_bytes"], r["best"]
        gib = f"{size / (1 << 30):.2f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MiB"
        reps = f"best of {r['reps']}"
        local_reps = f"best of {r.get('local_reps', r['reps'])}, each side"

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
        transfer("4b", f"Promote {gib} to the local registry (`file://`; {local_reps})", "local_promote", "copy_fsync",
                 "`shutil.copyfile` + fsync (every blob is made durable)", f"; without fsync {fmt_s(b['copy'])}")  # fmt: skip
        for row_id, key, where in (("4c", "repromote", "fake-gcs-server"), ("4d", "local_repromote", "local registry")):
            uploaded = max(r["repromote_bytes"]["gcs" if key == "repromote" else "local"])
            first = b["promote" if key == "repromote" else "local_promote"]
            self.rows.append(Row(
                row_id, f"Re-promote of the unchanged build ({where})", f"{fmt_s(b[key])}, {uploaded} bytes uploaded",
                f"first promote: {fmt_s(first)}", f"{b[key] / first:.3f}×", TARGETS["repromote"],
                verdict(uploaded == 0 and b[key] < 2.0), b[key], name=f"re-promote ({where})",
            ))  # fmt: skip
        transfer("4e", f"Fetch {gib} with verification (signature, blake3 and size of every file) from fake-gcs-server",
                 "fetch", "raw_download", "`blob.download_to_filename`")  # fmt: skip
        transfer("4f", f"Fetch with verification from the local registry ({local_reps})", "local_fetch", "local_copy_out",
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
            f"- Row 4: one blake3 pass over the {gib} of weights (page-cached, one thread) takes "
            f"{fmt_s(r.get('blake3_seconds', float('nan')))}, one sha256 pass {fmt_s(r['sha256_seconds'])}: promote "
            "hashes every file by its blake3 (before uploading to GCS, `verify_files`; while copying into a local "
            "registry), fetch hashes while it streams, and re-promote is that pass plus a few small reads. Each "
            "timed operation starts after sync(2) (untimed). All samples (s): "
            + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in r["samples"].items())
            + "."
        )  # fmt: skip

    # ---- the report

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
                f"- Row 3: `pytest models/` runs the model test files in one process; `bazel test //models/...` also "
                f"fetches the pinned checkpoint, trains or loads and exports {self.models} models, gates {self.models} "
                f"releases and runs {self.models} golden tests, each in its own sandboxed "
                "process. Row 3b runs those same processes without Bazel (`tools/bench/plain_pipeline.py`)."
            ))
