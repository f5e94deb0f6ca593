"""The portable mode gives the same weights on emulated CPUs of both vendors as on this one.

qemu-user (Debian's qemu-user, installed by tools/bootstrap) runs the training child as an Intel
Haswell (GenuineIntel, AVX2) and as an AMD EPYC Rome (AuthenticAMD, AVX2): MKL and glibc pick
their code paths by vendor and features, and qemu computes approximate instructions (rsqrtps,
rcpps) its own way, as another vendor's silicon would. 20-70x slower than native, so it trains a
few steps (one differing bit shows in the digest after the first), both CPUs side by side, as a
target of its own that takes both cores.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.portability.harness import MODELS, train_digests

CPUS = ["Haswell-v4", "EPYC-Rome-v1"]


@pytest.fixture(scope="module")
def runs():
    with ThreadPoolExecutor(max_workers=len(CPUS)) as pool:
        emulated = dict(zip(CPUS, pool.map(lambda cpu: train_digests("portable", emulate=cpu), CPUS)))
    return {"native": train_digests("portable"), **emulated}


@pytest.mark.parametrize("cpu", CPUS)
def test_emulated_cpu_trains_the_native_weights(runs, cpu):
    native, emulated = runs["native"], runs[cpu]
    differing = [m for m in MODELS if emulated[m] != native[m]]
    assert not differing, (
        f"on an emulated {cpu}, the portable mode trained other weights for {differing}: "
        + ", ".join(f"{m} {emulated[m][:16]} vs {native[m][:16]} natively" for m in differing)
    )
