"""Runs tests/portability/train_digest.py in fresh processes, natively or under qemu-user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest



def _trained_in_the_build(names: list[str]) -> list[str]:
    """The models whose weights the build trains: every model of models/models.bzl (the BUILD file
    passes the list) but those pinned to a checkpoint (models/<m>/checkpoint.json), which train
    nothing in the build."""
    root = Path(__file__).absolute().parents[2]  # the runfiles tree: //models:pins is in it
    return [m for m in names if not (root / "models" / m / "checkpoint.json").is_file()]


MODELS = _trained_in_the_build([m for m in os.environ.get("PORTABILITY_MODELS", "").split(",") if m])
# Few steps keep emulated runs short; one differing bit shows in the digest after one step.
STEPS = os.environ.get("PORTABILITY_STEPS", "12")
CHILD = Path(__file__).resolve().parent / "train_digest.py"
# Variables the child must not inherit from whoever runs the test: they are what the test varies.
_OWNED = ("MKL_", "ATEN_", "OMP_", "GLIBC_TUNABLES", "DNNL_", "ONEDNN_")


def interpreter() -> list[str]:
    """The running interpreter as an ELF binary with its flags (qemu-user cannot run the
    toolchain's shell wrapper)."""
    flags = (["-S"] if sys.flags.no_site else []) + (["-s"] if sys.flags.no_user_site else [])
    return [os.path.realpath(sys.executable)] + flags


def train_digests(numerics: str, env: dict | None = None, emulate: str | None = None, timeout: float = 900) -> dict:
    """{model: weight digest, "_aten": the ATen kernels the child ran} for every model."""
    assert MODELS, "PORTABILITY_MODELS is empty; the BUILD file lists the models to check"
    prefix = []
    if emulate:
        qemu = shutil.which("qemu-x86_64")
        if not qemu:
            pytest.fail("qemu-x86_64 is not installed; tools/bootstrap installs it (Debian's qemu-user)", pytrace=False)
        prefix = [qemu, "-cpu", emulate]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_OWNED)}
    child_env.update({
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **(env or {}),
    })
    argv = prefix + interpreter() + [str(CHILD), f"--numerics={numerics}", f"--steps={STEPS}"] + MODELS
    result = subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=timeout)
    where = f"{numerics} mode{' on ' + emulate if emulate else ''} with {env or 'no extra settings'}"
    if result.returncode:
        tail = "\n".join(line for line in result.stderr.splitlines() if "TCG doesn't support" not in line)[-2000:]
        pytest.fail(f"training in {where} failed (exit {result.returncode}):\n{tail}", pytrace=False)
    digests = {}
    for line in result.stdout.splitlines():
        row = json.loads(line)
        digests[row["model"]] = row["digest"]
        digests["_aten"] = row["aten"]
    missing = sorted(set(MODELS) - set(digests))
    assert not missing, f"training in {where} printed no digest for {missing}"
    return digests


def distinct(runs: dict[str, dict], model: str) -> int:
    return len({digests[model] for digests in runs.values()})
