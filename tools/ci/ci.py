#!/usr/bin/env python3
"""The commands CI runs, as data: one plan per (event, job), printed or run.

    tools/ci/ci.py plan EVENT JOB        # print the exact command lines, run nothing
    tools/ci/ci.py run EVENT JOB         # run them (what tools/ci/<event>.sh does)
    tools/ci/ci.py golden [--update]     # every plan under a fixed environment (golden_commands.txt)
    tools/ci/ci.py releases TESTS_FILE --out=FILE    # the :release of each model an affected test is in
    tools/ci/ci.py collect-reports [--all]           # test logs and release manifests into the reports
    tools/ci/ci.py check-release-tag TAG --on=REV    # TAG is a version and its commit is on REV

EVENT is pull_request, main or release; the workflows in .github/workflows call
tools/ci/<event>.sh JOB, which runs this. The inputs come from the environment (the workflow sets
them from the event, repository variables and secrets); see INPUTS. A flag change shows in review
as a change to tools/ci/golden_commands.txt (XLA's build_tools/ci keeps its invocations the same way).

Only the standard library: it runs on a fresh runner before tools/bootstrap.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# Not resolved: in a test the file is a runfiles link, and the golden file is the one beside it.
ROOT = Path(__file__).absolute().parents[2]
GOLDEN = ROOT / "tools/ci/golden_commands.txt"
PROG = "ci"

# The inputs, all from the environment: name -> what it is (README: CI).
INPUTS = {
    "MODELGATE_CI_BASE": "the revision to compare with: origin/<base branch> (pull request), the previous head (main)",
    "MODELGATE_CI_TAG": "the pushed tag, vX.Y.Z or vX.Y.Z-rc.N (release)",
    "MODELGATE_CI_REPORTS": "where logs and reports go; default $RUNNER_TEMP/ci-reports (the workflows upload it), else /tmp/modelgate-ci-reports",
    "MODELGATE_REGISTRY": "the registry promotions go to, gs://BUCKET/PREFIX (repository variable)",
    "MODELGATE_NOTIFY": "endpoints promote notifies, space-separated (repository variable; optional)",
    "MODELGATE_REMOTE_CACHE": "the team Bazel cache URL (repository variable; optional); tools/bazel reads it",
    "MODELGATE_REQUIRE_GPU": "true (default): GPU tests run on the `gpu` runner and promotion demands their receipts",
    "MODELGATE_REMOTE_CACHE_TOKEN": "secret, from google-github-actions/auth: a bearer token for the cache (never printed)",
    "MODELGATE_SIGNING_KEY_PEM": "secret: the EC private key promotions are signed with (never printed)",
    "MODELGATE_NOTIFY_SECRET": "secret: the HMAC key of promote's notifications (read by promote itself)",
}

# The environment the golden file is generated under: what a real run on GitHub sees.
GOLDEN_ENV = {
    "MODELGATE_CI_BASE": "origin/main",
    "MODELGATE_CI_TAG": "v0.1.0",
    "RUNNER_TEMP": "/home/runner/work/_temp",
    "MODELGATE_REGISTRY": "gs://example-modelgate-registry/models",
    "MODELGATE_NOTIFY": "https://serve.example.com/notify",
    "MODELGATE_REMOTE_CACHE": "https://storage.googleapis.com/example-modelgate-bazel-cache",
    "MODELGATE_REQUIRE_GPU": "true",
}
# Per event: a push to main compares with the previous head (github.event.before).
GOLDEN_EVENT_ENV = {"main": {"MODELGATE_CI_BASE": "3f2c1e0d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e"}}
# Extra golden cases: (title, event, job, environment overrides).
GOLDEN_VARIANTS = [
    ("release candidate: the version tag only, stable stays", "release", "promote", {"MODELGATE_CI_TAG": "v0.2.0-rc.1"}),
    ("no GPU runner (MODELGATE_REQUIRE_GPU=false)", "main", "promote", {"MODELGATE_REQUIRE_GPU": "false"}),
]

VERSION_TAG = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-rc\.(0|[1-9]\d*))?$")


class CIError(Exception):
    """One line for the user; exit status 2."""


@dataclass(frozen=True)
class Command:
    """One command line of a job: argv, extra environment, and whether it runs after a failure."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    always: bool = False  # run even when an earlier command failed (reports, the gates' verdicts)

    def line(self) -> str:
        prefix = [f"{k}={shlex.quote(v)}" for k, v in self.env]
        return " ".join([*prefix, shlex.join(self.argv)])


