"""How fake-gcs-server's answer time depends on what its bucket holds, apart from modelgate: the
same single GET, timed in a bucket of 10 history events beside 9,990 other objects and in one of
10,000 history events (tools/bench/history_bench.py --same-bucket-size compares the same two).

    PYTHONPATH=<clone>:<clone>/tools python tools/bench/gcs_emulator_probe.py

Prints the median of 200 GETs of: the slot after the newest event (missing), the head, the
newest event. Real GCS was not available here to compare.
"""
import os, time, statistics
from concurrent.futures import ThreadPoolExecutor
from modelgate.testing.fake_gcs import FakeGCS
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
g = FakeGCS(); os.environ["STORAGE_EMULATOR_HOST"] = g.url
c = storage.Client(credentials=AnonymousCredentials(), project="p")
def bucket(name, history, other):
    b = c.create_bucket(name)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: b.blob(f"models/m/history/{i:010d}.json").upload_from_string(b"{}"), range(1, history + 1)))
        list(pool.map(lambda i: b.blob(f"other/{i:010d}").upload_from_string(b"x"), range(other)))
    b.blob("models/m/head.json").upload_from_string(b"{}")
    return b
def t(fn, n=200):
    xs = []
    for _ in range(n):
        s = time.perf_counter(); fn(); xs.append(time.perf_counter() - s)
    return statistics.median(xs) * 1000
small = bucket("small", 10, 9990)
big = bucket("big", 10000, 0)
for name, b, nxt in (("10 events + 9,990 other", small, 11), ("10,000 events", big, 10001)):
    miss = t(lambda: b.get_blob(f"models/m/history/{nxt:010d}.json"))
    hit = t(lambda: b.get_blob("models/m/head.json"))
    ev = t(lambda: b.get_blob(f"models/m/history/{nxt-1:010d}.json"))
    print(f"{name:28s} missing GET {miss:.2f} ms  head GET {hit:.2f} ms  newest event GET {ev:.2f} ms (median of 200)")
g.stop()
