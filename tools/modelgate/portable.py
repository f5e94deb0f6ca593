"""Portable training numerics: the one place that decides how modelgate trains on a CPU.

Inference of a fixed checkpoint agrees across x86-64 CPUs to ~1e-6, far inside any golden
tolerance. Training does not: a hundred optimizer steps amplify last-bit differences between
kernels into logits 0.1 apart, so weights trained on an Intel Xeon and on an AMD EPYC differ
although their build hash is the same. Every path that trains (the export action, golden_update's
export, tools/bin/golden_test.py without Bazel, the benchmark's plain pipeline) therefore trains in
this mode, and the mode is part of the build hash:

  MKL_CBWR=COMPATIBLE        MKL's conditional numerical reproducibility branch: the same code
                             path on every x86-64 CPU (no rcpps/rsqrtps, whose results differ
                             between vendors); it needs a fixed thread count
  ATEN_CPU_CAPABILITY=default  ATen's portable kernels instead of the AVX2/AVX-512 ones picked per CPU
  oneDNN off                 oneDNN promises nothing across microarchitectures
  one thread                 reductions in one order
  deterministic algorithms, fixed seeds
  correctly rounded sqrt     MKL's vector sqrt (behind torch.sqrt on CPU) is not correctly rounded
                             and its last bits depend on the CPU; AdamW takes it every step, and
                             models take it too (sequence_rnn standardizes its inputs), so while a
                             model trains every aten sqrt is IEEE's (numpy's), see `train`

MKL and ATen read their settings once, when they first run, so `prepare_environment()` must run
before torch is imported (tools/bin/model_tool.py does that; the Bazel action also sets ENV). `enter()`
then checks that the settings are in effect and raises PortableModeError if not: an export never
trains in a mode it cannot name. Measured (README, "Portable training"): bit-identical weights on
AMD EPYC Zen 3 and Zen 5, and on an emulated Intel Haswell and AMD EPYC-Rome, for every model.

Inference paths (the gate, golden comparisons of saved weights, serving, GPU tests) keep the
default kernels: their results agree within tolerance everywhere, and they run faster.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import warnings

from modelgate.errors import ModelgateError

MODE = "portable-1"
# What the mode sets in the environment of a process that trains. Read by libraries at load time.
ENV = {
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "default",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
# mkl_service.h: mkl_cbwr_get(MKL_CBWR_BRANCH) returns the branch in force.
_MKL_CBWR_BRANCH, _MKL_CBWR_COMPATIBLE = 1, 3
PORTABLE_MACHINES = ("x86_64",)


class PortableModeError(ModelgateError):
    """Training was asked for in a process where the portable mode is not in effect."""


def prepare_environment(environ=os.environ) -> None:
    """Puts ENV in place for this process. Call before `import torch`; overrides what the caller set."""
    environ.update(ENV)


def cpu_model() -> str:
    """The CPU, as lscpu names it, with family, model and widest vector unit (provenance only:
    never part of a build hash). E.g. "AMD EPYC (AuthenticAMD family 25 model 1; AVX2)"."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    flags = set(fields.get("flags", "").split())
    vector = next((name.upper() for name in ("avx512f", "avx2", "avx", "sse4_2") if name in flags), "no SIMD flags")
    vector = "AVX-512" if vector == "AVX512F" else vector
    name = fields.get("model name", "unknown")
    return f"{name} ({fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}; {vector})"


def _mkl_cbwr_branch(torch) -> int | None:
    """MKL's CBWR branch in force, or None where this torch has no MKL we can ask."""
    if not torch.backends.mkl.is_available():
        return None
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        get = ctypes.CDLL(library).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(_MKL_CBWR_BRANCH))