@dataclass(frozen=True)
class Plan:
    event: str
    job: str
    commands: tuple[Command, ...]
    # Done by the runner before the commands, from secrets; printed as comments, values never.
    setup: tuple[str, ...] = field(default=())

    def lines(self) -> list[str]:
        return [f"# {s}" for s in self.setup] + [c.line() + ("    # always" if c.always else "") for c in self.commands]


@dataclass(frozen=True)
class Inputs:
    base: str
    tag: str
    reports: str
    registry: str
    notify: tuple[str, ...]
    remote_cache: str
    require_gpu: bool
    cache_token: bool
    signing_key: bool

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Inputs":
        require = env.get("MODELGATE_REQUIRE_GPU", "true").strip().lower() or "true"
        if require not in ("true", "false"):
            raise CIError(f"MODELGATE_REQUIRE_GPU={require!r}: use true or false")
        return cls(
            base=env.get("MODELGATE_CI_BASE", "").strip(),
            tag=env.get("MODELGATE_CI_TAG", "").strip(),
            reports=env.get("MODELGATE_CI_REPORTS", "").strip()
            or (f"{env['RUNNER_TEMP']}/ci-reports" if env.get("RUNNER_TEMP") else "/tmp/modelgate-ci-reports"),
            registry=env.get("MODELGATE_REGISTRY", "").strip(),
            notify=tuple(env.get("MODELGATE_NOTIFY", "").split()),
            remote_cache=env.get("MODELGATE_REMOTE_CACHE", "").strip(),
            require_gpu=require == "true",
            cache_token=bool(env.get("MODELGATE_REMOTE_CACHE_TOKEN")),
            signing_key=bool(env.get("MODELGATE_SIGNING_KEY_PEM")),
        )

    def need(self, name: str, value: str, why: str) -> str:
        if not value:
            raise CIError(f"${name} is not set: {why}")
        return value


# --------------------------------------------------------------------------------------------------
# The plans

BOOTSTRAP = Command("bootstrap", ("tools/bootstrap",))
CI_PY = "tools/ci/ci.py"


def _cache(write: bool) -> tuple[tuple[str, str], ...]:
    # tools/bazel turns MODELGATE_REMOTE_CACHE into --config=remote-cache (read) or, with
    # MODELGATE_REMOTE_CACHE_WRITE=1, --config=remote-cache-write. Said on every line, so a
    # pull request can be seen not to write the team cache.
    return (("MODELGATE_REMOTE_CACHE_WRITE", "1" if write else "0"),)


def _reports(inputs: Inputs, *extra: str) -> Command:
    return Command("reports", (CI_PY, "collect-reports", f"--out={inputs.reports}", *extra), always=True)


def _setup(inputs: Inputs, *, signing: bool) -> tuple[str, ...]:
    notes = []
    if inputs.remote_cache:
        notes.append(
            "team cache: tools/bazel adds --config=remote-cache[-write] "
            "--remote_cache=$MODELGATE_REMOTE_CACHE to every build, test and run"
        )
        notes.append(
            "with $MODELGATE_REMOTE_CACHE_TOKEN (from google-github-actions/auth): user.bazelrc gets "
            "build:remote-cache --remote_header=Authorization=Bearer *** (git-ignored, removed at exit)"
        )
    if signing:
        notes.append(
            "$MODELGATE_SIGNING_KEY_PEM (secret) -> a 0600 file, removed at exit; "
            "promote reads its path from $MODELGATE_SIGNING_KEY"
        )
    return tuple(notes)


