"""Serving throughput and latency beside MLServer and the in-process floor, in one run on one machine.

    flock -o /tmp/heavy.lock bazel build //models:releases      # the bundles it serves
    flock -o /tmp/heavy.lock /usr/bin/python3.11 tools/bench/serving_bench.py
        [--models=tiny_transformer,image_cnn] [--rows=1] [--connections=4] [--duration=10] [--warmup=3]
        [--only=onnx,torch,mlserver,floor] [--json=OUT] [--work=DIR] [--keep]

For each model (its release bundle at bazel-bin/models/<m>/release, promoted into a throwaway
file:// registry) it measures, one after the other, with the same client and the same request:

  onnx      `python -m modelgate.serve --runtime=onnx --threads=1`, POST /v2/models/<m>/infer (OIP v2 JSON)
  torch     the same service with `--runtime=torch --threads=1` (the checkout's model code), same endpoint
  mlserver  MLServer 1.7.1 serving the same model.onnx over the same protocol, with a custom runtime
            (an mlserver.MLModel that calls onnxruntime, 1 intra-op thread); settings below
  floor     onnxruntime called in a process of its own on the same input arrays, one thread, no
            HTTP: the most requests/s any one-threaded server could answer

The request is the model's golden inputs (the bundle's inputs.safetensors), the first --rows rows,
as one OIP v2 JSON request with flat `data`; before the load, one answer from each server is
compared with the bundle's expected.safetensors, so all of them run the same model. The client is
wrk (Debian package `wrk`; C, one thread, --connections keep-alive connections, closed loop, a
Lua script for the POST body and for printing its numbers), because a Python load generator would
take a large share of a two-core machine from the server it measures. Each server gets a wrk
warm-up of --warmup seconds, then a measured run of --duration seconds. After the measured run the
server's VmRSS and VmHWM are read from /proc/<pid>/status, its CPU time from /proc/<pid>/stat
(CPU ms per request: what a request costs the server, whoever else is on the CPUs), and whether
libtorch is mapped from /proc/<pid>/maps.

MLServer runs from a venv of its own, created here once (~/.cache/modelgate/bench/mlserver-venv,
$MODELGATE_MLSERVER_VENV), with `pip install mlserver==1.7.1 onnxruntime==<the lock's version>`. Its
settings, each chosen so that it does the same work as modelgate serve and no more:
  parallel_workers=0     inference in the server process, as modelgate does (the default, 1 worker
                         process, adds a process hop through a queue per request and a second
                         process on two CPUs)
  metrics_endpoint=null  no Prometheus middleware and no metrics server (modelgate has neither)
  gzip_enabled=false     no GZip middleware (modelgate does not compress; wrk asks for no gzip)
  debug=false            no access log (modelgate serve's default: no --access-log)
  load_models_at_startup, uvloop (MLServer installs and uses it), h11 (httptools is not installed
                         in either environment), its gRPC server (cannot be switched off; idle)
                         are left as MLServer has them.

This script runs outside Bazel, like tools/bench/run, on the interpreter Bazel's toolchain runs
(/usr/bin/python3.11). The lock's packages come from the workspace's pip repository (the one
`bazel build //models:releases` fetched: <output base>/external/pip/site, a link into the machine's
pip store), or --site=DIR; the services are started with the same PYTHONPATH as tests/serve/harness.py
gives them (the checkout, its tools/, the packages). Prints the table; --json writes every number.
Timings are never test assertions: //tests/bench:serving_bench_test checks only parse_wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MLSERVER_VERSION = "1.7.1"
SERVERS = ("onnx", "torch", "mlserver", "floor")
OIP_DATATYPES = {"int64": "INT64", "int32": "INT32", "bool": "BOOL", "float32": "FP32", "float64": "FP64", "uint8": "UINT8"}
WRK_MARK = "SERVING_BENCH "

# wrk's Lua script: the POST body from a file, and one line of numbers at the end (latencies in µs).
WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(%(body)s, "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  io.write(string.format(
    "%(mark)s{\\"requests\\":%%d,\\"duration_us\\":%%d,\\"bytes\\":%%d,\\"connect_errors\\":%%d," ..
    "\\"read_errors\\":%%d,\\"write_errors\\":%%d,\\"non_2xx\\":%%d,\\"timeouts\\":%%d," ..
    "\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d,\\"max_us\\":%%d,\\"mean_us\\":%%.1f}\\n",
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""

# The MLServer runtime: the bundle's model.onnx on onnxruntime, one intra-op thread, as modelgate runs it.
MLSERVER_RUNTIME = '''\
"""modelgate serving_bench: an MLServer runtime that runs an ONNX file on onnxruntime."""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        ort.set_default_logger_severity(3)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(self.settings.parameters.uri, options, providers=["CPUExecutionProvider"])
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, results)],
        )
'''


def log(message: str) -> None:
    print(f"  [serving] {message}", file=sys.stderr, flush=True)


# ---- parsing (tested by //tests/bench:serving_bench_test)


def parse_wrk(output: str) -> dict:
    """wrk's numbers from the line our Lua `done` prints: requests/s, latencies in ms, errors.
    ValueError when the line is missing (wrk failed before the end of its run)."""
    lines = [line for line in output.splitlines() if line.startswith(WRK_MARK)]
    if not lines:
        raise ValueError(f"wrk printed no result line ({WRK_MARK.strip()}): {output[-500:]!r}")
    raw = json.loads(lines[-1][len(WRK_MARK) :])
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "non_2xx", "timeouts"))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "rps": raw["requests"] / seconds if seconds > 0 else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "errors": errors,
        "non_2xx": raw["non_2xx"],
    }


def parse_proc_status(text: str) -> dict:
    """VmRSS and VmHWM (MiB) from /proc/<pid>/status."""
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        out[key] = int(m.group(1)) / 1024 if m else None
    return out


def torch_mapped(maps: str) -> bool:
    return any(re.search(r"/libtorch[^/]*\.so", line) for line in maps.splitlines())


# ---- the machine, processes


def machine() -> dict:
    cpu = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "host": socket.gethostname(), "kernel": os.uname().release}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime (seconds) of a process and of its live child processes, summed."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            for c in map(int, text):
                out += [c, *children(c)]
    except OSError:
        pass
    return out


def memory(pid: int) -> dict:
    doc = parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    doc["torch"] = torch_mapped(Path(f"/proc/{pid}/maps").read_text())
    kids = children(pid)
    doc["children"] = len(kids)
    doc["children_rss"] = sum(parse_proc_status(Path(f"/proc/{c}/status").read_text())["VmRSS"] or 0 for c in kids if Path(f"/proc/{c}").exists())
    return doc


# ---- inputs, the request, the answer


def request_body(release: Path, rows: int) -> tuple[bytes, dict]:
    from safetensors.numpy import load_file

    signature = json.loads((release / "manifest.json").read_text())["serving"]
    inputs = load_file(str(release / "inputs.safetensors"))
    arrays = {t["name"]: inputs[t["name"]][:rows] for t in signature["inputs"]}
    doc = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": OIP_DATATYPES[str(a.dtype)], "data": a.reshape(-1).tolist()}
            for n, a in arrays.items()
        ]
    }
    return json.dumps(doc, separators=(",", ":")).encode(), arrays


def check_answer(release: Path, rows: int, body: bytes) -> float:
    """The largest difference between the answer's first output and the bundle's expected output."""
    import numpy as np
    from safetensors.numpy import load_file

    signature = json.loads((release / "manifest.json").read_text())["serving"]
    expected = load_file(str(release / "expected.safetensors"))
    doc = json.loads(body)
    worst = 0.0
    for o in signature["outputs"]:
        [entry] = [e for e in doc["outputs"] if e["name"] == o["name"]]
        got = np.asarray(entry["data"], dtype=np.float64).reshape(entry["shape"])
        want = expected[o["name"]][:rows].astype(np.float64)
        if got.shape != want.shape:
            raise RuntimeError(f"output {o['name']}: shape {got.shape}, expected {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > 1e-3:
        raise RuntimeError(f"the answer differs from the bundle's expected output by {worst:g}: not the same model")
    return worst


# ---- the servers


class Work:
    def __init__(self, root: Path, site: str):
        self.root = root
        self.site = site
        self.registry = root / "registry"
        self.keys = None
        for old in (self.registry, root / "keys"):  # a --work reused: new keys, so a new registry
            shutil.rmtree(old, ignore_errors=True)

    def env(self) -> dict:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tools"), self.site]),
            "OMP_NUM_THREADS": "1",
            "MODELGATE_NOTIFY_SECRET": secrets.token_hex(16),
        }

    def promote(self, release: Path) -> None:
        sys.path[:0] = [str(REPO), str(REPO / "tools")]
        from tests.serve import harness

        if self.keys is None:
            self.keys = harness.make_keys(self.root / "keys")
        result = harness.promote(f"file://{self.registry}", release, self.keys["signer"])
        log(f"promoted {release} to file://{self.registry} (stable): {result.status}")


def start_modelgate(work: Work, model: str, runtime: str, name: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    directory = work.root / name
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "serve.log"
    command = [
        sys.executable, "-m", "modelgate.serve", f"--model={model}", "--tag=stable", f"--registry=file://{work.registry}",
        f"--public-key={work.keys['signer_public']}", f"--port={port}", f"--state-dir={directory / 'state'}",
        "--poll-interval=3600", "--threads=1", f"--runtime={runtime}", "--log-level=warning",
    ]  # fmt: skip
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=work.env(), cwd=directory)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/v2/health/ready", process, log_path)
    return process, url, log_path


def mlserver_venv(onnxruntime_version: str) -> Path:
    venv = Path(os.environ.get("MODELGATE_MLSERVER_VENV") or Path.home() / ".cache/modelgate/bench/mlserver-venv")
    want = f"mlserver=={MLSERVER_VERSION} onnxruntime=={onnxruntime_version} {os.path.realpath(sys.executable)}"
    marker = venv / ".modelgate-serving-bench"
    if (venv / "bin/mlserver").exists() and marker.exists() and marker.read_text() == want:
        return venv
    log(f"creating {venv}: pip install {want.rsplit(' ', 1)[0]} (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    r = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", f"mlserver=={MLSERVER_VERSION}", f"onnxruntime=={onnxruntime_version}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"pip install into {venv} failed:\n{r.stderr[-3000:]}")
    marker.write_text(want)
    return venv


def mlserver_settings(port: int, grpc_port: int, metrics_port: int) -> dict:
    return {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "metrics_endpoint": None,
        "gzip_enabled": False,
        "debug": False,
    }


def start_mlserver(work: Work, venv: Path, model: str, release: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    directory = work.root / f"mlserver-{model}"
    shutil.rmtree(directory, ignore_errors=True)
    (directory / model).mkdir(parents=True)
    (directory / "settings.json").write_text(json.dumps(mlserver_settings(port, free_port(), free_port()), indent=2))
    (directory / model / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
    (directory / model / "model-settings.json").write_text(
        json.dumps({"name": model, "implementation": "onnx_runtime.OnnxModel", "parameters": {"uri": str((release / "model.onnx").resolve())}}, indent=2)
    )
    log_path = directory / "mlserver.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    with open(log_path, "wb") as out:
        process = subprocess.Popen([str(venv / "bin/mlserver"), "start", str(directory)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/v2/models/{model}/ready", process, log_path)
    return process, url, log_path


def run_wrk(wrk: str, lua: Path, url: str, connections: int, seconds: float) -> dict:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout=10s", "-s", str(lua), url]
    r = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {r.returncode}: {r.stderr[-1000:]}")
    return parse_wrk(r.stdout)


def measure_server(args, work: Work, name: str, model: str, release: Path, body_path: Path, lua: Path, venv: Path | None) -> dict:
    log(f"{model}: {name} ...")
    if name == "mlserver":
        process, url, log_path = start_mlserver(work, venv, model, release)
    else:
        process, url, log_path = start_modelgate(work, model, name, f"{name}-{model}")
    try:
        infer = f"{url}/v2/models/{model}/infer"
        status, answer = http("POST", infer, body_path.read_bytes())
        if status != 200:
            raise RuntimeError(f"{name}: POST {infer} answered {status}: {answer[:500]!r}")
        diff = check_answer(release, args.rows, answer)
        started_rss = memory(process.pid)
        run_wrk(args.wrk, lua, infer, args.connections, args.warmup)
        cpu0 = cpu_seconds(process.pid)
        result = run_wrk(args.wrk, lua, infer, args.connections, args.duration)
        cpu = cpu_seconds(process.pid) - cpu0
        mem = memory(process.pid)
        result.update(
            server_cpu_ms_per_request=1000 * cpu / max(result["requests"], 1), server_cpu_share=cpu / result["seconds"],
            rss_mib=mem["VmRSS"], hwm_mib=mem["VmHWM"], rss_ready_mib=started_rss["VmRSS"], torch=mem["torch"],
            children=mem["children"], children_rss_mib=mem["children_rss"],
            max_abs_diff=diff, answer_bytes=len(answer), log=str(log_path),
        )  # fmt: skip
        if result["errors"]:
            raise RuntimeError(f"{name}: {result['errors']} failed requests under load (non-2xx {result['non_2xx']}); see {log_path}")
        log(
            f"{model}: {name}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
            f"server CPU {result['server_cpu_ms_per_request']:.2f} ms/req, RSS {result['rss_mib']:.0f} MiB, torch mapped: {result['torch']}"
        )
        return result
    finally:
        stop(process)


# ---- the floor: onnxruntime in a process of its own, no HTTP


def floor_child(model_file: str, inputs_file: str, seconds: float, warmup: float) -> None:
    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    data = np.load(inputs_file)
    feeds = {k: data[k] for k in data.files}
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        session.run(outputs, feeds)
    times = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        t = time.perf_counter()
        session.run(outputs, feeds)
        now = time.perf_counter()
        times.append(now - t)
    wall = now - start
    cpu = time.process_time() - cpu0
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000  # noqa: E731
    mem = memory(os.getpid())
    print(json.dumps({
        "requests": len(times), "seconds": wall, "rps": len(times) / wall, "p50_ms": pick(0.50), "p90_ms": pick(0.90),
        "p99_ms": pick(0.99), "max_ms": times[-1] * 1000, "mean_ms": wall / len(times) * 1000, "errors": 0,
        "server_cpu_ms_per_request": 1000 * cpu / len(times), "server_cpu_share": cpu / wall,
        "rss_mib": mem["VmRSS"], "hwm_mib": mem["VmHWM"], "torch": mem["torch"], "children": 0,
    }))  # fmt: skip


def measure_floor(args, work: Work, model: str, release: Path, arrays: dict) -> dict:
    import numpy as np

    log(f"{model}: floor (onnxruntime in-process, 1 thread) ...")
    inputs_file = work.root / f"floor-{model}.npz"
    np.savez(inputs_file, **arrays)
    r = subprocess.run(
        [sys.executable, __file__, "--floor-child", str(release / "model.onnx"), str(inputs_file), str(args.duration), str(args.warmup)],
        capture_output=True, text=True, env=work.env(),
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"the floor process failed: {r.stderr[-2000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    log(f"{model}: floor: {result['rps']:.0f} calls/s, p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, RSS {result['rss_mib']:.0f} MiB")
    return result


# ---- the table


LABELS = {
    "onnx": "modelgate --runtime=onnx",
    "torch": "modelgate --runtime=torch",
    "mlserver": f"MLServer {MLSERVER_VERSION} (onnxruntime)",
    "floor": "floor: onnxruntime in-process",
}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def render(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        f"Serving benchmark, {doc['date']}, commit {doc['commit']}: {m['nproc']} CPUs ({m['cpu']}), {m['host']}, Linux {m['kernel']}",
        f"Load before: {doc['uptime_before']}",
        f"Load after:  {doc['uptime_after']}",
        f"Client: wrk, 1 thread, {doc['connections']} connections, closed loop, {doc['warmup']:g} s warm-up + {doc['duration']:g} s measured; "
        f"request: OIP v2 JSON infer, {doc['rows']} row(s) of the golden inputs; servers: 1 intra-op thread, OMP_NUM_THREADS=1",
        "",
    ]
    for model, rows in doc["models"].items():
        lines += [
            f"### {model}",
            "",
            "| server | req/s | p50 ms | p99 ms | max ms | server CPU ms/req | VmRSS MiB | VmHWM MiB | torch mapped |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for name in SERVERS:
            r = rows.get(name)
            if not r:
                continue
            lines.append(
                f"| {LABELS[name]} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
                f"{r['server_cpu_ms_per_request']:.3f} | {r['rss_mib']:.0f} | {r['hwm_mib']:.0f} | {'yes' if r['torch'] else 'no'} |"
            )
        o, t, ml, fl = (rows.get(k) or {} for k in ("onnx", "torch", "mlserver", "floor"))
        lines += [
            "",
            f"- modelgate-onnx vs MLServer: throughput {ratio(o.get('rps'), ml.get('rps'))} (goal ≥ 1.00×), "
            f"p99 {o.get('p99_ms', float('nan')):.2f} vs {ml.get('p99_ms', float('nan')):.2f} ms ({ratio(o.get('p99_ms'), ml.get('p99_ms'))}; goal < 1), "
            f"RSS {ratio(o.get('rss_mib'), ml.get('rss_mib'))}",
            f"- onnx vs torch: throughput {ratio(o.get('rps'), t.get('rps'))}, p99 {ratio(o.get('p99_ms'), t.get('p99_ms'))}, RSS {ratio(o.get('rss_mib'), t.get('rss_mib'))}",
            "- each vs the in-process floor (throughput): "
            + ", ".join(f"{k} {ratio(r.get('rps'), fl.get('rps'))}" for k, r in (("onnx", o), ("torch", t), ("mlserver", ml)) if r),
            "",
        ]
    return "\n".join(lines)


# ---- main


def find_site() -> str:
    """The workspace's pip repository (a link into the machine's pip store), as the last build fetched it."""
    for link in sorted(REPO.glob("bazel-*")):
        site = link / ".." / ".." / "external" / "pip" / "site"
        if link.name not in ("bazel-bin", "bazel-out", "bazel-testlogs") and (site / "onnxruntime").is_dir():
            return os.path.realpath(site)
    raise SystemExit("serving_bench: no pip repository found; run `bazel build //models:releases` first, or pass --site=DIR")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny_transformer,image_cnn")
    p.add_argument("--only", default=",".join(SERVERS), help="which of onnx,torch,mlserver,floor")
    p.add_argument("--rows", type=int, default=1, help="rows of the golden inputs per request (default 1)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--releases", default=str(REPO / "bazel-bin" / "models"), help="where <model>/release bundles are")
    p.add_argument("--site", help="the lock's installed packages (default: the workspace's pip repository)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep --work (logs, registry, MLServer model folder)")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)
    only = [s for s in SERVERS if s in args.only.split(",")]
    if not shutil.which(args.wrk):
        raise SystemExit("serving_bench: wrk not found (apt-get install -y wrk)")
    site = args.site or find_site()
    sys.path[:0] = [str(REPO), str(REPO / "tools"), site]

    import onnxruntime

    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "machine": machine(),
        "uptime_before": uptime(),
        "connections": args.connections, "duration": args.duration, "warmup": args.warmup, "rows": args.rows,
        "onnxruntime": onnxruntime.__version__,
        "models": {},
    }  # fmt: skip
    log(f"{doc['machine']['cpu']}, {doc['machine']['nproc']} CPUs; {doc['uptime_before']}")
    venv = mlserver_venv(onnxruntime.__version__) if "mlserver" in only else None
    if venv:
        doc["mlserver"] = {"venv": str(venv), "settings": mlserver_settings(0, 0, 0)}
    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="modelgate-serving-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    work = Work(root, site)
    try:
        for model in args.models.split(","):
            release = Path(args.releases) / model / "release"
            if not (release / "manifest.json").is_file():
                raise SystemExit(f"serving_bench: no release bundle at {release}; run `bazel build //models:releases`")
            body, arrays = request_body(release, args.rows)
            body_path = root / f"body-{model}.json"
            body_path.write_bytes(body)
            lua = root / f"post-{model}.lua"
            lua.write_text(WRK_LUA % {"body": json.dumps(str(body_path)), "mark": WRK_MARK})
            if {"onnx", "torch"} & set(only):
                work.promote(release)
            rows = doc["models"][model] = {"request_bytes": len(body)}
            for name in only:
                if name == "floor":
                    rows[name] = measure_floor(args, work, model, release, arrays)
                else:
                    rows[name] = measure_server(args, work, name, model, release, body_path, lua, venv)
                time.sleep(1)
    finally:
        doc["uptime_after"] = uptime()
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        if args.keep or args.work:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(render(doc))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor-child"]:
        floor_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
