"""tools/ci/ci.py: the golden file of every CI job's command lines, what the plans promise, the
runner that executes them, and its helpers."""

import difflib
import subprocess
from pathlib import Path

import pytest
from ci_module import load_ci

ci = load_ci()

GOLDEN_ENV = dict(ci.GOLDEN_ENV)


def lines(event, job, **env):
    return ci.plan(event, job, ci.Inputs.from_env({**GOLDEN_ENV, **env})).lines()


def commands(event, job, **env):
    return [line for line in lines(event, job, **env) if not line.startswith("#")]


def test_golden_file_holds_the_exact_commands():
    want = ci.golden_text()
    have = ci.GOLDEN.read_text()
    diff = "".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True), "golden_commands.txt", "the plans now"))
    assert have == want, f"tools/ci/golden_commands.txt is out of date: run `tools/ci/ci.py golden --update` and review the diff\n{diff}"


def test_every_job_is_in_the_golden_file():
    text = ci.GOLDEN.read_text()
    for event, job in ci.JOBS:
        assert f"\n## {event} {job}\n" in text


def test_pull_requests_read_the_team_cache_and_never_write_it():
    for job in ("test", "gpu"):
        bazel_lines = [c for c in commands("pull_request", job) if "bazel " in c or "test_affected.sh" in c]
        assert bazel_lines and all(c.startswith("MODELGATE_REMOTE_CACHE_WRITE=0 ") for c in bazel_lines), bazel_lines


def test_main_fills_the_team_cache():
    assert "MODELGATE_REMOTE_CACHE_WRITE=1 bazel test --config=ci //..." in commands("main", "test")
    assert any(c.startswith("MODELGATE_REMOTE_CACHE_WRITE=1 tools/ci/test_affected.sh ") and " --gpu " in c for c in commands("main", "gpu"))


def test_only_main_and_version_tags_promote():
    for event, job in ci.JOBS:
        promotes = [c for c in commands(event, job) if "//tools:promote" in c]
        if (event, job) == ("main", "promote"):
            assert [c.split("--tag=")[1].split()[0] for c in promotes] == ["canary"]
        elif (event, job) == ("release", "promote"):
            assert [c.split("--tag=")[1].split()[0] for c in promotes] == ["v0.1.0", "stable"]
        else:
            assert promotes == [], (event, job)


def test_promotion_demands_gpu_receipts_unless_the_team_has_no_gpu_runner():
    for event in ("main", "release"):
        for c in [c for c in commands(event, "promote") if "//tools:promote" in c]:
            assert "--require=gpu --bazel-flag=--config=gpu" in c
        for c in [c for c in commands(event, "promote", MODELGATE_REQUIRE_GPU="false") if "//tools:promote" in c]:
            assert "--require=gpu" not in c and "--config=gpu" not in c


def test_gpu_jobs_run_only_gpu_tagged_affected_tests():
    for event in ("pull_request", "main"):
        (line,) = [c for c in commands(event, "gpu") if "test_affected.sh" in c]
        assert " --gpu " in line


def test_a_release_candidate_does_not_move_stable():
    promotes = [c for c in commands("release", "promote", MODELGATE_CI_TAG="v1.0.0-rc.2") if "//tools:promote" in c]
    assert len(promotes) == 1 and "--tag=v1.0.0-rc.2 " in promotes[0]


@pytest.mark.parametrize("tag", ["1.0.0", "v1.0", "v01.2.3", "v1.2.3-rc1", "stable", "v1.2.3; rm -rf /"])
def test_a_tag_that_is_not_a_version_is_refused(tag):
    with pytest.raises(ci.CIError, match="is not a version"):
        ci.plan("release", "promote", ci.Inputs.from_env({**GOLDEN_ENV, "MODELGATE_CI_TAG": tag}))


def test_missing_inputs_are_one_line_errors():
    env = {k: v for k, v in GOLDEN_ENV.items() if k != "MODELGATE_REGISTRY"}
    with pytest.raises(ci.CIError, match=r"\$MODELGATE_REGISTRY is not set"):
        ci.plan("main", "promote", ci.Inputs.from_env(env))
    with pytest.raises(ci.CIError, match="no job 'deploy'"):
        ci.plan("main", "deploy", ci.Inputs.from_env(GOLDEN_ENV))
    with pytest.raises(ci.CIError, match="MODELGATE_REQUIRE_GPU='yes'"):
        ci.Inputs.from_env({"MODELGATE_REQUIRE_GPU": "yes"})


def test_secrets_never_reach_a_command_line():
    env = {**GOLDEN_ENV, "MODELGATE_SIGNING_KEY_PEM": "-----BEGIN PRIVATE KEY-----SECRETPEM", "MODELGATE_REMOTE_CACHE_TOKEN": "ya29.SECRETTOKEN"}
    for event, job in ci.JOBS:
        text = "\n".join(ci.plan(event, job, ci.Inputs.from_env(env)).lines())
        assert "SECRET" not in text


def test_reports_default_to_the_runner_temp_directory():
    assert ci.Inputs.from_env({"RUNNER_TEMP": "/t"}).reports == "/t/ci-reports"
    assert ci.Inputs.from_env({}).reports == "/tmp/modelgate-ci-reports"


def test_releases_of_the_models_an_affected_test_belongs_to():
    models = ["image_cnn", "minilm", "tiny_transformer"]
    tests = ["//models/image_cnn:model_test_cpu", "//models/minilm/sub:t", "//tests/serve:serve_test", "//models/gone:t"]
    assert ci.release_labels(tests, models) == ["//models/image_cnn:release", "//models/minilm:release"]
    assert ci.release_labels([], models) == []
    assert ci.release_labels(["//..."], models) == [f"//models/{m}:release" for m in models]