def _promote(inputs: Inputs, tag: str) -> Command:
    registry = inputs.need("MODELGATE_REGISTRY", inputs.registry, "the registry to promote to (gs://BUCKET/PREFIX)")
    argv = ["bazel", "run", "--config=ci", "//tools:promote", "--", f"--tag={tag}", f"--registry={registry}"]
    argv += [f"--notify={url}" for url in inputs.notify]
    argv += ["--bazel-flag=--config=ci"]
    if inputs.require_gpu:
        # The releases are built as the GPU runner tested them (the CUDA lock); their _gpu receipts
        # come from the team cache, and promote refuses a build without a passing one.
        argv += ["--require=gpu", "--bazel-flag=--config=gpu"]
    return Command(f"promote-{tag}", tuple(argv), env=_cache(write=False))


def _registry_ls(inputs: Inputs) -> Command:
    return Command("registry", ("bazel", "run", "--config=ci", "//tools:registry", "--", "ls", f"--registry={inputs.registry}"), env=_cache(write=False))  # fmt: skip


def plan(event: str, job: str, inputs: Inputs) -> Plan:
    key = (event, job)
    if key not in JOBS:
        raise CIError(f"no job {job!r} for event {event!r}; jobs: {', '.join(f'{e} {j}' for e, j in JOBS)}")
    return JOBS[key](inputs)


def _pr_test(inputs: Inputs) -> Plan:
    base = inputs.need("MODELGATE_CI_BASE", inputs.base, "the pull request's base, e.g. origin/main")
    tests = f"{inputs.reports}/affected_tests.txt"
    releases = f"{inputs.reports}/affected_releases.txt"
    return Plan("pull_request", "test", (
        BOOTSTRAP,
        # Read-only team cache; cached tests' logs downloaded too (the reports read them).
        Command("test-affected", ("tools/ci/test_affected.sh", base, f"--targets-out={tests}", "--",
                                  "--remote_download_outputs=toplevel"), env=_cache(write=False)),
        # The gate (and the receipts it needs) for every model an affected test belongs to; also
        # after a failing test, so that the report has every gate's verdict.
        Command("affected-releases", (CI_PY, "releases", tests, f"--out={releases}"), always=True),
        Command("gate-affected", ("bazel", "build", "--config=ci", f"--target_pattern_file={releases}"),
                env=_cache(write=False), always=True),
        _reports(inputs, f"--tests={tests}", f"--releases={releases}"),
    ), _setup(inputs, signing=False))  # fmt: skip


def _gpu(event: str, write: bool):
    def job(inputs: Inputs) -> Plan:
        base = inputs.need("MODELGATE_CI_BASE", inputs.base, "the revision to compare with")
        tests = f"{inputs.reports}/affected_gpu_tests.txt"
        return Plan(event, "gpu", (
            BOOTSTRAP,
            Command("test-affected-gpu", ("tools/ci/test_affected.sh", base, "--gpu", f"--targets-out={tests}", "--",
                                          "--remote_download_outputs=toplevel"), env=_cache(write=write)),
            _reports(inputs, f"--tests={tests}"),
        ), _setup(inputs, signing=False))  # fmt: skip

    return job


def _main_test(inputs: Inputs) -> Plan:
    return Plan("main", "test", (
        BOOTSTRAP,
        # Everything, writing the team cache: what developers and the promote job then read.
        Command("test-all", ("bazel", "test", "--config=ci", "//..."), env=_cache(write=True)),
        _reports(inputs, "--all"),
    ), _setup(inputs, signing=False))  # fmt: skip


def _main_promote(inputs: Inputs) -> Plan:
    return Plan("main", "promote", (
        BOOTSTRAP,
        _promote(inputs, "canary"),
        _registry_ls(inputs),
    ), _setup(inputs, signing=True))  # fmt: skip


