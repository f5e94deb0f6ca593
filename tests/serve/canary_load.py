"""Canary runs under open-loop load: a faulty (or healthy) canary beside stable, rolled back or not.

    PYTHONPATH=.:tools OMP_NUM_THREADS=1 python tests/serve/canary_load.py [--fault=nan,shifted,slow,healthy]
        [--rate=200] [--duration=10] [--bundles=DIR] [--work=DIR]
    PYTHONPATH=.:tools OMP_NUM_THREADS=1 python tests/serve/canary_load.py --bench [--rate=300] [--duration=10]

A run: a local registry with v1 promoted to stable and to canary; `serve --canary-tag=canary` with
a signing key; open-loop load (each request sent at its scheduled time whether or not earlier
ones have answered) of one-row requests with random tokens, each with a client key
(X-Modelgate-Key, 1,000 clients); after 1 s, promote the faulty build to canary (notifying the
service). Reports the requests routed to the canary until it was stopped, failed requests, the
history event the service wrote, and /metrics lines before and after. canary_test.py asserts on
the same runs.

--bench: the routing and metrics cost. Two services over one registry, one with a canary
configured (an equivalent build, 10%, shadow off) and one without, each loaded in turn at the
same rate, twice (A B A B), in one run; prints p50/p99 and achieved throughput of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path[:0] = [str(REPO), str(REPO / "tools")]

from tests.serve import faults, harness, swap_load  # noqa: E402
from tests.serve.bundles import build_hash  # noqa: E402

CLIENTS = 1000
KEY_HEADER = "X-Modelgate-Key"
# The analysis the runs use: small windows so a run is seconds long. Rollback is decided after
# BREACH_WINDOWS consecutive breaching windows of WINDOW_REQUESTS canary requests each.
WINDOW_REQUESTS = 60
BREACH_WINDOWS = 2
CONFIG = {
    "window_requests": WINDOW_REQUESTS,
    "window_seconds": 30,
    "min_samples": 30,
    "breach_windows": BREACH_WINDOWS,
    "max_error_rate": 0.01,
    "max_nonfinite_rate": 0.0,
    "max_p95_ratio": 2.0,
    "p95_slack_ms": 2.0,
    "shadow_fraction": 0.5,
    "max_shadow_mismatch_rate": 0.0,
    "min_shadow_samples": 5,
}
WEIGHT = 25.0
METRIC_LINES = re.compile(
    r"^modelgate_(requests_total|request_errors_total|nonfinite_outputs_total|fallbacks_total|rollbacks_total|"
    r"canary_weight_percent|build_info|canary_windows_total|shadow_comparisons_total)\b"
)


@dataclass
class Sample:
    index: int
    start: float
    end: float
    status: int
    arm: str | None = None
    build: str | None = None
    fallback: str | None = None
    error: str | None = None

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Client(swap_load.Client):
    """swap_load's keep-alive client, with a body and a client key per request."""

    def __init__(self, url: str, connections: int):
        super().__init__(url, b"", connections)

    def request(self, body: bytes, key: str) -> bytes:
        return (
            f"POST /predict HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"{KEY_HEADER}: {key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body


def _header(lower_head: bytes, name: bytes) -> str | None:
    at = lower_head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    return lower_head[start : lower_head.index(b"\r\n", start)].strip().decode()


async def _one(client: Client, index: int, raw: bytes, scheduled: float) -> Sample:
    delay = scheduled - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    start = time.time()
    try:
        status, head, data = await asyncio.wait_for(client.post(raw), timeout=10.0)
        end = time.time()
        if status != 200:
            return Sample(index, start, end, status, error=data[:200].decode(errors="replace"))
        answer = json.loads(data)
        logits = answer["outputs"]["logits"]
        if len(logits) != 1 or not all(isinstance(x, float) and x == x and abs(x) != float("inf") for x in logits[0]):
            return Sample(index, start, end, status, error=f"bad outputs {logits!r:.100}")
        return Sample(index, start, end, 200, answer.get("arm"), answer.get("build_hash"), _header(head, b"x-modelgate-fallback"))
    except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the run
        return Sample(index, start, time.time(), 0, error=f"{type(e).__name__}: {e}")


def request_pool(count: int, seed: int = 0) -> list[bytes]:
    tokens, mask = faults.random_rows(count, seed)
    return [json.dumps({"inputs": {"tokens": tokens[i : i + 1].tolist(), "mask": mask[i : i + 1].tolist()}}).encode() for i in range(count)]


async def open_loop(url: str, pool: list[bytes], rate: float, duration: float, at: float | None = None, action=None, connections: int = 32, first: int = 0):
    """Sends rate x duration requests on schedule; runs `action` (blocking, in a thread) at +at s.
    Returns (samples, t0, action's result, action's start and end)."""
    client = Client(url, connections)
    count = int(rate * duration)
    try:
        for i in range(20):  # open the connections and warm the path; not measured
            await client.post(client.request(pool[i % len(pool)], f"warm-{i}"))
        t0 = time.time() + 0.3
        tasks = [
            asyncio.create_task(_one(client, first + i, client.request(pool[(first + i) % len(pool)], f"user-{(first + i) % CLIENTS}"), t0 + i / rate))
            for i in range(count)
        ]
        result = window = None
        if action is not None:
            await asyncio.sleep(max(0.0, t0 + at - time.time()))
            started = time.time()
            result = await asyncio.get_running_loop().run_in_executor(None, action)
            window = (started, time.time())
        samples = await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + 60)
    finally:
        await client.close()
    return samples, t0, result, window


async def closed_loop(url: str, pool: list[bytes], duration: float, workers: int = 16) -> tuple[list[Sample], float]:
    """`workers` clients each sending its next request when the last is answered, for `duration`
    seconds: the most the service answers (its throughput), and the latency at that load."""
    client = Client(url, workers)
    samples: list[Sample] = []
    t0 = time.time()

    async def worker(w: int):
        i = w
        while time.time() - t0 < duration:
            samples.append(await _one(client, i, client.request(pool[i % len(pool)], f"user-{i % CLIENTS}"), 0.0))
            i += workers

    try:
        await asyncio.gather(*(worker(w) for w in range(workers)))
    finally:
        await client.close()
    return samples, time.time() - t0


def metric_lines(server: harness.Server) -> list[str]:
    status, text = harness.http("GET", server.url + "/metrics")
    assert status == 200, text
    return [line for line in text.splitlines() if METRIC_LINES.match(line) and (not line.endswith(" 0.0") or "weight" in line)]


@dataclass
class FaultRun:
    fault: str
    facts: dict
    stable: str
    canary: str
    samples: list[Sample]
    failed: list[Sample]
    canary_requests: int  # requests routed to the faulty canary (server's modelgate_requests_total)
    routed_client_side: int  # requests the clients saw answered by the canary, or by stable as its fallback
    answered_by_canary: int
    fallbacks: int
    span_requests: int  # all requests sent from the first one routed to the canary to the last
    seconds_to_stop: float | None  # promote's return -> the last request routed to the canary
    version: dict
    history: list[dict]
    metrics_before: list[str]
    metrics_after: list[str]
    log: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def rollback(self) -> dict | None:
        return next((e for e in reversed(self.history) if e["action"] == "rollback" and e["tag"] == "canary"), None)


def start(uri: str, keys: dict, work: Path, *, canary: bool = True, signing: bool = True, config: dict | None = None, weight: float = WEIGHT) -> harness.Server:
    args = []
    if canary:
        config_path = work / "canary.json"
        work.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps(config if config is not None else CONFIG))
        args = [
            "--canary-tag=canary", f"--canary-weight={weight:g}", f"--canary-config={config_path}",
            f"--canary-state-dir={work / 'state-canary'}",
        ] + ([f"--signing-key={keys['signer']}"] if signing else [])  # fmt: skip
    return harness.start_server(uri, keys["signer_public"], work, extra_args=args)


