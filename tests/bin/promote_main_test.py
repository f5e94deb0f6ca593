"""`bazel run //tools:promote` builds (and so gates) only the releases it promotes, against a fake
`bazel` that records every call: a model that is not asked for is not built."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("TEST_SRCDIR", "")) / os.environ.get("TEST_WORKSPACE", "")
if not (ROOT / "tools/bin/promote_main.py").is_file():
    ROOT = Path(__file__).resolve().parents[2]

FAKE_BAZEL = """#!/usr/bin/env bash
echo "$*" >>"$CALLS"
case "$1" in
  query) printf '//models/image_cnn:release\\n//models/tiny_transformer:release\\n' ;;
  build) exit "${BUILD_EXIT:-0}" ;;
  info) echo "$FAKE_BIN" ;;
esac
"""


@pytest.fixture
def promote(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bazel").write_text(FAKE_BAZEL)
    (bindir / "bazel").chmod(0o755)
    calls = tmp_path / "calls"

    def run(*args, workspace=True, **env):
        environ = {
            "PATH": f"{bindir}:/usr/bin:/bin",
            "CALLS": str(calls),
            "FAKE_BIN": str(tmp_path / "bazel-bin"),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            **({"BUILD_WORKSPACE_DIRECTORY": str(tmp_path)} if workspace else {}),
            **env,
        }
        proc = subprocess.run([sys.executable, str(ROOT / "tools/bin/promote_main.py"), *args], env=environ,
                              capture_output=True, text=True, check=False)  # fmt: skip
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return proc, lines

    return run


QUERY = 'query --output=label kind("_model_release", deps(//models:releases, 1))'


def test_model_flag_builds_only_that_models_release(promote, tmp_path):
    proc, calls = promote("--tag=canary", "--model=tiny_transformer", f"--registry=file://{tmp_path}/registry")
    assert calls == [QUERY, "build -- //models/tiny_transformer:release", "info bazel-bin"]
    # The bundle that build would have made is what promote is handed (here it does not exist).
    assert f"release bundle {tmp_path}/bazel-bin/models/tiny_transformer/release is not a directory" in proc.stderr
    assert proc.returncode != 0


def test_without_model_flags_every_release_is_built_and_bazel_flags_reach_the_build(promote, tmp_path):
    _, calls = promote("--tag=canary", "--bazel-flag=--config=gpu", "--model", "image_cnn", f"--registry=file://{tmp_path}/r")
    assert calls[1:] == ["build --config=gpu -- //models/image_cnn:release", "info --config=gpu bazel-bin"]
    _, calls = promote("--tag=canary", f"--registry=file://{tmp_path}/r")
    assert calls[1] == "build -- //models/image_cnn:release //models/tiny_transformer:release"


def test_a_failed_gate_promotes_nothing_in_one_line(promote, tmp_path):
    proc, calls = promote("--tag=canary", "--model=image_cnn", f"--registry=file://{tmp_path}/registry", BUILD_EXIT="1")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "promote: not every release of image_cnn built (a failed gate or a build error, above); nothing was promoted"
    )
    assert calls == [QUERY, "build -- //models/image_cnn:release"]
    assert not (tmp_path / "registry").exists()


def test_unknown_model_and_missing_workspace_are_one_line_errors(promote):
    proc, calls = promote("--tag=canary", "--model=resnet")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "promote: no release for model 'resnet' in //models:releases; models with a release: image_cnn, tiny_transformer"
    )
    assert calls == [QUERY]
    proc, calls = promote("--tag=canary", workspace=False)
    assert (proc.returncode, proc.stderr.strip(), calls) == (2, "promote: run me with: bazel run //tools:promote -- --tag=TAG", [])
