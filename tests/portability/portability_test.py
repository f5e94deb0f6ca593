"""Training in the portable numerics mode gives the same weights whatever the CPU offers.

Each model trains (a few steps: any difference shows in the first bits it touches) in fresh
processes under kernel settings that change what the CPU's libraries do, and, in
emulated_test.py, on emulated CPUs of both vendors. The portable mode must give one digest per
model across all of them. The control trains the same way without the portable mode and must
see at least one setting change the weights: otherwise the settings exercise nothing and the
first assertion proves nothing.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.portability.harness import MODELS, distinct, train_digests

# Settings a machine or a user may bring. The portable mode overrides what it owns (ATen's
# kernels, MKL's branch, threads) and must be immune to the rest.
VARIANTS = {
    "as the machine is": {},
    "ATen's kernels chosen by the user (avx2)": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATen's portable kernels (default)": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL limited to SSE4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "oneDNN limited to SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "glibc without AVX2 and FMA": {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F"},
}


def train_all(numerics: str) -> dict:
    # Two at a time: each child is single-threaded.
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(VARIANTS, pool.map(lambda env: train_digests(numerics, env), VARIANTS.values())))


@pytest.fixture(scope="module")
def portable_runs():
    return train_all("portable")


def test_portable_mode_gives_one_digest_per_model_under_every_setting(portable_runs):
    reference = portable_runs["as the machine is"]
    for variant, digests in portable_runs.items():
        for model in MODELS:
            assert digests[model] == reference[model], (
                f"{model} trained to other weights with {variant}: {digests[model][:16]} vs {reference[model][:16]}"
            )


def test_portable_mode_runs_atens_portable_kernels_whatever_the_user_asked(portable_runs):
    for variant, digests in portable_runs.items():
        assert digests["_aten"] == "DEFAULT", f"{variant}: ATen ran {digests['_aten']}"


def test_control_without_portable_mode_the_settings_change_the_weights():
    runs = train_all("native")
    sensitive = {model: distinct(runs, model) for model in MODELS}
    assert any(count > 1 for count in sensitive.values()), (
        "no kernel setting changed any model's weights outside the portable mode; "
        f"the settings in VARIANTS no longer exercise anything ({sensitive})"
    )
