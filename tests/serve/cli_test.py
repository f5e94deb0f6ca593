"""serve's command line: a user's mistake is one line on stderr and a non-zero exit, before listening."""

from __future__ import annotations

import fcntl

import pytest

from modelgate.cli import serve


@pytest.fixture(autouse=True)
def workspace(monkeypatch, tmp_path, keys):
    for name in ("MODELGATE_REGISTRY", "MODELGATE_PUBLIC_KEY", "BUILD_WORKING_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(tmp_path))
    return tmp_path


class _StillRunning(Exception):
    pass


def _too_long(signum, frame):
    raise _StillRunning("serve did not refuse its command line: it started serving")


def one_line_error(capsys, rc_expected: int, *argv) -> str:
    import signal

    previous = signal.signal(signal.SIGALRM, _too_long)
    signal.alarm(60)  # a refusal is immediate; a serve that starts instead fails the test here
    try:
        rc = serve.main([str(a) for a in argv])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    assert rc == rc_expected, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_invalid_model_name(capsys, keys):
    # The service knows models from the registry's builds, not from a checkout: a name the registry
    # does not hold yet is served once promoted (readiness says so until then); a malformed one is refused.
    line = one_line_error(capsys, 2, "--model=../no_such_model", "--tag=stable", f"--public-key={keys['signer_public']}")
    assert line.startswith("serve: invalid model name '../no_such_model'")


def test_torch_runtime_needs_the_model_in_this_checkout(capsys, keys):
    line = one_line_error(capsys, 2, "--model=no_such_model", "--tag=stable", "--runtime=torch", f"--public-key={keys['signer_public']}")
    assert line.startswith("serve: no model named 'no_such_model'")


def test_invalid_tag(capsys):
    assert "invalid tag 'v1-rc1'" in one_line_error(capsys, 2, "--model=tiny_transformer", "--tag=v1-rc1")


def test_no_public_key_for_the_workspace_registry(capsys):
    assert "no public key" in one_line_error(capsys, 2, "--model=tiny_transformer", "--tag=stable")


def test_mistyped_registry(capsys, keys):
    line = one_line_error(capsys, 2, "--model=tiny_transformer", "--tag=stable", "--registry=s3://bucket", f"--public-key={keys['signer_public']}")
    assert "unsupported registry scheme 's3'" in line


def test_a_state_directory_in_use(capsys, keys, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with open(state / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        line = one_line_error(
            capsys, 2, "--model=tiny_transformer", "--tag=stable", f"--registry=file://{tmp_path}/registry",
            f"--public-key={keys['signer_public']}", f"--state-dir={state}",
        )  # fmt: skip
    assert "is in use by another service" in line


def test_non_positive_settings(capsys):
    assert "--poll-interval must be positive" in one_line_error(capsys, 2, "--model=tiny_transformer", "--tag=stable", "--poll-interval=0")


def test_an_empty_registry_flag_is_an_error_not_the_workspace_default(capsys, keys, workspace):
    line = one_line_error(capsys, 2, "--model=tiny_transformer", "--tag=stable", "--registry=", f"--public-key={keys['signer_public']}")
    assert "empty --registry=" in line
    assert not (workspace / ".modelgate").exists()  # no development key, no registry, no state


@pytest.mark.parametrize("what", ["user files", "a registry"])
def test_a_state_directory_holding_what_modelgate_did_not_create_is_refused(capsys, keys, tmp_path, what):
    state = tmp_path / "state"
    state.mkdir()
    if what == "user files":
        (state / "notes.txt").write_text("mine")
    else:
        for name in ("blobs/sha256", "models/tiny_transformer/tags"):
            (state / name).mkdir(parents=True)
    before = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
    line = one_line_error(
        capsys, 2, "--model=tiny_transformer", "--tag=stable", f"--registry=file://{tmp_path}/registry",
        f"--public-key={keys['signer_public']}", f"--state-dir={state}",
    )  # fmt: skip
    assert "holds files modelgate did not create" in line
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*")) == before
