"""Shared by the serving tests and swap_load.py: keys, registries, promotion, a real server process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modelgate.registry import api
from modelgate.registry import bundle as bundle_lib
from modelgate.registry.registry import Registry
from modelgate.registry.storage import open_storage
from modelgate.registry.uri import parse

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny_transformer"
SECRET = "test-notify-secret"


def child_pythonpath() -> str:
    """The workspace and everything this process imports from (under Bazel: the pip repositories)."""
    return os.pathsep.join(dict.fromkeys([str(REPO), str(REPO / "tools"), *(p for p in sys.path if p)]))


def make_keys(directory: Path) -> dict[str, Path]:
    """An EC P-256 key pair ("signer") and one that signed nothing ("stranger")."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("signer", "stranger"):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name] = directory / f"{name}.pem"
        out[f"{name}_public"] = directory / f"{name}.pub.pem"
        out[name].write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        out[f"{name}_public"].write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return out


def open_registry(uri: str) -> Registry:
    return Registry(open_storage(parse(uri)))


def promote(uri: str, bundle: Path, signing_key: Path, *, tag: str = "stable", notify_urls=(), force: bool = False) -> api.PromoteResult:
    """What `bazel run //tools:promote` does, in-process. Notifies with $MODELGATE_NOTIFY_SECRET."""
    warnings: list[str] = []
    [result] = api.promote(
        open_registry(uri),
        [bundle_lib.read(bundle)],
        tag,
        signing_key=lambda: str(signing_key),
        notify_urls=tuple(notify_urls),
        force=force,
        reason="test" if force else None,
        warn=warnings.append,
    )
    if notify_urls and result.status != "unchanged" and result.notified != len(notify_urls):
        raise AssertionError(f"notification not delivered: {warnings}")
    return result


def rollback(uri: str, signing_key: Path, *, tag: str = "stable", notify_urls=()) -> api.PromoteResult:
    """`registry rollback`, in-process: a new history event, signed like a promotion."""
    return api.rollback(open_registry(uri), MODEL, tag, signing_key=lambda: str(signing_key), notify_urls=tuple(notify_urls))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, dict | str]:
    """(status, JSON body or text), never raising on an HTTP error status."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode(errors="replace")


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Server:
    """A `serve` process on a loopback port; its log is in `log_path`."""

    url: str
    process: subprocess.Popen
    log_path: Path
    state_dir: Path

    @property
    def notify_url(self) -> str:
        return f"{self.url}/notify"

    def get(self, path: str):
        return http("GET", self.url + path)

    def post_json(self, path: str, payload, headers: dict | None = None):
        return http("POST", self.url + path, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def version(self) -> dict:
        status, doc = self.get("/version")
        assert status == 200, doc
        return doc

    def serving(self) -> str | None:
        return self.version()["build_hash"]

    def wait_serving(self, build_hash: str, timeout_s: float = 60) -> dict:
        return wait_for(lambda: (v := self.version())["build_hash"] == build_hash and v, timeout_s, f"the service to serve {build_hash[:12]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    registry_uri: str,
    public_key: Path,
    work: Path,
    *,
    tag: str = "stable",
    poll_interval_s: float = 3600,
    extra_args=(),
    extra_env: dict | None = None,
    ready_timeout_s: float = 60,
    state_dir: Path | None = None,
) -> Server:
    """Starts `python -m modelgate.cli.serve` and waits until it answers HTTP (not until it serves)."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    state_dir = state_dir or work / "state"
    log_path = work / f"serve-{port}.log"
    env = {
        **os.environ,
        "PYTHONPATH": child_pythonpath(),
        "OMP_NUM_THREADS": "1",
        "MODELGATE_NOTIFY_SECRET": SECRET,
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "modelgate.cli.serve", f"--model={MODEL}", f"--tag={tag}", f"--registry={registry_uri}",
        f"--public-key={public_key}", f"--port={port}", f"--state-dir={state_dir}", f"--poll-interval={poll_interval_s}",
        *extra_args,
    ]  # fmt: skip
    log_file = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work)
    log_file.close()
    server = Server(f"http://127.0.0.1:{port}", process, log_path, state_dir)

    def answers():
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{server.log()}")
        try:
            return http("GET", server.url + "/version", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(answers, ready_timeout_s, "serve to answer HTTP", interval_s=0.1)
    except BaseException:
        server.stop()
        raise
    return server
