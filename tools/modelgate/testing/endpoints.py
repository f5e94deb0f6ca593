"""Loopback endpoints that misbehave on purpose, for deadline tests (threads with listening sockets)."""

from __future__ import annotations

import socket
import threading


class BadEndpoint:
    """Accepts connections; "silent" never answers, "trickle" answers one byte per second. Either
    gives up after GIVE_UP_S, so that a client without a deadline fails the test instead of hanging it."""

    GIVE_UP_S = 30

    def __init__(self, mode: str):
        self.mode = mode
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        try:
            conn.recv(65536)  # the request (or its start)
            if self.mode == "trickle":
                for byte in (b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000)[: self.GIVE_UP_S]:
                    if self.stopped.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            else:
                self.stopped.wait(self.GIVE_UP_S)
            conn.close()
        except OSError:
            pass

    def stop(self):
        self.stopped.set()
        self.listener.close()
        for conn in self.connections:
            conn.close()