def run_fault(fault: str, v1: Path, work: Path, *, rate: float = 200.0, duration: float = 10.0, promote_at: float = 1.0, signing: bool = True) -> FaultRun:
    """One canary run; see the module docstring."""
    work.mkdir(parents=True, exist_ok=True)
    keys = harness.make_keys(work / "keys")
    uri = f"file://{work / 'registry'}"
    os.environ["MODELGATE_NOTIFY_SECRET"] = harness.SECRET
    harness.promote(uri, v1, keys["signer"])
    harness.promote(uri, v1, keys["signer"], tag="canary")
    server = start(uri, keys, work / "server", signing=signing)
    try:
        server.wait_serving(build_hash(v1), 60)
        harness.wait_for(lambda: server.version()["canary"]["deployment"]["build_hash"] == build_hash(v1), 60, "the canary deployment to serve v1")
        pool = request_pool(5000)
        slow_seconds = 0.004
        if fault == "slow":  # 4x what clients measure from stable now: the canary answers 5x slower
            samples, *_ = asyncio.run(open_loop(server.url, pool, rate, 1.5))
            slow_seconds = 4 * percentile([s.ms for s in samples], 50) / 1000
        bad, facts = faults.make_faulty(v1, fault, work / f"canary-{fault}", slow_seconds=slow_seconds)
        metrics_before = metric_lines(server)
        promoted = {}

        def promote():
            promoted["result"] = harness.promote(uri, bad, keys["signer"], tag="canary", notify_urls=[server.notify_url])
            promoted["returned"] = time.time()

        samples, t0, _, _ = asyncio.run(open_loop(server.url, pool, rate, duration, at=promote_at, action=promote))
        version = server.version()
        if fault != "healthy":  # the rollback event is written by a background thread
            version = harness.wait_for(
                lambda: (v := server.version())["canary"]["halted"].get(build_hash(bad), {}).get("recorded") and v, 20, "the rollback record"
            )
        metrics_after = metric_lines(server)
        history = [dict(e) for e in harness.open_registry(uri).events(harness.MODEL)]
        h_bad = build_hash(bad)
        routed = [s for s in samples if s.build == h_bad or s.fallback]  # v1 as canary takes no traffic: every fallback is the bad one's
        canary_requests = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics_after
            if line.startswith("modelgate_requests_total{") and 'arm="canary"' in line and f'build_hash="{h_bad[:12]}"' in line
        )  # fmt: skip
        failed = [s for s in samples if s.error is not None]
        span = 0
        seconds = None
        if routed:
            first_i, last_i = min(s.index for s in routed), max(s.index for s in routed)
            span = last_i - first_i + 1
            seconds = max(s.end for s in routed) - promoted["returned"]
        return FaultRun(
            fault, facts, build_hash(v1), h_bad, samples, failed, int(canary_requests), len(routed),
            sum(1 for s in samples if s.build == h_bad), sum(1 for s in routed if s.fallback), span, seconds,
            version, history, metrics_before, metrics_after, log=server.log(),
        )  # fmt: skip
    finally:
        server.stop()