def _release_promote(inputs: Inputs) -> Plan:
    tag = inputs.need("MODELGATE_CI_TAG", inputs.tag, "the version tag pushed, e.g. v1.2.0")
    if not VERSION_TAG.match(tag):
        raise CIError(f"tag {tag!r} is not a version (vX.Y.Z or vX.Y.Z-rc.N)")
    commands = [
        BOOTSTRAP,
        Command("check-tag", (CI_PY, "check-release-tag", tag, "--on=origin/main")),
        _promote(inputs, tag),
    ]
    if "-rc." not in tag:
        # The same builds: the version tag's promote uploaded them, this one only moves stable.
        commands.append(_promote(inputs, "stable"))
    commands.append(_registry_ls(inputs))
    return Plan("release", "promote", tuple(commands), _setup(inputs, signing=True))


JOBS = {
    ("pull_request", "test"): _pr_test,
    ("pull_request", "gpu"): _gpu("pull_request", write=False),
    ("main", "test"): _main_test,
    ("main", "gpu"): _gpu("main", write=True),
    ("main", "promote"): _main_promote,
    ("release", "promote"): _release_promote,
}


def golden_text() -> str:
    out = [
        "# The exact command lines each CI job runs (tools/ci/ci.py), under the environment below.",
        "# Regenerate: tools/ci/ci.py golden --update     Checked by //tests/ci:golden_commands_test.",
        "#",
        *[f"#   {k}={v}" for k, v in GOLDEN_ENV.items()],
        "",
    ]
    cases = [(f"{e} {j}", e, j, {}) for e, j in JOBS] + [(t, e, j, o) for t, e, j, o in GOLDEN_VARIANTS]
    for title, event, job, variant in cases:
        overrides = {**GOLDEN_EVENT_ENV.get(event, {}), **variant}
        env = {**GOLDEN_ENV, **overrides}
        out.append(f"## {event} {job}" if not variant else f"## {event} {job}: {title}")
        out += [f"#   {k}={v}" for k, v in overrides.items()]
        out += plan(event, job, Inputs.from_env(env)).lines()
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Running a plan

def _say(msg: str) -> None:
    print(f"{PROG}: {msg}", flush=True)


class _Secrets:
    """Writes what the secrets give (a cache header, a key file) for the run; removes it after."""

    def __init__(self, env: dict[str, str], signing: bool, root: Path):
        self.env = env
        self.signing = signing
        self.root = root
        self.cleanup: list = []

    def __enter__(self):
        token = self.env.pop("MODELGATE_REMOTE_CACHE_TOKEN", "")
        if token:
            rc = self.root / "user.bazelrc"
            before = rc.read_text() if rc.exists() else None
            rc.write_text((before or "") + f"\nbuild:remote-cache --remote_header=Authorization=Bearer {token}\n")
            self.cleanup.append(lambda: rc.write_text(before) if before is not None else rc.unlink(missing_ok=True))
            _say("team cache credentials: a bearer token header in user.bazelrc (removed at exit)")
        pem = self.env.pop("MODELGATE_SIGNING_KEY_PEM", "")
        if self.signing:
            if pem:
                fd, path = tempfile.mkstemp(prefix="modelgate-signing-", suffix=".pem")
                with os.fdopen(fd, "w") as f:
                    f.write(pem if pem.endswith("\n") else pem + "\n")
                os.chmod(path, 0o600)
                self.env["MODELGATE_SIGNING_KEY"] = path
                self.cleanup.append(lambda: os.unlink(path))
            elif not self.env.get("MODELGATE_SIGNING_KEY"):
                raise CIError("no signing key: set the MODELGATE_SIGNING_KEY_PEM secret (or $MODELGATE_SIGNING_KEY, a path)")
        return self

    def __exit__(self, *exc):
        for undo in reversed(self.cleanup):
            undo()


