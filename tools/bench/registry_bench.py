"""Row 4 of the benchmark: promote and fetch of a large synthetic model, beside the raw clients.

    PYTHONPATH=<clone>:<clone>/tools python tools/bench/registry_bench.py --work=DIR --json=OUT
        [--size-mib=1024] [--reps=2] [--dvc=PATH/TO/dvc]

Run by tools/bench/run in the benchmark venv; prints progress and writes one JSON document.
Everything lives under --work (the bundle, fake-gcs-server's files, the local registries) and is
removed as it goes, so at most a few copies of the bundle exist at once.

What is compared, each side by side on the same bytes, `--reps` times interleaved (best of each):
  gcs    modelgate promote to fake-gcs-server     vs  blob.upload_from_filename (same server, client)
  gcs    re-promote of the same build              (bytes uploaded, seconds)
  gcs    modelgate fetch (signature + blake3)     vs  blob.download_to_filename
  local  modelgate promote to file:///...         vs  shutil.copyfile of the bundle's files, each fsynced
  local  re-promote of the same build
  local  modelgate fetch                          vs  shutil.copyfile of the stored blobs
  dvc    `dvc push` of the same weights file to the same fake-gcs-server (when --dvc is given)
Promote to a local registry makes every blob durable (fsync before it is linked into place), so its
baseline is the copy with fsync (the copy without is timed too); a fetch is a plain copy of what
the registry holds, so its baselines are the plain copy and the plain client download. Each
repetition and the end print the ratios (baseline time / modelgate time; >= 0.9 is the goal).
Before each timed operation the machine's dirty pages are written out (sync(2), untimed): the
steps write gigabytes, and without it each one started behind the previous one's write-back,
throttled to the disk's speed by however much was left (a 1 GiB download took 2.0-4.6 s).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

MODEL = "bench_large"
CHUNK = 16 << 20


def log(message: str) -> None:
    print(f"  [promote] {message}", flush=True)


def make_bundle(directory: Path, size: int) -> Path:
    """A release bundle with `size` bytes of random weights and a manifest whose digests match:
    each file's sha256 and blake3, as the release action lists them (modelgate.digests)."""
    from blake3 import blake3

    directory.mkdir(parents=True)
    files = {}
    for name, n in (("weights.safetensors", size), ("model.onnx", 64 << 10)):
        h, b3 = hashlib.sha256(), blake3()
        with open(directory / name, "wb") as f:
            left = n
            while left:
                chunk = os.urandom(min(CHUNK, left))
                h.update(chunk)
                b3.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        files[name] = {"sha256": h.hexdigest(), "blake3": b3.hexdigest(), "size": n}
    manifest = {
        "schema": "modelgate/release@1",
        "model": MODEL,
        "build_hash": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        "files": files,
        "inputs": {},
        "toolchain": {"python": sys.version.split()[0]},
        "config": {},
        "metrics": {"accuracy": 0.9},
        "metric_gates": {"accuracy": {"floor": 0.5, "max_regression": 0.02, "higher_is_better": True}},
        "gate": {"passed": True, "checks": [{"name": "synthetic", "passed": True, "detail": "benchmark bundle"}]},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def make_keys(directory: Path) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "signer.pem", directory / "signer.pub.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(private), str(public)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class Transfers:
    """The timed operations, on one bundle, one fake-gcs-server and fresh registries."""

    def __init__(self, work: Path, bundle_dir: Path, gcs_url: str, reps: int):
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        from modelgate.registry import bundle as bundles
        from modelgate.registry.storage import CONNECT_TIMEOUT_S, DEFAULT_GCS_TIMEOUT_S, READ_TIMEOUT_S

        self.work, self.bundle_dir, self.reps = work, bundle_dir, reps
        self.bundle = bundles.read(bundle_dir)
        self.private, self.public = make_keys(work / "keys")
        os.environ["STORAGE_EMULATOR_HOST"] = gcs_url
        # The raw client with the settings modelgate's GCS backend uses (timeouts, retry budget).
        self.client = storage.Client()
        self.retry = DEFAULT_RETRY.with_timeout(DEFAULT_GCS_TIMEOUT_S)
        self.timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        self.samples: dict[str, list[float]] = {k: [] for k in (
            "raw_upload", "promote", "repromote", "raw_download", "fetch",
            "copy", "copy_fsync", "local_promote", "local_repromote", "local_copy_out", "local_fetch",
        )}  # fmt: skip
        self.uploaded: dict[str, list[int]] = {"promote": [], "repromote": [], "local_promote": [], "local_repromote": []}
        self.profiles: dict[str, list[dict]] = {}

    def registry(self, uri: str):
        from modelgate.registry.registry import Registry
        from modelgate.registry.storage import open_storage
        from modelgate.registry.uri import parse

        return Registry(open_storage(parse(uri)))

    def promote(self, key: str, uri: str, bundle=None, profile: bool = False) -> None:
        from modelgate.registry import api

        registry = self.registry(uri)
        profiler = cProfile.Profile() if profile else None
        settle()
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        (result,) = api.promote(registry, [bundle or self.bundle], "stable", signing_key=lambda: self.private)
        if profiler:
            profiler.disable()
            self.profiles[key] = top_functions(profiler)
            self.profiles[f"{key}_kinds"] = breakdown(profiler)
        if bundle is None:
            self.samples[key].append(time.perf_counter() - start)
            self.uploaded[key].append(result.bytes_uploaded)

    def fetch(self, key: str, uri: str) -> None:
        from modelgate.registry import api

        registry = self.registry(uri)
        out = self.work / "fetched"
        settle()
        start = time.perf_counter()
        api.fetch(registry, MODEL, out=out, public_key=self.public, tag="stable")
        self.samples[key].append(time.perf_counter() - start)
        drop(out)

    def warm_up(self) -> None:
        """First calls import and initialise model-signing, the GCS client and their schemas: done once
        on a tiny bundle, untimed, so that the timed calls compare transfers."""
        from modelgate.registry import api
        from modelgate.registry import bundle as bundles

        tiny = bundles.read(make_bundle(self.work / "warmup-bundle", 1024))
        bucket = self.client.create_bucket(f"warmup-{uuid.uuid4().hex[:8]}")
        for uri in (f"gs://{bucket.name}/r", f"file://{self.work / 'warmup'}"):
            self.promote("warm-up", uri, bundle=tiny)
            api.fetch(self.registry(uri), MODEL, out=self.work / "warmup-out", public_key=self.public, tag="stable")
            drop(self.work / "warmup-out")

    def gcs(self) -> None:
        bucket = self.client.create_bucket(f"bench-{uuid.uuid4().hex[:12]}")
        uri = f"gs://{bucket.name}/registry"
        blobs = {f.name: bucket.blob(f"raw/{uuid.uuid4().hex}") for f in self.bundle.files}
        settle()
        start = time.perf_counter()
        for f in self.bundle.files:
            blobs[f.name].upload_from_filename(str(f.path), retry=self.retry, timeout=self.timeout)
        self.samples["raw_upload"].append(time.perf_counter() - start)
        self.promote("promote", uri)
        self.promote("repromote", uri)
        out = self.work / "download"
        out.mkdir()
        settle()
        start = time.perf_counter()
        for f in self.bundle.files:
            blobs[f.name].download_to_filename(str(out / f.name), retry=self.retry, timeout=self.timeout)
        self.samples["raw_download"].append(time.perf_counter() - start)
        drop(out)
        self.fetch("fetch", uri)
        bucket.delete(force=True)  # frees the server's disk before the next repetition
        s = self.samples
        log(f"gcs: raw upload {s['raw_upload'][-1]:.2f} s, promote {s['promote'][-1]:.2f} s, re-promote "
            f"{s['repromote'][-1]:.2f} s ({self.uploaded['repromote'][-1]} bytes); raw download "
            f"{s['raw_download'][-1]:.2f} s, verified fetch {s['fetch'][-1]:.2f} s")  # fmt: skip

    def local(self, rep: int) -> None:
        """One repetition of the local rows. A file written moments before can be slow to read the
        first time on this kind of machine (seconds instead of a third of one), so the order of each
        pair that reads the same file alternates between repetitions: copy and promote (the bundle),
        then copy-out and verified fetch (the promoted blobs)."""
        copy_dir = self.work / "copy"

        def copies() -> None:
            for key, sync in (("copy", False), ("copy_fsync", True)):
                copy_dir.mkdir()
                settle()
                start = time.perf_counter()
                for f in self.bundle.files:
                    shutil.copyfile(f.path, copy_dir / f.name)
                    if sync:
                        fsync_path(copy_dir / f.name)
                self.samples[key].append(time.perf_counter() - start)
                drop(copy_dir)

        def copy_out() -> None:
            out = self.work / "copy-out"
            out.mkdir()
            settle()
            start = time.perf_counter()
            for f in self.bundle.files:  # the raw "download" of a local registry: copy its blobs out
                shutil.copyfile(root / "blobs" / "sha256" / f.sha256, out / f.name)
            self.samples["local_copy_out"].append(time.perf_counter() - start)
            drop(out)

        root = self.work / f"local-{rep}"
        uri = f"file://{root}"
        if rep % 2 == 0:
            copies()
        self.promote("local_promote", uri)
        if rep % 2:
            copies()
        self.promote("local_repromote", uri)
        for step in (copy_out, lambda: self.fetch("local_fetch", uri))[:: 1 if rep % 2 == 0 else -1]:
            step()
        drop(root)
        s = self.samples
        log(f"local: copy {s['copy'][-1]:.2f} s (+fsync {s['copy_fsync'][-1]:.2f} s), promote {s['local_promote'][-1]:.2f} s, "
            f"re-promote {s['local_repromote'][-1]:.2f} s, copy out {s['local_copy_out'][-1]:.2f} s, "
            f"verified fetch {s['local_fetch'][-1]:.2f} s")  # fmt: skip
        log("ratios this repetition: " + ratio_line({k: v[-1] for k, v in s.items() if v}))

    def profile(self) -> dict[str, float]:
        """One more promote per backend under cProfile, not among the timings."""
        seconds = {}
        bucket = self.client.create_bucket(f"bench-profile-{uuid.uuid4().hex[:8]}")
        for name, uri in (("gcs", f"gs://{bucket.name}/registry"), ("local", f"file://{self.work / 'local-profile'}")):
            start = time.perf_counter()
            self.promote(f"promote_{name}", uri, bundle=self.bundle, profile=True)
            seconds[name] = time.perf_counter() - start
        bucket.delete(force=True)
        drop(self.work / "local-profile")
        return seconds


def run(args) -> dict:
    from google.cloud.storage import blob as blob_module

    from modelgate.registry import storage as mg_storage
    from modelgate.testing.fake_gcs import FakeGCS

    work = args.work
    start = time.perf_counter()
    bundle_dir = make_bundle(work / "bundle", args.size_mib << 20)
    log(f"fabricated a {args.size_mib} MiB bundle in {time.perf_counter() - start:.1f} s (random bytes, manifest digests match)")
    gcs = FakeGCS(work / "gcs")
    try:
        t = Transfers(work, bundle_dir, gcs.url, args.reps)
        t.warm_up()
        for rep in range(args.reps if "gcs" in args.backends else 0):
            log(f"fake-gcs-server: repetition {rep + 1} of {args.reps}")
            t.gcs()
        # A local transfer of 1 GiB takes well under a second and a single sample of it swings by
        # a third (page cache, write-back): each side is the best of more repetitions.
        for rep in range(args.local_reps if "local" in args.backends else 0):
            log(f"local registry: repetition {rep + 1} of {args.local_reps}")
            t.local(rep)
        results = {
            "size_bytes": t.bundle.total_size,
            "reps": args.reps,
            "local_reps": args.local_reps,
            "samples": t.samples,
            "best": {k: min(v) for k, v in t.samples.items() if v},
            "promoted_bytes": {"gcs": t.uploaded["promote"], "local": t.uploaded["local_promote"]},
            "repromote_bytes": {"gcs": t.uploaded["repromote"], "local": t.uploaded["local_repromote"]},
            "ratios": ratios({k: min(v) for k, v in t.samples.items() if v}),
            "sha256_seconds": hash_seconds(bundle_dir / "weights.safetensors"),
            "blake3_seconds": hash_seconds(bundle_dir / "weights.safetensors", "blake3"),
            # Resumable-upload chunk sizes: modelgate's, and the client default the raw upload uses.
            "chunk_bytes": {"modelgate": mg_storage.UPLOAD_CHUNK, "client_default": blob_module._DEFAULT_CHUNKSIZE},
            "dvc": None,
        }
        log(f"ratios, best of {args.reps}: " + ratio_line(results["best"]))
        if args.profile:
            results["profile_seconds"] = t.profile()
            results["profile"] = t.profiles
        if args.dvc:
            results["dvc"] = dvc_push(args.dvc, bundle_dir / "weights.safetensors", work, t.client, args.reps)
    finally:
        gcs.stop()
    return results


# (row, modelgate's sample, the baseline's sample): the ratios the goals are stated in.
RATIOS = (
    ("promote gcs / upload_from_filename", "promote", "raw_upload"),
    ("promote local / copy+fsync", "local_promote", "copy_fsync"),
    ("fetch gcs / download_to_filename", "fetch", "raw_download"),
    ("fetch local / copy", "local_fetch", "local_copy_out"),
)


def ratios(seconds: dict[str, float]) -> dict[str, float]:
    """Baseline time over modelgate's time (its throughput relative to the baseline's)."""
    return {name: seconds[raw] / seconds[mine] for name, mine, raw in RATIOS if seconds.get(mine) and raw in seconds}


def ratio_line(seconds: dict[str, float]) -> str:
    return "; ".join(f"{name} {r:.2f}x" for name, r in ratios(seconds).items())


def settle() -> None:
    """Writes out every dirty page before a timed operation (see the module docstring)."""
    os.sync()


def hash_seconds(path: Path, algorithm: str = "sha256") -> float:
    """What one pass of `algorithm` (sha256, or blake3 on one thread) over the weights costs
    (page-cached): the floor of a verified transfer on one stream with that digest."""
    if algorithm == "blake3":
        from blake3 import blake3

        h = blake3(max_threads=1)
    else:
        h = hashlib.sha256()
    start = time.perf_counter()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return time.perf_counter() - start


# Where a profiled promote's own time goes, by kind of work (builtins named as top_functions names them).
KINDS = {
    "_hashlib.HASH.update": "sha256",
    "blake3.blake3.update": "blake3",
    "_io.BufferedReader.read": "reading files",
    "_io.FileIO.readinto": "reading files",
    "posix.sendfile": "copying (kernel)",
    "posix.copy_file_range": "copying (kernel)",
    "_io.BufferedWriter.write": "writing files",
    "posix.fsync": "fsync",
    "posix.readv": "reading files",
    "posix.write": "writing files",
    "_queue.SimpleQueue.get": "waiting on the hashing thread",
    "_thread.lock.acquire": "waiting on the hashing thread",
    "_socket.socket.recv_into": "waiting on the server",
    "_socket.socket.sendall": "sending",
}


def breakdown(profiler: cProfile.Profile) -> dict[str, float]:
    """Own time summed by kind of work, over every function of one profiled promote."""
    out: dict[str, float] = {}
    for row in top_functions(profiler, n=None):
        kind = KINDS.get(row["function"], "other Python")
        out[kind] = out.get(kind, 0.0) + row["own_s"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def top_functions(profiler: cProfile.Profile, n: int | None = 8) -> list[dict]:
    """The functions with the most own time (tottime) in one profiled promote."""
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        if filename == "~":  # a builtin: "<method 'recv_into' of '_socket.socket' objects>" -> _socket.socket.recv_into
            m = re.match(r"<(?:method|built-in method) '?([\w.]+)'?(?: of '([\w.]+)' objects)?>", name)
            function = (f"{m.group(2)}.{m.group(1)}" if m.group(2) else m.group(1)) if m else name
        else:
            function = f"{'/'.join(Path(filename).parts[-2:])}:{line}({name})"
        rows.append({"function": function, "calls": ncalls, "own_s": tottime, "cumulative_s": cumtime})
    rows.sort(key=lambda r: -r["own_s"])
    return rows if n is None else rows[:n]


def dvc_push(dvc: str, weights: Path, work: Path, client, reps: int) -> dict:
    """`dvc push` of the same weights to the same emulator (gcsfs honours STORAGE_EMULATOR_HOST)."""
    env = {**os.environ, "NO_GCE_CHECK": "true", "DVC_NO_ANALYTICS": "1"}
    times = []
    for rep in range(reps):
        repo = work / f"dvc-{rep}"
        repo.mkdir()
        shutil.copyfile(weights, repo / "weights.safetensors")
        bucket = f"bench-dvc-{uuid.uuid4().hex[:8]}"
        client.create_bucket(bucket)

        dvc_cmd(dvc, repo, env, "init", "-q", "--no-scm")
        dvc_cmd(dvc, repo, env, "add", "-q", "weights.safetensors")  # hashes and moves into .dvc/cache: not timed
        dvc_cmd(dvc, repo, env, "remote", "add", "-d", "bench", f"gs://{bucket}/store")
        t, out = timed(lambda: dvc_cmd(dvc, repo, env, "push"))  # noqa: B023 - called at once
        times.append(t)
        log(f"dvc push {t:.2f} s ({out.stdout.strip().splitlines()[-1] if out.stdout.strip() else 'no output'})")
        drop(repo)
        client.bucket(bucket).delete(force=True)
    version = subprocess.run([dvc, "--version"], check=False, capture_output=True, text=True).stdout.strip()
    return {"push": times, "best": min(times), "version": version}


def dvc_cmd(dvc: str, repo: Path, env: dict, *argv: str) -> subprocess.CompletedProcess:
    out = subprocess.run([dvc, *argv], check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(argv)} failed: {(out.stderr or out.stdout).strip()[-400:]}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="an empty or missing directory for every file")
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--reps", type=int, default=2, help="repetitions of the fake-gcs-server transfers")
    p.add_argument("--local-reps", type=int, default=5, help="repetitions of the local-registry transfers")
    p.add_argument("--dvc", help="a dvc executable with dvc-gs, for the `dvc push` peer")
    p.add_argument("--profile", action="store_true", help="cProfile the first promote of each backend")
    p.add_argument("--backends", default="gcs,local", help="comma-separated: gcs, local (both by default; rows.py needs both)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        results = run(args)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
