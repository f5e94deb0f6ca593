"""`bazel run //tools:promote -- --tag=TAG [--model=M ...] [flags]`: build, gate and promote releases.

Builds the releases it promotes first, with `bazel build` in the workspace: every model's :release
in //models:releases, or only those named by --model. A release builds only if its gate passed, so
nothing reaches the registry that the gate did not pass, and a model that is not asked for is not
built: its failing gate does not block another model's promotion. The bundles are then handed to
modelgate.cli.promote as --release flags; every other flag is passed on to it.

  --bazel-flag=FLAG   a flag for that build (repeatable), e.g. --bazel-flag=--config=gpu; the
                      build otherwise uses the workspace's .bazelrc and user.bazelrc
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from modelgate.errors import ModelgateError, UsageError
from modelgate.runner import run

RELEASE_SET = "//models:releases"
PROG = "promote"


class PromoteSetupError(ModelgateError):
    """One line for the user; exit status 1 (2 for a usage error)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the models asked for with --model, the --bazel-flag values); both forms of --model."""
    models, bazel_flags = [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("--model="):
            models.append(arg.split("=", 1)[1])
        elif arg == "--model":
            models.append(next(args, ""))
        elif arg.startswith("--bazel-flag="):
            bazel_flags.append(arg.split("=", 1)[1])
    return models, bazel_flags


def _bazel(workspace: Path, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["bazel", *args], cwd=workspace, text=True, check=False,
                              stdout=subprocess.PIPE if capture else sys.stderr, stderr=subprocess.PIPE if capture else None)  # fmt: skip
    except FileNotFoundError:
        raise PromoteSetupError("bazel is not on PATH (tools/bootstrap installs it)") from None


def releases(workspace: Path) -> dict[str, str]:
    """{model: label of its release} for every release in the release set."""
    query = _bazel(workspace, "query", "--output=label", f'kind("_model_release", deps({RELEASE_SET}, 1))')
    if query.returncode:
        detail = (query.stderr.strip().splitlines() or ["no output"])[-1]
        raise PromoteSetupError(f"cannot list the releases of {RELEASE_SET}: {detail}")
    labels = [line.strip() for line in query.stdout.splitlines() if line.strip().startswith("//")]
    # model_package names a model's package after the model: //models/<model>:release.
    return {label.split(":")[0].rsplit("/", 1)[-1]: label for label in labels}


def build_releases(workspace: Path, models: list[str], bazel_flags: list[str]) -> list[Path]:
    """Builds (and so gates) the releases of `models` (all when empty); their bundle directories."""
    known = releases(workspace)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise PromoteSetupError(
            f"no release for model {unknown[0]!r} in {RELEASE_SET}; models with a release: {', '.join(sorted(known)) or 'none'}", 2
        )
    chosen = [known[m] for m in (models or sorted(known))]
    print(f"{PROG}: building and gating {', '.join(chosen)}", file=sys.stderr, flush=True)
    if _bazel(workspace, "build", *bazel_flags, "--", *chosen, capture=False).returncode:
        names = ", ".join(label.split(":")[0].rsplit("/", 1)[-1] for label in chosen)
        raise PromoteSetupError(f"not every release of {names} built (a failed gate or a build error, above); nothing was promoted")
    info = _bazel(workspace, "info", *bazel_flags, "bazel-bin")
    if info.returncode:
        raise PromoteSetupError(f"bazel info bazel-bin failed: {(info.stderr.strip().splitlines() or ['no output'])[-1]}")
    bin_dir = Path(info.stdout.strip())
    return [bin_dir / label.lstrip("/").split(":")[0] / label.split(":")[1] for label in chosen]


def _main(argv: list[str]) -> int:
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        raise UsageError("run me with: bazel run //tools:promote -- --tag=TAG")
    models, bazel_flags = split_args(argv)
    bundles = build_releases(Path(workspace), models, bazel_flags)
    from modelgate.cli import promote

    rest = [a for a in argv if not a.startswith("--bazel-flag=")]
    return promote.main([f"--release={b}" for b in bundles] + rest)


def main(argv: list[str] | None = None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
