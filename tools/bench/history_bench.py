"""Tag reads against history length: fetch --tag, promote, rollback, registry show and a fresh
service's first check, at 10, 1,000 and 10,000 history events, on file:// and fake-gcs-server.

    PYTHONPATH=<clone>:<clone>/tools python tools/bench/history_bench.py --work=DIR [--sizes=10,1000,10000]
        [--backends=file,gcs] [--reps=3] [--json=OUT] [--same-bucket-size]

Each operation runs on a fresh Registry (nothing cached, as a new process or replica would), and
its registry requests are counted by wrapping the Storage (one call, one request on GCS). Long
histories are written through the Registry API (modelgate.testing.history: signed, hash-chained
events), not by thousands of promotes. "service first check" is what a fresh service's first
check reads: Registry.tag_state(strict=True) with the public key (Deployment._check), without the
rollout that follows it. Best of --reps for seconds; requests are the same every repetition.

--same-bucket-size (fake-gcs-server): before each size, other objects are written into the same
bucket (under other/, never read) up to the largest size, so that every column runs against a
bucket of the same size, as a team's bucket is. The emulator answers some requests more slowly as
its bucket grows (a missing object, a conditional create); this holds that apart from the history's
length, which is what the columns compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

M = "tiny_transformer"


def keys(directory: Path) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / "signer.pem", directory / "signer.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(private), str(public)


def fill(uri: str, count: int) -> float:
    """`count` small objects under other/ in the registry's bucket (8 threads); seconds taken."""
    from concurrent.futures import ThreadPoolExecutor

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = storage.Client(credentials=AnonymousCredentials(), project="bench").bucket(uri[len("gs://") :].split("/")[0])
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: bucket.blob(f"other/{i:010d}").upload_from_string(b"x"), range(count)))
    return time.perf_counter() - t


def run_size(uri: str, size: int, work: Path, private: str, public: str, reps: int) -> dict:
    from modelgate.registry import api, bundle as bundles
    from modelgate.registry.registry import Registry
    from modelgate.registry.signing import RecordSigner, RecordVerifier
    from modelgate.registry.storage import open_storage
    from modelgate.registry.uri import parse
    from modelgate.testing import history
    from modelgate.testing.counting import Counting
    from modelgate.testing.releases import build_hash, make_bundle

    def fresh(sign: bool = False):
        storage = Counting(open_storage(parse(uri)))
        r = Registry(storage, signer=RecordSigner(private) if sign else None, verifier=RecordVerifier(public))
        return r, storage

    a = make_bundle(work / "b", seed=1, accuracy=0.95)
    b = make_bundle(work / "b", seed=2, accuracy=0.96)
    r, _ = fresh(sign=True)
    api.promote(r, [bundles.read(a)], "stable", signing_key=lambda: private)
    api.promote(r, [bundles.read(b)], "canary", signing_key=lambda: private)
    t0 = time.perf_counter()
    history.grow(r, M, "canary", (build_hash(a), build_hash(b)), size - 2)
    setup_s = time.perf_counter() - t0
    rows = {}

    def measure(name, op):
        best, requests, own = None, None, None
        for i in range(reps):
            reg, storage = fresh(sign=name in ("promote", "rollback"))
            t = time.perf_counter()
            op(reg, i)
            took = time.perf_counter() - t
            if best is None or took < best:
                best, own = took, took - storage.waited
            requests = len(storage.calls)
        # own: the best run's time outside registry requests (modelgate's reading, checking and
        # signing); the rest is the registry's (or the emulator's) time to answer.
        rows[name] = {"seconds": round(best, 4), "requests": requests, "own_s": round(own, 4)}

    def fetch(reg, i):
        out = work / f"out-{uuid.uuid4().hex}"
        api.fetch(reg, M, out=out, public_key=public, tag="canary")
        shutil.rmtree(out)

    measure("fetch --tag", fetch)
    measure("registry show", lambda reg, i: api.show(reg, M))
    measure("service first check", lambda reg, i: reg.tag_state(M, "canary", strict=True))
    bundles_c = [make_bundle(work / "b", seed=10 + i, accuracy=0.97 + 0.001 * i) for i in range(reps)]
    measure("promote", lambda reg, i: api.promote(reg, [bundles.read(bundles_c[i])], "canary", signing_key=lambda: private, force=True, reason="bench"))
    measure("rollback", lambda reg, i: api.rollback(reg, M, "canary", signing_key=lambda: private))
    return {"events": size, "setup_s": round(setup_s, 1), "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--sizes", default="10,1000,10000")
    p.add_argument("--backends", default="file,gcs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--same-bucket-size", action="store_true", help="fill each GCS bucket with other objects up to the largest size")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    private, public = keys(args.work)
    results = []
    gcs = None
    for backend in args.backends.split(","):
        if backend == "gcs" and gcs is None:
            from modelgate.testing.fake_gcs import FakeGCS

            gcs = FakeGCS()
            os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
            os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")
        try:
            for size in (int(s) for s in args.sizes.split(",")):
                work = args.work / f"{backend}-{size}"
                work.mkdir()
                if backend == "file":
                    uri = f"file://{work / 'registry'}"
                else:
                    from google.auth.credentials import AnonymousCredentials
                    from google.cloud import storage

                    if args.same_bucket_size:  # a fresh emulator for each size: the same server state
                        gcs.stop()
                        gcs = FakeGCS()
                        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
                    bucket = f"mg-{uuid.uuid4().hex[:20]}"
                    storage.Client(credentials=AnonymousCredentials(), project="bench").create_bucket(bucket)
                    uri = f"gs://{bucket}/registry"
                extra = {}
                if backend == "gcs" and args.same_bucket_size:
                    others = max(int(x) for x in args.sizes.split(",")) - size
                    extra = {"other_objects": others, "fill_s": round(fill(uri, others), 1)}
                result = {"backend": backend, **extra, **run_size(uri, size, work, private, public, args.reps)}
                results.append(result)
                print(json.dumps(result), flush=True)
                shutil.rmtree(work, ignore_errors=True)
        finally:
            pass
    if gcs is not None:
        gcs.stop()
    # seconds / requests / seconds outside the requests (modelgate's own work), per backend and size
    print(f"{'operation':<22}" + "".join(f"{r['backend']}@{r['events']:>6}".rjust(28) for r in results))
    for name in results[0]["rows"]:
        print(f"{name:<22}" + "".join(
            f"{r['rows'][name]['seconds']:>8.3f}s {r['rows'][name]['requests']:>3} req {r['rows'][name]['own_s']:>6.3f}s own".rjust(28) for r in results
        ))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