def describe(run: FaultRun, rate: float) -> str:
    lines = [f"== fault: {run.fault} ({json.dumps(run.facts, sort_keys=True)})"]
    lines.append(f"   stable {run.stable[:12]}, canary {run.canary[:12]} at {WEIGHT:g}%, {len(run.samples)} requests at {rate:g}/s (open loop)")
    c = run.version["canary"]
    halted = c["halted"].get(run.canary)
    lines.append(
        f"   requests routed to the canary: {run.canary_requests} (server) / {run.routed_client_side} (clients: {run.answered_by_canary} answered by it, "
        f"{run.fallbacks} by stable as its fallback); all requests from the first to the last routed to it: {run.span_requests}"
    )
    if run.seconds_to_stop is not None:
        lines.append(f"   promote returned -> last request routed to the canary: {run.seconds_to_stop:.2f} s")
    lines.append(f"   failed requests: {len(run.failed)}")
    by_canary = [s.ms for s in run.samples if s.build == run.canary]
    by_stable = [s.ms for s in run.samples if s.build == run.stable and not s.fallback]
    if by_canary:
        lines.append(
            f"   client latency p50/p99: canary {percentile(by_canary, 50):.2f}/{percentile(by_canary, 99):.2f} ms, "
            f"stable {percentile(by_stable, 50):.2f}/{percentile(by_stable, 99):.2f} ms"
        )
    for v in c["last_verdicts"]:
        lines.append(f"   window {v['number']}: {v['verdict']} {json.dumps(v['figures'], sort_keys=True)}{'  ' + '; '.join(v['breaches']) if v['breaches'] else ''}")
    lines.append(f"   canary state: {c['state']}; halted: {json.dumps(halted, sort_keys=True) if halted else 'no'}")
    if run.rollback:
        e = run.rollback
        lines.append(
            f"   history event {e['seq']}: action={e['action']} tag={e['tag']} {e['previous'][:12]} -> {e['build_hash'][:12]} "
            f"user={e['user']} signed={'signature' in e} ({e['signature'].get('keyid', '')[:16] if isinstance(e.get('signature'), dict) else ''})"
        )
        lines.append(f"   reason: {e['reason']}")
    lines.append("   /metrics before the canary:")
    lines += [f"     {line}" for line in run.metrics_before]
    lines.append("   /metrics after:")
    lines += [f"     {line}" for line in run.metrics_after]
    return "\n".join(lines)


# ---- the benchmark: routing and metrics cost


