"""Running things for the benchmark: subprocesses with logs, clones of this repository, the
machine's description, the dvc peer's venv."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


SRC = Path(__file__).resolve().parents[2]
BAZEL_FLAGS = ["--disk_cache=", "--noshow_progress", "--color=no", "--curses=no"]
DVC_PINS = ["dvc==3.67.1", "dvc-gs==3.1.0"]
# Sandbox and runfiles settings, each as (the faster setting, Bazel's default). Row 3c runs the cold
# test once more with the other side of whichever .bazelrc sets: the faster settings where it lacks
# them (what they would buy), Bazel's defaults where it has them all (what they buy).
SANDBOX_SETTINGS = [
    ("--sandbox_base=/dev/shm", "--sandbox_base="),
    ("--experimental_sandbox_async_tree_delete_idle_threads=auto", "--experimental_sandbox_async_tree_delete_idle_threads=0"),
    ("--nobuild_runfile_links", "--build_runfile_links"),
]

LOAD_SAMPLES: list[float] = []  # the 1-minute load average at every step, for the report


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    LOAD_SAMPLES.append(os.getloadavg()[0])
    print(f"[bench {stamp}] {message}", flush=True)


def clean_env(**extra: str) -> dict:
    """The caller's environment without settings that would change what a row measures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELGATE_", "STORAGE_EMULATOR_HOST"))}
    env.update(extra)
    return env


@dataclass
class Run:
    wall_s: float
    log: str
    rc: int


def run(argv: list[str], cwd: Path, env: dict, log_path: Path, check: bool = True, timeout: float = 1200) -> Run:
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.run(argv, check=False, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - start
    text = log_path.read_text(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {cwd} exited {proc.returncode}; log {log_path}:\n{text[-3000:]}")
    return Run(wall, text, proc.returncode)


class Clone:
    """A git clone of this repository's HEAD with its own Bazel server and output base."""

    def __init__(self, path: Path, logs: Path):
        self.path = path
        self.logs = logs
        subprocess.run(["git", "clone", "-q", str(SRC), str(path)], check=True)
        self.used_bazel = False

    def bazel(self, name: str, *args: str, env: dict | None = None, check: bool = True) -> Run:
        self.used_bazel = True
        os.sync()  # untimed: the previous step's writes (a removed output base, a clone) are on disk
        return run(["bazel", *args], self.path, env or clean_env(), self.logs / f"{name}.log", check=check)

    def edit(self, model: str, n: int) -> None:
        """The edit a developer makes: one more line in the model's source (its build hash moves)."""
        with open(self.path / "models" / model / "model.py", "a") as f:
            f.write(f"# benchmark edit {n}\n")

    def close(self) -> None:
        if self.used_bazel:
            for args in (["clean", "--expunge"], ["shutdown"]):
                subprocess.run(["bazel", *args], check=False, cwd=self.path, env=clean_env(), capture_output=True, timeout=300)
            self.used_bazel = False


def variant_flags(clone: Path) -> tuple[list[str], bool]:
    """Row 3c's flags and whether they are the faster settings (True) or Bazel's defaults (False)."""
    rc = (clone / ".bazelrc").read_text()
    missing = [fast for fast, _ in SANDBOX_SETTINGS if not re.search(rf"^build {re.escape(fast)}\s*$", rc, re.MULTILINE)]
    if missing:
        return missing, True
    return [default for _, default in SANDBOX_SETTINGS], False


def bazel_test_flags(profile: Path | None = None, extra: list[str] = ()) -> list[str]:
    flags = ["test", *BAZEL_FLAGS, *extra]
    if profile:
        flags.append(f"--profile={profile}")
    return flags


def runfiles_symlinks(clone: Path) -> tuple[int, int]:
    """(runfiles trees, symlinks in them) of a built clone, from the runfiles manifests."""
    trees = links = 0
    out = clone / "bazel-out"
    if not out.exists():
        return 0, 0
    for directory, dirs, files in os.walk(out.resolve()):
        dirs[:] = [x for x in dirs if not x.endswith(".runfiles")]  # the trees themselves: not walked
        for name in files:
            if name.endswith(".runfiles_manifest"):
                trees += 1
                with open(os.path.join(directory, name), "rb") as f:
                    links += sum(1 for _ in f)
    return trees, links


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return {
        "host": platform.node(),
        "nproc": os.cpu_count(),
        "mem_gib": mem_gib,
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
    }


def ensure_dvc(venv: Path) -> tuple[str | None, str]:
    """A throwaway venv with dvc and dvc-gs (not part of the lock: a peer tool, benchmark only)."""
    dvc = venv / "bin" / "dvc"
    if dvc.exists():
        return str(dvc), "reused"
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", *DVC_PINS], check=True, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(venv, ignore_errors=True)
        return None, "pip install dvc dvc-gs took over 5 minutes"
    except subprocess.CalledProcessError as e:
        shutil.rmtree(venv, ignore_errors=True)
        return None, f"pip install {' '.join(DVC_PINS)} failed: {(e.stderr or '').strip()[-300:]}"
    return str(dvc), f"installed in {time.perf_counter() - start:.0f} s"


def swap_bundles_dir() -> Path:
    """Swap-row release bundles are trained once per version of the code that shapes them."""
    tree = subprocess.run(
        ["git", "rev-parse", "HEAD:models/tiny_transformer", "HEAD:tools/modelgate", "HEAD:tests/serve"],
        cwd=SRC, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    key = "-".join(t[:10] for t in tree)
    return Path.home() / ".cache" / "modelgate" / "bench-swap-bundles" / key
