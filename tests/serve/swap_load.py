"""A swap under steady load: zero failed requests, latency before/during/after, rollout time.

    PYTHONPATH=.:tools OMP_NUM_THREADS=1 python tests/serve/swap_load.py [--rate=200] [--duration=30]
        [--swap-at=10] [--bundles=DIR] [--work=DIR] [--poll] [--architecture]

Starts a `serve` process on a loopback port with a local registry, promotes v1, then sends
--rate requests/s for --duration seconds from this process (open loop: each request is sent at its
scheduled time whether or not earlier ones have answered). At --swap-at seconds it runs promote
for v2 as a third process (the promote CLI, notifying the service; with --poll, no notification:
the service's poll finds it; with --architecture, v2 is another architecture, wider and one layer
deeper, which the service loads from the bundle's own model.onnx and signature). Prints latency percentiles for requests sent before the promote,
during it (until the first answer from v2) and after, the number of failed requests, and the time
from promote's return to the first answer from v2. Exits 1 if any request failed.

Bundles are built (trained and exported) into --bundles unless they are already there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tools")]

from safetensors.torch import load_file  # noqa: E402

from tests.serve import harness  # noqa: E402
from tests.serve.bundles import build_hash, make_release  # noqa: E402


@dataclass
class Sample:
    scheduled: float  # wall-clock seconds
    start: float
    end: float
    status: int  # 0: no HTTP answer
    build: str | None
    error: str | None

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


V2_HPARAMS = {"steps": 200}
V2_ARCHITECTURE = {"d_model": 48, "num_layers": 3}  # tests/serve/conftest.py's v3


def releases(directory: Path, architecture: bool = False) -> tuple[Path, Path]:
    from modelgate.spec import load_spec

    spec = load_spec(harness.MODEL)
    out = []
    for hparams in ({}, V2_ARCHITECTURE if architecture else V2_HPARAMS):
        label = "-".join(f"{k}{v}" for k, v in sorted(hparams.items())) or "default"
        existing = directory / f"{spec.name}-{label}" / "bundle"
        if not (existing / "manifest.json").is_file():
            print(f"building release bundle {label} (train + export + gate) ...", flush=True)
            existing = make_release(spec, hparams, directory)
        out.append(existing)
    return out[0], out[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Client:
    """A minimal HTTP/1.1 keep-alive client for POST /predict: a fraction of httpx's CPU per request,
    which matters on a two-core machine where the load generator shares the CPUs with the server."""

    def __init__(self, url: str, body: bytes, connections: int):
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.raw = (
            f"POST /predict HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.pool: asyncio.Queue = asyncio.Queue()
        for _ in range(connections):
            self.pool.put_nowait(None)  # opened on first use

    async def _open(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def post(self, raw: bytes | None = None) -> tuple[int, bytes, bytes]:
        """(status, the response head in lower case, the body) of one request: `raw`, or the
        client's own POST /predict."""
        connection = await self.pool.get()
        try:
            if connection is None or connection[0].at_eof():
                if connection is not None:
                    connection[1].close()
                connection = await self._open()
            reader, writer = connection
            writer.write(self.raw if raw is None else raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.find(b"content-length:")
            length = int(head[at + 15 : head.index(b"\r\n", at)]) if at >= 0 else 0
            data = await reader.readexactly(length)
            if b"connection: close" in lower:
                writer.close()
                connection = None
            return status, lower, data
        except BaseException:
            if connection is not None:
                connection[1].close()
            connection = None
            raise
        finally:
            self.pool.put_nowait(connection)

    async def close(self):
        while not self.pool.empty():
            connection = self.pool.get_nowait()
            if connection is not None:
                connection[1].close()


async def one_request(client: Client, scheduled: float, expect_rows: int) -> Sample:
    delay = scheduled - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    start = time.time()
    try:
        status, _, data = await asyncio.wait_for(client.post(), timeout=10.0)
        end = time.time()
        if status != 200:
            return Sample(scheduled, start, end, status, None, data[:200].decode(errors="replace"))
        answer = json.loads(data)
        if len(answer["outputs"]["logits"]) != expect_rows:
            return Sample(scheduled, start, end, 200, answer.get("build_hash"), "wrong number of output rows")
        return Sample(scheduled, start, end, 200, answer["build_hash"], None)
    except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the run
        return Sample(scheduled, start, time.time(), 0, None, f"{type(e).__name__}: {e}")


async def run_promote(command: list[str], env: dict) -> tuple[float, float, str]:
    """Runs promote as its own process; returns (start, return, output). The return time is taken
    inside that process right after promote's main() returns, before interpreter teardown."""
    start = time.time()
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"promote failed ({process.returncode}):\n{text}")
    returned = float(next(line for line in text.splitlines() if line.startswith("RETURNED ")).split()[1])
    return start, returned, text


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default)."""
    if pid is None:
        usage = os.times()
        return usage.user + usage.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(args, server: harness.Server, body: bytes, rows: int, promote_command: list[str], env: dict):
    count = int(args.rate * args.duration)
    client = Client(server.url, body, args.connections)
    try:
        for _ in range(50):  # open the keep-alive connections and warm the path; not measured
            await client.post()
        t0 = time.time() + 0.5
        cpu = (cpu_seconds(), cpu_seconds(server.process.pid))
        tasks = [asyncio.create_task(one_request(client, t0 + i / args.rate, rows)) for i in range(count)]
        await asyncio.sleep(max(0.0, t0 + args.swap_at - time.time()))
        promote_start, promote_return, promote_out = await run_promote(promote_command, env)
        samples = await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.duration + 60)
        elapsed = time.time() - t0
        args.cpu = {
            "load generator": (cpu_seconds() - cpu[0]) / elapsed,
            "server": (cpu_seconds(server.process.pid) - cpu[1]) / elapsed,
        }
    finally:
        await client.close()
    return t0, samples, promote_start, promote_return, promote_out


def report(args, t0, samples: list[Sample], promote_start, promote_return, h1, h2, version) -> int:
    new = [s for s in samples if s.build == h2]
    failed = [s for s in samples if s.error is not None or s.build not in (h1, h2)]
    first_new_end = min((s.end for s in new), default=None)
    phases = {
        "before": [s for s in samples if s.start < promote_start],
        "during": [s for s in samples if promote_start <= s.start and (first_new_end is None or s.start < first_new_end)],
        "after": [s for s in samples if first_new_end is not None and s.start >= first_new_end],
    }
    phases["all"] = samples
    mode = "poll only (no notification)" if args.poll else "notified by promote"
    print()
    print(f"swap under load: {args.rate:g} req/s for {args.duration:g} s (open loop), {len(samples)} requests to {args.server_url}")
    print(f"  payload: the golden batch ({args.rows} rows); server: 1 uvicorn worker, runtime onnxruntime, 1 thread; load: this process (asyncio, keep-alive)")
    print(f"  promote v2 ({mode}) started at +{promote_start - t0:.2f} s and returned after {promote_return - promote_start:.2f} s")
    print()
    print(f"  {'phase':<8}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  builds")
    for name, group in phases.items():
        ms = [s.ms for s in group]
        bad = sum(1 for s in group if s in failed)
        builds = {b[:8]: sum(1 for s in group if s.build == b) for b in (h1, h2) if any(s.build == b for s in group)}
        builds_text = ", ".join(f"{'v1' if b == h1[:8] else 'v2'} {n}" for b, n in builds.items())
        print(f"  {name:<8}{len(group):>9}{bad:>8}{percentile(ms, 50):>9.2f}{percentile(ms, 99):>9.2f}{max(ms, default=float('nan')):>9.2f}  {builds_text}")
    print()
    if first_new_end is None:
        print("  no response from v2 arrived: the rollout did not happen")
    else:
        rollout = version.get("last_rollout") or {}
        steps = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in rollout.get("seconds", {}).items())
        print(f"  promote returned -> first response from v2: {first_new_end - promote_return:.3f} s")
        print(f"  server's rollout of v2 ({rollout.get('trigger')}): {steps}")
        late_old = sum(1 for s in samples if s.build == h1 and s.end > first_new_end)
        print(f"  v1 answers that arrived after the first v2 answer (in flight at the swap): {late_old}")
    lag = [(s.start - s.scheduled) * 1000 for s in samples]
    print(f"  load generator lag behind schedule: p99 {percentile(lag, 99):.2f} ms, max {max(lag):.2f} ms")
    if args.timeline:
        print("  per second (by send time): requests, p50 ms, p99 ms, max ms, builds")
        for second in range(int(args.duration)):
            group = [s for s in samples if second <= s.start - t0 < second + 1]
            ms = [s.ms for s in group]
            marks = "".join(sorted({"1" if s.build == h1 else "2" if s.build == h2 else "x" for s in group}))
            print(f"    +{second:>3} s {len(group):>5} {percentile(ms, 50):>8.2f} {percentile(ms, 99):>8.2f} {max(ms, default=0):>8.2f}  v{marks}")
    cpu = ", ".join(f"{name} {share * 100:.0f}%" for name, share in args.cpu.items())
    print(f"  CPU used (of one core) during the run: {cpu}; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  failed requests: {len(failed)}")
    for s in failed[:5]:
        print(f"    at +{s.start - t0:.3f} s: status {s.status}: {s.error}")
    return 1 if failed or first_new_end is None else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30, at most 120)")
    p.add_argument("--swap-at", type=float, default=10.0, help="start promote this many seconds into the load")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    p.add_argument("--bundles", type=Path, help="release bundles to reuse or build (default: a temporary directory)")
    p.add_argument("--work", type=Path, help="registry, keys and server state (default: a temporary directory)")
    p.add_argument("--timeline", action="store_true", help="also print latency per second of the run")
    p.add_argument("--poll", action="store_true", help="no notification: the service polls every second")
    p.add_argument("--architecture", action="store_true", help="v2 changes the architecture (d_model 48, 3 layers)")
    args = p.parse_args()
    if not (0 < args.rate <= 1000 and 0 < args.duration <= 120 and 0 < args.swap_at < args.duration):
        p.error("keep it bounded: 0 < rate <= 1000, 0 < duration <= 120, 0 < swap-at < duration")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory(prefix="swap-load-") as tmp:
        work = args.work or Path(tmp)
        v1, v2 = releases(args.bundles or work / "bundles", args.architecture)
        h1, h2 = build_hash(v1), build_hash(v2)
        keys = harness.make_keys(work / "keys")
        uri = f"file://{work / 'registry'}"
        os.environ["MODELGATE_NOTIFY_SECRET"] = harness.SECRET  # promote signs notifications with it
        harness.promote(uri, v1, keys["signer"])
        extra_env = {"MODELGATE_NOTIFY_SECRET": ""} if args.poll else {}
        server = harness.start_server(
            uri, keys["signer_public"], work / "server", poll_interval_s=1.0 if args.poll else 3600, extra_env=extra_env
        )
        args.server_url = server.url
        try:
            server.wait_serving(h1, 60)
            inputs = load_file(str(v1 / "inputs.safetensors"))
            args.rows = len(next(iter(inputs.values())))
            body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
            env = {**os.environ, "PYTHONPATH": harness.child_pythonpath()}
            notify_flag = [] if args.poll else [f"--notify={server.notify_url}"]
            command = [
                sys.executable, "-c",
                "import sys, time; from modelgate.cli import promote; rc = promote.main(sys.argv[1:]); "
                "print('RETURNED', repr(time.time()), flush=True); sys.exit(rc)",
                "--tag=stable", f"--release={v2}", f"--registry={uri}", f"--signing-key={keys['signer']}", *notify_flag,
            ]  # fmt: skip
            t0, samples, promote_start, promote_return, promote_out = asyncio.run(load(args, server, body, args.rows, command, env))
            version = server.version()
            status = report(args, t0, samples, promote_start, promote_return, h1, h2, version)
            print(f"  promote said: {promote_out.splitlines()[0]}")
        finally:
            server.stop()
        if status:
            print(f"\nserver log ({server.log_path}):\n{server.log()[-3000:]}")
        return status


if __name__ == "__main__":
    sys.exit(main())