def _problems(torch) -> list[str]:
    problems = []
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        problems.append(f"ATen runs its {capability} kernels (ATEN_CPU_CAPABILITY=default was not set before torch loaded)")
    branch = _mkl_cbwr_branch(torch)
    if branch is not None and branch != _MKL_CBWR_COMPATIBLE:
        problems.append(f"MKL's CBWR branch is {branch}, not COMPATIBLE ({_MKL_CBWR_COMPATIBLE}) (MKL_CBWR=COMPATIBLE was not set before MKL loaded)")
    if branch is None and torch.backends.mkl.is_available() and os.environ.get("MKL_CBWR") != "COMPATIBLE":
        problems.append("MKL_CBWR is not COMPATIBLE and this torch's MKL cannot be asked")
    return problems


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def deterministic(seed: int = 0) -> None:
    """One thread, deterministic algorithms, fixed seeds: for inference paths (gate, golden)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ENV["CUBLAS_WORKSPACE_CONFIG"])
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    seed_everything(seed)


def enter(seed: int = 0, strict: bool = True) -> dict:
    """Switches this process to the portable training mode and returns its identity (for the build
    hash). strict: raise PortableModeError where a setting that must precede torch's loading is
    not in effect; otherwise return the identity of the mode actually in force ("native")."""
    import torch

    deterministic(seed)
    torch.backends.mkldnn.enabled = False
    problems = _problems(torch)
    if problems and strict:
        raise PortableModeError(
            "refusing to train outside the portable numerics mode: " + "; ".join(problems)
            + ". Run training through tools/bin/model_tool.py (or call modelgate.portable.prepare_environment() before importing torch)"
        )
    return identity(torch, portable=not problems)


def identity(torch=None, portable: bool = True) -> dict:
    """What decides the numbers of a training run, and nothing host-specific beyond it: the CPU
    architecture, the torch build and the numerics mode. Two machines with equal identities train
    bit-identical weights (on x86-64); the build hash carries it, so caches are shared exactly there."""
    if torch is None:
        import torch
    ident = {
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "numerics": MODE if portable else "native",
    }
    if not portable:
        # Outside the portable mode the results depend on these, so caches must not be shared
        # across them either.
        ident["aten"] = torch.backends.cpu.get_cpu_capability()
        ident["mkl_cbwr"] = str(_mkl_cbwr_branch(torch))
        ident["threads"] = str(torch.get_num_threads())
    return ident


def provenance() -> dict:
    """Where a build or golden data was made: recorded beside the build hash, never inside it."""
    return {"cpu": cpu_model(), "machine": platform.machine()}


def platform_note(trained_on: str | None) -> str:
    """One line for a failing gate or golden test on a platform whose training numbers differ."""
    here = platform.machine()
    if here in PORTABLE_MACHINES and (trained_on in (None, "") or trained_on == here):
        return ""
    origin = f"golden data was made on {trained_on}" if trained_on else "golden data was made elsewhere"
    return (
        f"note: this machine is {here} and {origin}; modelgate's portable training numerics give the same "
        f"weights on every {'/'.join(PORTABLE_MACHINES)} CPU only, so weights trained here differ in their last bits "
        f"(build on x86-64, or pin a checkpoint)"
    )


def exact_sqrt(tensor):
    """Correctly rounded sqrt of a CPU tensor (IEEE 754's, computed by numpy), in torch's result
    dtype: integers become the default float dtype, half types are computed in float32."""
    import numpy as np
    import torch

    tensor = tensor.detach()
    if tensor.is_complex():
        return torch.from_numpy(np.sqrt(tensor.contiguous().numpy()))
    dtype = tensor.dtype if tensor.is_floating_point() else torch.get_default_dtype()
    work = tensor.to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype).contiguous()
    return torch.from_numpy(np.sqrt(work.numpy())).to(dtype)


@contextlib.contextmanager
def correctly_rounded():
    """While active, ATen's CPU sqrt (functional, in-place and out=) is `exact_sqrt`: the
    optimizer's, the model's own and those inside library code alike. It replaces the kernel
    below autograd, so gradients are unchanged (sqrt's backward uses its result), and no other
    op pays for it. `x ** 0.5` reaches the same MKL kernel without passing the dispatcher's sqrt,
    so models write torch.sqrt."""
    import torch

    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        # "Overriding a previously registered kernel": that is the point.
        warnings.simplefilter("ignore", UserWarning)
        library.impl("sqrt", exact_sqrt, "CPU")
        library.impl("sqrt_", lambda tensor: tensor.copy_(exact_sqrt(tensor)), "CPU")
        library.impl("sqrt.out", lambda tensor, out: out.resize_(tensor.shape).copy_(exact_sqrt(tensor)), "CPU")
    try:
        yield
    finally:
        library._destroy()  # the dispatcher falls back to ATen's kernels


def train(spec, strict: bool = True):
    """Builds and trains `spec`'s model in the portable mode. Returns (model in eval mode, the
    spec's training stats, the mode's identity for the build hash)."""
    ident = enter(int(spec.config.get("seed", 0)), strict=strict)
    model = spec.new_model()
    with correctly_rounded():
        stats = spec.train(model, spec.config) or {}
    return model.eval(), dict(stats), ident