def bench(v1: Path, work: Path, rate: float, duration: float) -> str:
    """Two services, one with a canary (an equivalent build at 10%, shadow off), one without,
    loaded in turn A B A B at the same rate; p50/p99 and throughput of each."""
    keys = harness.make_keys(work / "keys")
    uri = f"file://{work / 'registry'}"
    os.environ["MODELGATE_NOTIFY_SECRET"] = harness.SECRET
    healthy, _ = faults.make_faulty(v1, "healthy", work / "canary-healthy")
    harness.promote(uri, v1, keys["signer"])
    harness.promote(uri, healthy, keys["signer"], tag="canary")
    config = {**CONFIG, "shadow_fraction": 0.0, "window_requests": 1000, "min_samples": 100}
    plain = start(uri, keys, work / "plain", canary=False)
    with_canary = start(uri, keys, work / "canary", config=config, weight=10)
    pool = request_pool(5000)
    rows = []
    try:
        plain.wait_serving(build_hash(v1), 60)
        with_canary.wait_serving(build_hash(v1), 60)
        harness.wait_for(lambda: with_canary.version()["canary"]["deployment"]["build_hash"] == build_hash(healthy), 60, "the canary")
        for label, server in (("no canary", plain), ("canary 10%", with_canary), ("no canary", plain), ("canary 10%", with_canary)):
            cpu0 = _cpu(server.process.pid)
            samples, t0, _, _ = asyncio.run(open_loop(server.url, pool, rate, duration))
            elapsed = max(s.end for s in samples) - t0
            cpu = (_cpu(server.process.pid) - cpu0) / elapsed
            ok = [s for s in samples if s.error is None]
            canary_share = sum(1 for s in ok if s.arm == "canary") / max(1, len(ok))
            rows.append((f"{label}, {rate:g}/s", len(samples), len(samples) - len(ok), percentile([s.ms for s in ok], 50), percentile([s.ms for s in ok], 99), len(ok) / elapsed, cpu, canary_share))
        for label, server in (("no canary", plain), ("canary 10%", with_canary), ("no canary", plain), ("canary 10%", with_canary)):
            cpu0 = _cpu(server.process.pid)
            samples, elapsed = asyncio.run(closed_loop(server.url, pool, duration / 2))
            cpu = (_cpu(server.process.pid) - cpu0) / elapsed
            ok = [s for s in samples if s.error is None]
            canary_share = sum(1 for s in ok if s.arm == "canary") / max(1, len(ok))
            rows.append((f"{label}, max", len(samples), len(samples) - len(ok), percentile([s.ms for s in ok], 50), percentile([s.ms for s in ok], 99), len(ok) / elapsed, cpu, canary_share))
    finally:
        plain.stop()
        with_canary.stop()
    out = [
        f"one-row /predict, 1,000 client keys; open loop {rate:g} req/s x {duration:g} s per phase, then closed loop (16 clients, "
        f"{duration / 2:g} s: the most it answers); phases in order A B A B"
    ]
    out.append(f"  {'service':<22}{'requests':>9}{'failed':>7}{'p50 ms':>8}{'p99 ms':>8}{'answers/s':>10}{'server CPU':>11}{'to canary':>10}")
    for label, n, failed, p50, p99, throughput, cpu, share in rows:
        out.append(f"  {label:<22}{n:>9}{failed:>7}{p50:>8.2f}{p99:>8.2f}{throughput:>10.1f}{cpu * 100:>10.0f}%{share * 100:>9.1f}%")
    return "\n".join(out)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fault", default=",".join(faults.FAULTS), help="comma-separated: nan, shifted, slow, healthy")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--bundles", type=Path, help="release bundles to reuse or build")
    p.add_argument("--work", type=Path)
    p.add_argument("--bench", action="store_true", help="the routing and metrics cost instead of fault runs")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tests.serve.swap_load import releases

    with tempfile.TemporaryDirectory(prefix="canary-load-") as tmp:
        work = args.work or Path(tmp)
        v1, _ = releases(args.bundles or work / "bundles")
        print(f"machine: {machine()}")
        if args.bench:
            print(bench(v1, work / "bench", args.rate, args.duration))
            print(f"after: {machine()}")
            return 0
        status = 0
        for fault in args.fault.split(","):
            run = run_fault(fault, v1, work / fault, rate=args.rate, duration=args.duration)
            print(describe(run, args.rate))
            if run.failed or (fault == "healthy") == bool(run.rollback):
                status = 1
                print(run.log[-3000:])
        print(f"after: {machine()}")
        return status


if __name__ == "__main__":
    sys.exit(main())
