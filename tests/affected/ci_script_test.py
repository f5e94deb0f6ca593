"""tools/ci/test_affected.sh against a fake `bazel` that answers `run //tools:affected` with
canned labels and records every call: which tests CI runs, with which flags and environment."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("TEST_SRCDIR", "")) / os.environ.get("TEST_WORKSPACE", "")
if not (ROOT / "tools/ci/test_affected.sh").is_file():
    ROOT = Path(__file__).resolve().parents[2]

FAKE_BAZEL = """#!/usr/bin/env bash
echo "$* | TORCH=${MODELGATE_TORCH:-} WRITE=${MODELGATE_REMOTE_CACHE_WRITE:-}" >>"$CALLS"
if [[ "$1" == run ]]; then
  [[ -n "${AFFECTED_FAILS:-}" ]] && exit 1
  printf '%s' "$AFFECTED_OUT"
fi
exit "${TEST_EXIT:-0}"
"""


@pytest.fixture
def ci(tmp_path):
    repo = tmp_path / "repo"
    (repo / "tools/ci").mkdir(parents=True)
    shutil.copy(ROOT / "tools/ci/test_affected.sh", repo / "tools/ci/test_affected.sh")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bazel").write_text(FAKE_BAZEL)
    (bindir / "bazel").chmod(0o755)
    calls = tmp_path / "calls"

    def run(*args, affected="", **env):
        environ = {"PATH": f"{bindir}:/usr/bin:/bin", "CALLS": str(calls), "AFFECTED_OUT": affected, **env}
        proc = subprocess.run(
            ["bash", str(repo / "tools/ci/test_affected.sh"), *args],
            env=environ,
            capture_output=True,
            text=True,
            check=False,
        )
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return proc, lines

    return run


def test_runs_exactly_the_affected_cpu_tests(ci):
    proc, calls = ci("origin/main", affected="//models/a:model_test_cpu\n//models/a:golden_test_cpu\n")
    assert proc.returncode == 0
    assert calls == [
        "run --config=ci //tools:affected -- --base=origin/main --tags=-gpu | TORCH= WRITE=",
        "test --config=ci -- //models/a:model_test_cpu //models/a:golden_test_cpu | TORCH= WRITE=",
    ]
    assert "ci: testing 2 affected target(s) (tags -gpu)" in proc.stdout


def test_nothing_affected_runs_nothing_and_says_so(ci):
    proc, calls = ci("origin/main", affected="")
    assert proc.returncode == 0 and len(calls) == 1
    assert proc.stdout == "ci: no test is affected by the change since origin/main (tags -gpu); nothing to run\n"


def test_gpu_runner_selects_gpu_tests_on_the_cuda_packages(ci):
    proc, calls = ci("HEAD~1", "--gpu", affected="//models/a:model_test_gpu\n")
    assert proc.returncode == 0
    assert calls == [
        "run --config=ci --config=gpu //tools:affected -- --base=HEAD~1 --tags=gpu | TORCH=cuda WRITE=",
        "test --config=ci --config=gpu -- //models/a:model_test_gpu | TORCH=cuda WRITE=",
    ]


def test_ci_fills_the_remote_cache_and_passes_extra_flags(ci):
    _, calls = ci("main", "--", "--jobs=4", affected="//t:x\n", MODELGATE_REMOTE_CACHE="http://cache:8981")
    assert calls[1] == "test --config=ci --jobs=4 -- //t:x | TORCH= WRITE=1"


def test_a_failing_affected_tests_everything_and_the_test_exit_code_is_kept(ci):
    proc, calls = ci("main", AFFECTED_FAILS="1", TEST_EXIT="3")
    assert calls[1] == "test --config=ci -- //... | TORCH= WRITE="
    assert "ci: //tools:affected did not run; testing everything" in proc.stderr
    assert proc.returncode == 3


def test_usage(ci):
    proc, calls = ci()
    assert proc.returncode == 2 and "usage: tools/ci/test_affected.sh BASE" in proc.stderr and calls == []


def test_targets_out_keeps_the_labels_it_tested(ci, tmp_path):
    out = tmp_path / "reports/affected.txt"
    proc, _ = ci("origin/main", f"--targets-out={out}", affected="//models/a:model_test_cpu\n")
    assert proc.returncode == 0 and out.read_text() == "//models/a:model_test_cpu\n"
    proc, _ = ci("origin/main", f"--targets-out={out}", AFFECTED_FAILS="1")
    assert out.read_text() == "//...\n"
    ci("origin/main", f"--targets-out={out}", affected="")
    assert out.read_text() == ""