def run_plan(p: Plan, inputs: Inputs, root: Path = ROOT) -> int:
    """Runs the commands in order in `root`, each one's output also in REPORTS/logs/NN-name.log;
    after a failure only the `always` ones run. Exit 0 when every command passed, else 1."""
    reports = Path(inputs.reports)
    logs = reports / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    failed: list[str] = []
    timings: list[str] = []
    signing = any(c.name.startswith("promote-") for c in p.commands)
    start_all = time.monotonic()
    with _Secrets(env, signing, root):
        for i, c in enumerate(p.commands, 1):
            if failed and not c.always:
                _say(f"skipped {c.name} (after a failure): {c.line()}")
                continue
            _say(f"[{i}/{len(p.commands)}] {c.line()}")
            log = logs / f"{i:02d}-{c.name}.log"
            start = time.monotonic()
            with log.open("w") as f:
                f.write(f"$ {c.line()}\n")
                f.flush()
                proc = subprocess.Popen(list(c.argv), cwd=root, env={**env, **dict(c.env)},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
                for chunk in iter(lambda: proc.stdout.readline(), b""):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    f.write(chunk.decode(errors="replace"))
                rc = proc.wait()
            took = time.monotonic() - start
            timings.append(f"{c.name}\t{rc}\t{took:.1f}s")
            _say(f"{c.name}: exit {rc} in {took:.1f}s")
            if rc:
                failed.append(c.name)
    (reports / "timings.tsv").write_text("".join(t + "\n" for t in timings))
    total = time.monotonic() - start_all
    if failed:
        _say(f"{p.event} {p.job}: failed ({', '.join(failed)}) after {total:.1f}s; logs in {logs}")
        return 1
    _say(f"{p.event} {p.job}: {len(p.commands)} commands passed in {total:.1f}s; logs in {logs}")
    return 0


# --------------------------------------------------------------------------------------------------
# Helpers the plans call

def _labels(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("//")]


def release_labels(tests: list[str], models: list[str]) -> list[str]:
    """The :release of every model that an affected test belongs to (//models/<m>:...); every
    release when the list is //... (test_affected.sh failed open without a list)."""
    if "//..." in tests:
        return [f"//models/{m}:release" for m in sorted(models)]
    chosen = set()
    for label in tests:
        m = re.match(r"^//models/([^/:]+)[:/]", label)
        if m and m.group(1) in models:
            chosen.add(m.group(1))
    return [f"//models/{m}:release" for m in sorted(chosen)]


def known_models() -> list[str]:
    """The models with a release: models/<m>/BUILD.bazel (model_package names it after the dir)."""
    return sorted(p.parent.name for p in (ROOT / "models").glob("*/BUILD.bazel"))


def failed_gate_reports() -> Path:
    """Where a failing release gate leaves its report page (modelgate.report.gate_report: a failed
    action's outputs are discarded, so the page goes outside the sandbox)."""
    return Path(os.environ.get("MODELGATE_REPORT_DIR") or "/tmp/modelgate-reports")


def collect_reports(
    out: Path, tests: list[str], releases: list[str], every_test: bool, root: Path = ROOT, failed_gates: Path | None = None
) -> list[Path]:
    """Copies into `out` the test logs (test.xml, test.log) with each test's undeclared outputs (a
    golden test's report page), the release manifests and review pages, and the report pages of
    gates that failed."""
    copied = []
    testlogs = root / "bazel-testlogs"
    if every_test and testlogs.exists():
        dirs = sorted({p.parent for p in testlogs.glob("**/test.xml")} | {p.parent for p in testlogs.glob("**/test.log")})
    else:
        dirs = [testlogs / label[2:].replace(":", "/") for label in tests if label != "//..."]
    failed_gates = failed_gates or failed_gate_reports()
    for page in sorted(failed_gates.glob("*/*.html")) if failed_gates.is_dir() else []:
        dst = out / "failed-gates" / page.relative_to(failed_gates)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, dst)
        copied.append(dst)
    for d in dirs:
        outputs = d / "test.outputs" / "outputs.zip"
        if outputs.is_file():
            dst = out / "testlogs" / outputs.relative_to(testlogs)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(outputs, dst)
            copied.append(dst)
        for name in ("test.xml", "test.log"):
            src = d / name
            if src.is_file():
                dst = out / "testlogs" / src.relative_to(testlogs)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                copied.append(dst)
    for label in releases:
        package = label[2:].split(":")[0]
        bundle = root / "bazel-bin" / package / "release"
        for src in sorted([*bundle.glob("*.json"), *bundle.glob("*.html")]) if bundle.is_dir() else []:
            dst = out / "releases" / package / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied.append(dst)
    return copied


