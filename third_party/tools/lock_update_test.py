"""The real `bazel run //third_party:requirements.update` binary, run offline against a small lock.

The binary is a data dependency, so it runs from this test's runfiles tree -- Bazel's layout in
which the external repository `@pip` is a directory `pip/` at the runfiles root, first on
sys.path. If that directory holds a generated __init__.py it shadows the real pip package, and
pip-compile dies with `ModuleNotFoundError: No module named 'pip._internal'`. Here it
re-locks a workspace whose requirements.in names one tiny wheel this test builds itself, with
`--no-index --find-links DIR` (tests have no network).
"""

import base64
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

BINARY = os.environ["LOCK_UPDATE"]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel with one module, deterministic bytes (fixed zip timestamps)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n'.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: lock_update_test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return wheel


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    (ws / "third_party").mkdir(parents=True)
    (ws / "third_party" / "requirements.in").write_text("# a small lock for the test\ntinypkg\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = build_wheel(wheels, "tinypkg", "1.0")
    return ws, wheels, wheel


def run_update(ws: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        # Runfiles variables of this test: the binary finds its runfiles from its own path.
        if not k.startswith(("PIP_", "PYTHON")) and k not in {"RUNFILES_DIR", "RUNFILES_MANIFEST_FILE"}
    }
    env.update(
        BUILD_WORKSPACE_DIRECTORY=str(ws),
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INPUT="1",
    )
    return subprocess.run([BINARY, *args], env=env, capture_output=True, text=True, timeout=300)


def test_relocks_both_locks_offline(workspace, tmp_path):
    ws, wheels, wheel = workspace
    result = run_update(ws, tmp_path, "--no-index", "--find-links", str(wheels))
    output = result.stdout + result.stderr
    assert "pip._internal" not in output, output
    assert result.returncode == 0, output
    assert "locks updated" in result.stdout
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    for lock in ("requirements_lock.txt", "requirements_lock_cuda.txt"):
        text = (ws / "third_party" / lock).read_text()
        assert f"tinypkg==1.0 \\\n    --hash=sha256:{digest}\n" in text, f"{lock}:\n{text}"
        assert "    # via -r third_party/requirements.in" in text  # paths relative to the workspace


def test_stale_pin_is_re_resolved(workspace, tmp_path):
    ws, wheels, _ = workspace
    assert run_update(ws, tmp_path, "--no-index", "--find-links", str(wheels)).returncode == 0
    newer = build_wheel(wheels, "tinypkg", "1.1")
    result = run_update(ws, tmp_path, "--no-index", "--find-links", str(wheels), "--upgrade-package", "tinypkg")
    assert result.returncode == 0, result.stdout + result.stderr
    digest = hashlib.sha256(newer.read_bytes()).hexdigest()
    assert f"tinypkg==1.1 \\\n    --hash=sha256:{digest}\n" in (ws / "third_party" / "requirements_lock.txt").read_text()


def test_unresolvable_requirement_fails_in_one_line(workspace, tmp_path):
    ws, wheels, _ = workspace
    assert run_update(ws, tmp_path, "--no-index", "--find-links", str(wheels)).returncode == 0
    lock = ws / "third_party" / "requirements_lock.txt"
    before = lock.read_bytes()
    (ws / "third_party" / "requirements.in").write_text("tinypkg\nno-such-package-anywhere\n")
    result = run_update(ws, tmp_path, "--no-index", "--find-links", str(wheels))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pip-compile failed for third_party/requirements_lock.txt (exit 1): "
        "No matching distribution found for no-such-package-anywhere"
    ], result.stderr
    assert lock.read_bytes() == before  # the lock it could not re-resolve is left as it was


def test_outside_bazel_run_says_how(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BUILD_WORKSPACE_DIRECTORY"}
    result = subprocess.run([BINARY], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "run me with: bazel run //third_party:requirements.update"
