"""tools/bazel (the wrapper that maps MODELGATE_REMOTE_* onto flags) and tools/dev/cache_server.

The wrapper runs against a fake Bazel that prints its arguments; the cache server is the real
nginx on a free loopback port (skipped where nginx is not installed).
"""

import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("TEST_SRCDIR", "")) / os.environ.get("TEST_WORKSPACE", "")
if not (ROOT / "tools/bazel").is_file():
    ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "tools/bazel"
CACHE_SERVER = ROOT / "tools/dev/cache_server"


@pytest.fixture
def fake_bazel(tmp_path):
    fake = tmp_path / "bazel-real"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    return fake


def wrapped(fake_bazel, *args, **env):
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "BAZEL_REAL": str(fake_bazel)}
    environ.update(env)
    proc = subprocess.run(["bash", str(WRAPPER), *args], env=environ, capture_output=True, text=True, check=True)
    return proc.stdout.splitlines(), proc.stderr


@pytest.fixture
def listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrapper_passes_everything_through_without_the_variables(fake_bazel):
    args = ["--output_user_root=/x", "test", "//models/...", "--", "-weird arg"]
    assert wrapped(fake_bazel, *args) == (args, "")


def test_wrapper_starts_the_server_from_the_recorded_class_data_archive(fake_bazel, tmp_path, listening):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    helper = ROOT / "tools/private/server_archive.sh"
    archive = subprocess.run(["bash", "-c", f"source {helper} && server_archive_path"], env={**os.environ, **env},
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if not archive:
        pytest.skip("no Bazel install base or JVM here to key an archive by")
    assert archive.startswith(str(tmp_path / "cache" / "modelgate" / "bazel-server")) and archive.endswith(".jsa")
    assert wrapped(fake_bazel, "test", "//x", **env)[0] == ["test", "//x"]  # none recorded: nothing added
    Path(archive).parent.mkdir(parents=True)
    Path(archive).write_bytes(b"archive")
    flag = f"--host_jvm_args=-XX:SharedArchiveFile={archive}"
    assert wrapped(fake_bazel, "--batch", "test", "//x", **env)[0] == [flag, "--batch", "test", "//x"]
    url = f"http://127.0.0.1:{listening}"
    out, _ = wrapped(fake_bazel, "build", "//x", MODELGATE_REMOTE_CACHE=url, **env)
    assert out == [flag, "build", "--config=remote-cache", f"--remote_cache={url}", "//x"]


def test_wrapper_adds_the_cache_after_the_command_and_before_the_users_flags(fake_bazel, listening):
    url = f"http://127.0.0.1:{listening}"
    out, err = wrapped(fake_bazel, "--batch", "test", "--config=ci", "//models/...", MODELGATE_REMOTE_CACHE=url)
    assert out == ["--batch", "test", "--config=remote-cache", f"--remote_cache={url}", "--config=ci", "//models/..."]
    assert err == ""
    out, _ = wrapped(fake_bazel, "build", "//x", MODELGATE_REMOTE_CACHE=url, MODELGATE_REMOTE_CACHE_WRITE="1")
    assert out == ["build", "--config=remote-cache-write", f"--remote_cache={url}", "//x"]


@pytest.mark.parametrize("command", ["query", "info", "shutdown", "clean", "version"])
def test_wrapper_leaves_commands_that_take_no_cache_flags_alone(fake_bazel, listening, command):
    url = f"http://127.0.0.1:{listening}"
    assert wrapped(fake_bazel, command, "//x", MODELGATE_REMOTE_CACHE=url)[0] == [command, "//x"]


def test_wrapper_leaves_an_unreachable_cache_out_and_says_so(fake_bazel):
    url = f"http://127.0.0.1:{dead_port()}"
    out, err = wrapped(fake_bazel, "test", "//x", MODELGATE_REMOTE_CACHE=url)
    assert out == ["test", "//x"]
    assert (
        err == f"modelgate: remote cache {url} (MODELGATE_REMOTE_CACHE) is unreachable; building without it, locally\n"
    )


def test_wrapper_gives_rbe_its_executor_and_no_http_cache(fake_bazel, listening):
    grpc = f"grpc://127.0.0.1:{listening}"
    env = {"MODELGATE_REMOTE_EXECUTOR": grpc, "MODELGATE_REMOTE_CACHE": f"http://127.0.0.1:{listening}"}
    out, err = wrapped(fake_bazel, "test", "--config=rbe", "//x", **env)
    assert out == ["test", f"--remote_executor={grpc}", "--config=rbe", "//x"] and err == ""
    # Without --config=rbe the executor variable changes nothing (the cache still applies).
    out, _ = wrapped(fake_bazel, "test", "//x", "--", "--config=rbe", **env)
    assert f"--remote_executor={grpc}" not in out and "--config=remote-cache" in out


def test_wrapper_reports_an_unreachable_executor(fake_bazel):
    grpc = f"grpc://127.0.0.1:{dead_port()}"
    out, err = wrapped(fake_bazel, "test", "--config", "rbe", "//x", MODELGATE_REMOTE_EXECUTOR=grpc)
    assert out == ["test", f"--remote_executor={grpc}", "--config", "rbe", "//x"]
    assert "is unreachable; start it (tools/dev/rbe_server start) or drop --config=rbe" in err


# --- tools/dev/cache_server ---------------------------------------------------------------------------

needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="no nginx"
)


def cache_server(*args, check=True):
    env = dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    return subprocess.run(["bash", str(CACHE_SERVER), *args], env=env, capture_output=True, text=True, check=check)


@needs_nginx
def test_cache_server_stores_what_bazel_puts_and_says_where(tmp_path):
    state = tmp_path / "cache"
    url = cache_server("start", "--port=0", f"--dir={state}").stdout.strip()
    try:
        assert url.startswith("http://127.0.0.1:")
        blob = os.urandom(3 << 20)  # above nginx's default 1 MiB body limit
        put = urllib.request.Request(f"{url}/cas/deadbeef", data=blob, method="PUT")
        assert urllib.request.urlopen(put, timeout=10).status in (200, 201, 204)
        assert urllib.request.urlopen(f"{url}/cas/deadbeef", timeout=10).read() == blob
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/ac/0000", timeout=10)
        assert missing.value.code == 404
        status = cache_server("status", f"--dir={state}")
        assert status.stdout.strip() == url and "running" in status.stderr
        again = cache_server("start", f"--dir={state}")
        assert again.stdout.strip() == url and "already running" in again.stderr
    finally:
        cache_server("stop", f"--dir={state}")
    assert cache_server("status", f"--dir={state}", check=False).returncode == 3


@needs_nginx
def test_cache_server_refuses_a_busy_port_clearly(tmp_path, listening):
    proc = cache_server("start", f"--port={listening}", f"--dir={tmp_path}", check=False)
    assert proc.returncode == 1
    assert (
        proc.stderr
        == f"cache_server: error: port {listening} on 127.0.0.1 is in use; pick another with --port=P (or --port=0)\n"
    )