def check_release_tag(tag: str, on: str, root: Path = ROOT) -> str:
    if not VERSION_TAG.match(tag):
        raise CIError(f"tag {tag!r} is not a version (vX.Y.Z or vX.Y.Z-rc.N)")

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)

    commit = git("rev-parse", "--verify", "--quiet", f"{tag}^{{commit}}")
    if commit.returncode:
        raise CIError(f"no tag {tag} in this clone (the workflow checks out with fetch-depth: 0)")
    sha = commit.stdout.strip()
    if git("rev-parse", "--verify", "--quiet", on).returncode:
        raise CIError(f"no {on} in this clone (fetch it first)")
    if git("merge-base", "--is-ancestor", sha, on).returncode:
        raise CIError(f"tag {tag} ({sha[:12]}) is not on {on}: only commits that main tested are released")
    return sha


# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/ci/ci.py", description="CI plans as data: print them, run them.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("plan", "run"):
        s = sub.add_parser(name)
        s.add_argument("event")
        s.add_argument("job")
    g = sub.add_parser("golden")
    g.add_argument("--update", action="store_true", help=f"rewrite {GOLDEN.relative_to(ROOT)}")
    r = sub.add_parser("releases")
    r.add_argument("tests")
    r.add_argument("--out", required=True)
    c = sub.add_parser("collect-reports")
    c.add_argument("--out", required=True)
    c.add_argument("--tests", help="a file of test labels whose logs to copy")
    c.add_argument("--releases", help="a file of release labels whose manifests to copy")
    c.add_argument("--all", action="store_true", help="every test log in bazel-testlogs, every model's release")
    t = sub.add_parser("check-release-tag")
    t.add_argument("tag")
    t.add_argument("--on", required=True)
    args = p.parse_args(argv)

    try:
        if args.cmd in ("plan", "run"):
            inputs = Inputs.from_env(dict(os.environ))
            the_plan = plan(args.event, args.job, inputs)
            if args.cmd == "plan":
                print("\n".join(the_plan.lines()))
                return 0
            return run_plan(the_plan, inputs)
        if args.cmd == "golden":
            text = golden_text()
            if args.update:
                GOLDEN.write_text(text)
                _say(f"wrote {GOLDEN.relative_to(ROOT)}")
            else:
                sys.stdout.write(text)
            return 0
        if args.cmd == "releases":
            labels = release_labels(_labels(Path(args.tests)), known_models())
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(label + "\n" for label in labels))
            _say(f"{len(labels)} release(s) to gate: {' '.join(labels) or 'none'}")
            return 0
        if args.cmd == "collect-reports":
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            releases = _labels(Path(args.releases)) if args.releases else []
            if args.all:
                releases = [f"//models/{m}:release" for m in known_models()]
            copied = collect_reports(out, _labels(Path(args.tests)) if args.tests else [], releases, args.all)
            _say(f"reports: {len(copied)} file(s) in {out}")
            return 0
        if args.cmd == "check-release-tag":
            sha = check_release_tag(args.tag, args.on)
            _say(f"tag {args.tag} is {sha[:12]}, on {args.on}")
            return 0
    except CIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