# --- the runner -----------------------------------------------------------------------------------

def test_runner_stops_after_a_failure_but_runs_the_always_commands(tmp_path):
    reports = tmp_path / "reports"
    plan = ci.Plan("main", "test", (
        ci.Command("first", ("sh", "-c", "echo one; exit 3")),
        ci.Command("second", ("sh", "-c", "touch second")),
        ci.Command("reports", ("sh", "-c", "touch reported"), always=True),
    ))  # fmt: skip
    rc = ci.run_plan(plan, ci.Inputs.from_env({"MODELGATE_CI_REPORTS": str(reports)}), root=tmp_path)
    assert rc == 1
    assert not (tmp_path / "second").exists() and (tmp_path / "reported").exists()
    assert (reports / "logs/01-first.log").read_text() == "$ sh -c 'echo one; exit 3'\none\n"
    assert [line.split("\t")[:2] for line in (reports / "timings.tsv").read_text().splitlines()] == [["first", "3"], ["reports", "0"]]


def test_runner_gives_the_key_as_a_private_file_and_the_cache_token_as_a_header_then_removes_both(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELGATE_SIGNING_KEY_PEM", "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----")
    monkeypatch.setenv("MODELGATE_REMOTE_CACHE_TOKEN", "tok123")
    monkeypatch.delenv("MODELGATE_SIGNING_KEY", raising=False)
    (tmp_path / "user.bazelrc").write_text("build --jobs=2\n")
    probe = 'stat -c %a "$MODELGATE_SIGNING_KEY" > mode; cp "$MODELGATE_SIGNING_KEY" key; cp user.bazelrc rc; echo "$MODELGATE_SIGNING_KEY" > path; env > env'
    plan = ci.Plan("main", "promote", (ci.Command("promote-canary", ("sh", "-c", probe)),))
    rc = ci.run_plan(plan, ci.Inputs.from_env({"MODELGATE_CI_REPORTS": str(tmp_path / "r")}), root=tmp_path)
    assert rc == 0
    assert (tmp_path / "mode").read_text().strip() == "600"
    assert (tmp_path / "key").read_text().startswith("-----BEGIN PRIVATE KEY-----\nabc")
    assert not Path((tmp_path / "path").read_text().strip()).exists()
    assert "build:remote-cache --remote_header=Authorization=Bearer tok123" in (tmp_path / "rc").read_text()
    assert (tmp_path / "user.bazelrc").read_text() == "build --jobs=2\n"
    # The commands see neither secret's variable, only the key's path.
    env = (tmp_path / "env").read_text()
    assert "MODELGATE_SIGNING_KEY_PEM" not in env and "tok123" not in env


def test_a_promote_without_a_signing_key_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELGATE_SIGNING_KEY_PEM", raising=False)
    monkeypatch.delenv("MODELGATE_SIGNING_KEY", raising=False)
    plan = ci.Plan("main", "promote", (ci.Command("promote-canary", ("sh", "-c", "touch ran")),))
    with pytest.raises(ci.CIError, match="no signing key"):
        ci.run_plan(plan, ci.Inputs.from_env({"MODELGATE_CI_REPORTS": str(tmp_path / "r")}), root=tmp_path)
    assert not (tmp_path / "ran").exists()


# --- helpers --------------------------------------------------------------------------------------

def test_collect_reports_copies_test_logs_report_pages_and_release_manifests(tmp_path):
    logs = tmp_path / "bazel-testlogs/models/a/model_test_cpu"
    logs.mkdir(parents=True)
    (logs / "test.xml").write_text("<xml/>")
    (logs / "test.log").write_text("log")
    (logs / "test.outputs").mkdir()
    (logs / "test.outputs/outputs.zip").write_text("a golden report")
    bundle = tmp_path / "bazel-bin/models/a/release"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    (bundle / "report.html").write_text("<html/>")
    (bundle / "weights.safetensors").write_text("big")
    failed = tmp_path / "modelgate-reports/b"
    failed.mkdir(parents=True)
    (failed / "gate-0123456789ab.html").write_text("<html/>")
    out = tmp_path / "out"
    copied = ci.collect_reports(
        out, ["//models/a:model_test_cpu", "//models/b:missing"], ["//models/a:release"], False, root=tmp_path,
        failed_gates=tmp_path / "modelgate-reports",
    )  # fmt: skip
    assert sorted(p.relative_to(out).as_posix() for p in copied) == [
        "failed-gates/b/gate-0123456789ab.html", "releases/models/a/manifest.json", "releases/models/a/report.html",
        "testlogs/models/a/model_test_cpu/test.log", "testlogs/models/a/model_test_cpu/test.outputs/outputs.zip",
        "testlogs/models/a/model_test_cpu/test.xml",
    ]  # fmt: skip


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=t@e", "-c", "user.name=t", *args], cwd=cwd, check=True, capture_output=True)


def test_a_version_tag_must_be_on_main(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "one")
    git(tmp_path, "tag", "v1.0.0")
    git(tmp_path, "checkout", "-q", "-b", "side")
    git(tmp_path, "commit", "-q", "--allow-empty", "-m", "two")
    git(tmp_path, "tag", "v1.1.0")
    assert len(ci.check_release_tag("v1.0.0", "main", root=tmp_path)) == 40
    with pytest.raises(ci.CIError, match=r"tag v1.1.0 \([0-9a-f]{12}\) is not on main"):
        ci.check_release_tag("v1.1.0", "main", root=tmp_path)
    with pytest.raises(ci.CIError, match="no tag v2.0.0"):
        ci.check_release_tag("v2.0.0", "main", root=tmp_path)
