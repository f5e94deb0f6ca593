"""What the service serves, and how it changes: fetch -> verify -> load -> warm up -> swap.

One model instance is served at a time, held in `Deployment.current` (an immutable `Served`).
A request takes that reference once and uses it to the end, so requests in flight finish on the
build they started on; a rollout replaces the reference in one assignment (atomic under the GIL).

Rollouts run on one worker thread, one at a time. The worker wakes when a notification asks it
to (`request_check`) and every `poll_interval_s` otherwise, so a lost notification delays a
rollout but never blocks it. Each rollout:
  1. resolves the tag to a build hash from the registry's signed tag state: the pointer's and
     every history event's signature, and the pointer naming the tag's newest event
     (Registry.tag_state, strict). Rollback protection: the highest history seq this service has
     accepted for its tag is kept in the state directory (tag-state.json, across restarts), and a
     lower one is refused unless the operator passes allow_rollback (serve --allow-rollback). A
     `registry rollback` is a new, higher event, so it passes;
  2. fetches that build into a fresh directory under the state directory, verifying the manifest
     signature and every file's digest (blake3, or sha256 where the build lists none) and size
     (modelgate.registry.api.fetch);
  3. loads the build with the service's runtime (modelgate.serve.runtime): by default the
     bundle's model.onnx on onnxruntime, with the inputs, outputs and text front end the build's
     own manifest declares (its serving signature), so nothing of this service's checkout runs;
     with --runtime=torch, the checkout's model code, refused unless every model source it
     imports has the digest the build recorded (modelgate.serve.torch_runtime);
  4. runs the build's own golden inputs and requires its golden outputs within the tolerances the
     release gate recorded (the same check the gate ran on this runtime);
  5. swaps, then removes the directories of older builds.
The state directory is modelgate's alone: claim() creates it, or refuses one holding anything
that this service does not create (user files, a registry), and only ever deletes its own.
If any step fails, the old build keeps serving; the reason is logged and shown on /version. A
refused build (bad signature or digests, unloadable weights, a warm-up mismatch) is not
downloaded again by every poll: only by a notification, or after `retry_refused_s`. A failure
that says nothing about the build (registry or disk unreachable) is retried at the next poll.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from modelgate import receipts
from modelgate.errors import ModelgateError, RolloutError, StorageError, UsageError, VerificationError
from modelgate.formats import GOLDEN_FILES, SERVE_STATE_SCHEMA
from modelgate.registry import api, signing
from modelgate.registry.registry import Registry, TagState
from modelgate.serve import runtime as runtime_lib
from modelgate.serve.signature import Signature, SignatureError, from_manifest

log = logging.getLogger("modelgate.serve")

WARMUP_ROUNDS = runtime_lib.WARMUP_ROUNDS
# A build whose forward on its golden inputs takes less than this runs requests on the event loop
# (modelgate.serve.app): the hop to a worker thread and back would cost more than the model.
INLINE_BELOW_S = 0.002
# A runtime: (the fetched build's directory, its verified manifest) -> a Runner, or RolloutError.
LoadRunner = Callable[[Path, dict], runtime_lib.Runner]
_LOCK_FILE = ".lock"
TAG_STATE_FILE = "tag-state.json"
TAG_STATE_SCHEMA = SERVE_STATE_SCHEMA
# Everything the service creates in its state directory, and nothing else.
_OWN_NAMES = re.compile(
    r"\.lock|tag-state\.json(?:\.tmp)?|[0-9a-f]{16}-[0-9a-f]{8}|\.[0-9a-f]{16}-[0-9a-f]{8}\.fetch-\d+-[0-9a-f]{16}|warmup-\w+"
)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short(build_hash: str | None) -> str:
    return build_hash[:12] if build_hash else "-"


class StateDirBusy(ModelgateError):
    exit_code = 2


class StateDirForeign(UsageError):
    """The state directory holds something modelgate did not create."""


def onnx_runtime(threads: int = 1) -> LoadRunner:
    """The default runtime: the bundle's model file on onnxruntime, as its signature declares."""

    def load(directory: Path, manifest: dict) -> runtime_lib.Runner:
        signature = signature_of(manifest)
        return runtime_lib.OnnxRunner(directory, signature, threads)

    load.runtime = runtime_lib.OnnxRunner.runtime
    return load


def signature_of(manifest: dict) -> Signature:
    """The build's serving signature, each file it names listed (so verified) in the manifest."""
    try:
        signature = from_manifest(manifest)
    except SignatureError as e:
        raise RolloutError(str(e)) from None
    needed = [signature.model_file] + ([signature.text.file] if signature.text else [])
    missing = [name for name in needed if name not in manifest["files"]]
    if missing:
        raise RolloutError(f"the build's signature names {', '.join(missing)}, which its manifest does not list")
    return signature


@dataclass(frozen=True)
class Served:
    """One loaded, warmed-up build. Immutable: a rollout makes a new one. Nothing in it depends on
    the service's own checkout: a second build (a canary) can sit beside it in one process."""

    model_name: str
    tag: str
    build_hash: str
    runner: runtime_lib.Runner
    files: dict[str, str]  # file name -> sha256, from the verified manifest
    since: str  # when this build started serving (ISO 8601, UTC)
    directory: Path
    git_commit: str | None
    created_at: str | None
    tests: dict = field(default_factory=dict)  # the build's test receipts (modelgate.receipts.summary)
    inline: bool = False  # requests run on the event loop (a fast model: INLINE_BELOW_S)

    @property
    def signature(self) -> Signature:
        return self.runner.signature

    @property
    def text(self) -> Callable | None:
        """texts -> inputs with the bundle's own tokenizer, for a build with a text front end."""
        return self.runner.text

    @property
    def runtime(self) -> str:
        return self.runner.runtime

    def forward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.forward(inputs)


@dataclass
class Attempt:
    """The latest rollout attempt, as /version shows it."""

    build_hash: str
    trigger: str
    started: str
    outcome: str = "in progress"  # "in progress", "serving", "refused" (remembered), "failed" (an outage: retried)
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "build_hash": self.build_hash,
            "trigger": self.trigger,
            "started": self.started,
            "outcome": self.outcome,
            "error": self.error,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


class Deployment:
    def __init__(
        self,
        model_name: str,
        tag: str,
        registry: Registry,
        public_key: str,
        state_dir: Path,
        *,
        poll_interval_s: float = 30.0,
        retry_refused_s: float = 300.0,
        allow_rollback: bool = False,
        runtime: LoadRunner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.model_name = model_name
        self.load_runner = runtime or onnx_runtime()
        self.runtime = getattr(self.load_runner, "runtime", "custom")
        self.tag = tag
        self.registry = registry
        if registry.verifier is None:
            registry.use_keys(verifier=signing.RecordVerifier(public_key))
        self.public_key = public_key
        self.allow_rollback = allow_rollback
        self.accepted: dict | None = None  # {"seq", "build_hash", "time"}: the highest tag state accepted
        self.announced_seq = 0  # the highest seq a signed notification announced
        self.state_dir = Path(state_dir)
        self.poll_interval_s = poll_interval_s
        self.retry_refused_s = retry_refused_s
        self._clock = clock
        self._current: Served | None = None
        self._rollout_lock = threading.Lock()  # one rollout at a time, whoever asks
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._triggers: set[str] = set()
        self._triggers_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._lock_fd = None
        self._refused: dict[str, float] = {}  # build hash -> when it was refused (clock)
        self.last_attempt: Attempt | None = None
        self.problem: str | None = None  # why the tag's build is not the one serving, if it is not
        self.last_check: str | None = None
        self.checks = 0
        # Told of every rollout attempt and refusal, once decided (the service's metrics count them).
        self.on_attempt: Callable[[Deployment, Attempt], None] | None = None

    # ---- reading

    @property
    def current(self) -> Served | None:
        return self._current

    def version(self) -> dict:
        served = self._current
        return {
            "model": self.model_name,
            "tag": self.tag,
            "registry": self.registry.uri,
            "status": "serving" if served else "not serving",
            "runtime": self.runtime,
            "build_hash": served.build_hash if served else None,
            "since": served.since if served else None,
            "files": dict(served.files) if served else {},
            "git_commit": served.git_commit if served else None,
            "created_at": served.created_at if served else None,
            "tests": dict(served.tests) if served else {},
            "error": self.problem,
            "last_check": self.last_check,
            "checks": self.checks,
            "poll_interval_s": self.poll_interval_s,
            "last_rollout": self.last_attempt.to_json() if self.last_attempt else None,
            "tag_state": dict(self.accepted) if self.accepted else None,
            "allow_rollback": self.allow_rollback,
        }

    # ---- lifecycle

    def claim(self) -> None:
        """Creates the state directory or checks that everything in it is this service's own, locks
        it (one service per directory), loads the accepted tag state and clears old builds."""
        if self._lock_fd is not None:
            return
        if self.state_dir.exists() or self.state_dir.is_symlink():
            if not self.state_dir.is_dir():
                raise StateDirForeign(f"state directory {self.state_dir} exists and is not a directory; pass --state-dir=DIR")
            foreign = sorted(e.name for e in os.scandir(self.state_dir) if not _OWN_NAMES.fullmatch(e.name))
            if foreign:
                listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise StateDirForeign(
                    f"state directory {self.state_dir} holds files modelgate did not create ({listed}); "
                    "serve deletes what is in its state directory, so pass --state-dir=DIR naming a new or empty directory"
                )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = open(self.state_dir / _LOCK_FILE, "a")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fd.close()
            raise StateDirBusy(
                f"state directory {self.state_dir} is in use by another service; pass --state-dir=DIR"
            ) from None
        self._lock_fd = fd
        try:
            self.accepted = self._load_tag_state()
        except BaseException:
            self.stop()
            raise
        self._remove_builds(keep=None)

    def _load_tag_state(self) -> dict | None:
        path = self.state_dir / TAG_STATE_FILE
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UsageError(f"the service state {path} is unreadable ({e}); it holds the rollback protection, so check it") from None
        entry = doc.get("tags", {}).get(self.tag) if isinstance(doc, dict) and doc.get("schema") == TAG_STATE_SCHEMA else False
        if entry is False or doc.get("model") != self.model_name:
            raise UsageError(f"the service state {path} is not {self.model_name}'s ({TAG_STATE_SCHEMA}); pass --state-dir=DIR")
        if entry is None:
            return None
        if not isinstance(entry, dict) or type(entry.get("seq")) is not int or not isinstance(entry.get("build_hash"), str):
            raise UsageError(f"the service state {path} is malformed; it holds the rollback protection, so check it")
        return entry

    def _save_tag_state(self, state: TagState) -> None:
        """Remembers the tag state now served (atomically, durably): a restart keeps the protection."""
        self.accepted = {"seq": state.seq, "build_hash": state.build_hash, "time": state.event["time"] if state.event else None}
        path = self.state_dir / TAG_STATE_FILE
        temp = path.with_name(TAG_STATE_FILE + ".tmp")
        doc = {"schema": TAG_STATE_SCHEMA, "model": self.model_name, "tags": {self.tag: self.accepted}}
        with open(temp, "w") as f:
            json.dump(doc, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)

    def start(self) -> None:
        """Claims the state directory and starts the rollout worker, which looks at the tag at once."""
        self.claim()
        self._stop.clear()
        self.request_check("startup")
        self._thread = threading.Thread(target=self._run, name="modelgate-rollout", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._lock_fd is not None:
            self._lock_fd.close()
            self._lock_fd = None

    def request_check(self, trigger: str, announced_seq: int | None = None) -> None:
        """Asks the worker to look at the tag now (a notification, or startup)."""
        with self._triggers_lock:
            self._triggers.add(trigger)
            if announced_seq is not None and announced_seq > self.announced_seq:
                self.announced_seq = announced_seq
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._triggers_lock:
                triggers, self._triggers = self._triggers, set()
            trigger = "notify" if "notify" in triggers else "startup" if "startup" in triggers else "poll"
            try:
                self.check(trigger)
            except Exception:  # noqa: BLE001 - the worker must outlive any one bad rollout
                log.exception("%s:%s: unexpected error while checking the tag; will retry", self.model_name, self.tag)

    # ---- rolling out

    def check(self, trigger: str = "poll") -> Attempt | None:
        """Looks up the tag and rolls out its build if it is not the one serving.

        Returns the rollout attempt, or None when there was nothing to do."""
        with self._rollout_lock:
            try:
                return self._check(trigger)
            finally:
                self.checks += 1  # completed checks: /version readers wait on this
                self.last_check = _now_iso()

    def _check(self, trigger: str) -> Attempt | None:
        served = self._current
        try:
            state = self.registry.tag_state(self.model_name, self.tag, strict=True)
        except VerificationError as e:  # a verdict on the registry's tag state: nothing moves
            return self._refuse_tag_state(trigger, str(e))
        except Exception as e:  # noqa: BLE001 - a registry outage must not stop serving
            self._report_problem(f"cannot read tag {self.tag} from {self.registry.uri}: {_first_line(e)}")
            return None
        if state.build_hash is None:
            self._report_problem(f"tag {self.tag} of {self.model_name} does not exist in {self.registry.uri} (yet)")
            return None
        accepted = self.accepted
        if accepted is not None and not self.allow_rollback:
            if state.seq < accepted["seq"]:
                return self._refuse_tag_state(
                    trigger,
                    f"rollback refused: the registry's tag {self.tag} is at history event {state.seq} "
                    f"({short(state.build_hash)}), but this service has accepted event {accepted['seq']} "
                    f"({short(accepted['build_hash'])}): the registry's tag state went back (replayed or deleted "
                    "history); a real rollback is `registry rollback`, or restart with --allow-rollback",
                    state.build_hash,
                )
            if state.seq == accepted["seq"] and state.build_hash != accepted["build_hash"]:
                return self._refuse_tag_state(
                    trigger,
                    f"history event {state.seq} of tag {self.tag} now names {short(state.build_hash)}, but it named "
                    f"{short(accepted['build_hash'])} when this service accepted it: the history was rewritten",
                    state.build_hash,
                )
        target = state.build_hash
        if served is not None and served.build_hash == target:
            if accepted is None or state.seq != accepted["seq"]:
                self._save_tag_state(state)
            self.problem = None
            self._check_announced(state)
            return None
        refused_at = self._refused.get(target)
        if refused_at is not None and trigger == "poll" and self._clock() - refused_at < self.retry_refused_s:
            return None
        attempt = self._rollout(target, trigger, state)
        if attempt.outcome == "serving":
            self._check_announced(state)
        return attempt

    def _check_announced(self, state: TagState) -> None:
        """A signed notification announced a newer event than the registry shows: say so (a
        registry view that is stale, or frozen by someone who withholds the newest state)."""
        if self.announced_seq > state.seq:
            self._report_problem(
                f"a notification announced history event {self.announced_seq} but the registry's tag {self.tag} "
                f"is at event {state.seq}: the registry view is stale or frozen"
            )

    def _refuse_tag_state(self, trigger: str, reason: str, target: str | None = None) -> Attempt:
        attempt = Attempt(target or "", trigger, _now_iso(), outcome="refused", error=reason)
        self.last_attempt = attempt
        self._told(attempt)
        old = self._current
        keeping = f"still serving {short(old.build_hash)}" if old else "nothing is being served"
        self._report_problem(f"tag {self.tag} refused: {reason}; {keeping}")
        return attempt

    def _rollout(self, target: str, trigger: str, state: TagState | None = None) -> Attempt:
        attempt = Attempt(target, trigger, _now_iso())
        self.last_attempt = attempt
        old = self._current
        log.info(
            "%s:%s: rolling out %s (was %s; trigger: %s)", self.model_name, self.tag, short(target), short(old.build_hash if old else None), trigger
        )
        directory = self.state_dir / f"{target[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            release = state.event.get("release") if state is not None and state.event else None
            served = self._prepare(target, directory, attempt.seconds, release)
        except Exception as e:  # noqa: BLE001 - any failure refuses the build; the old one keeps serving
            shutil.rmtree(directory, ignore_errors=True)
            reason = str(e) if isinstance(e, (RolloutError, ModelgateError)) else f"{type(e).__name__}: {_first_line(e)}"
            # A verdict on the build is remembered; an outage (registry, disk) is retried at the next poll.
            transient = isinstance(e, (StorageError, OSError))
            attempt.outcome, attempt.error = ("failed" if transient else "refused"), reason
            if not transient:
                self._refused[target] = self._clock()
            keeping = f"still serving {short(old.build_hash)}" if old else "nothing is being served"
            self.problem = f"build {short(target)} (tag {self.tag}) {attempt.outcome}: {reason}; {keeping}"
            log.error("%s:%s: %s", self.model_name, self.tag, self.problem)
            self._told(attempt)
            return attempt
        if state is not None:
            self._save_tag_state(state)  # before the swap: whoever sees the build sees its seq
        self._current = served  # the swap: new requests see the new build from here on
        self._refused.pop(target, None)
        attempt.outcome = "serving"
        self.problem = None
        self._remove_builds(keep=directory)
        timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in attempt.seconds.items())
        log.info("%s:%s: now serving %s (%s)", self.model_name, self.tag, short(target), timings)
        self._told(attempt)
        return attempt

    def _told(self, attempt: Attempt) -> None:
        if self.on_attempt is not None:
            try:
                self.on_attempt(self, attempt)
            except Exception:  # noqa: BLE001 - counting must never stop a rollout
                log.exception("%s:%s: rollout observer failed", self.model_name, self.tag)

    def _prepare(self, target: str, directory: Path, seconds: dict[str, float], release: str | None = None) -> Served:
        start = time.perf_counter()
        manifest = api.fetch(
            self.registry, self.model_name, out=directory, public_key=self.public_key, build=target, release=release
        ).manifest
        seconds["fetch_verify"] = time.perf_counter() - start

        start = time.perf_counter()
        missing = [name for name in GOLDEN_FILES if name not in manifest["files"]]
        if missing:
            raise RolloutError(f"the build carries no golden data ({', '.join(missing)} missing), so it cannot be warmed up")
        runner = self.load_runner(directory, manifest)
        seconds["load"] = time.perf_counter() - start

        start = time.perf_counter()
        rounds: list[float] = []
        runtime_lib.warm_up(runner, directory, rounds=WARMUP_ROUNDS, timings=rounds)
        seconds["warmup"] = time.perf_counter() - start
        forward = min(rounds[1:] or rounds)  # the first round pays the runtime's first-call set-up
        registry_info = manifest.get("registry") or {}
        return Served(
            model_name=self.model_name,
            tag=self.tag,
            build_hash=target,
            runner=runner,
            files={name: f["sha256"] for name, f in sorted(manifest["files"].items())},
            since=_now_iso(),
            directory=directory,
            git_commit=registry_info.get("git_commit"),
            created_at=registry_info.get("created_at"),
            tests=receipts.summary(manifest),
            inline=forward < INLINE_BELOW_S,
        )

    def _report_problem(self, message: str) -> None:
        if message != self.problem:
            log.warning("%s:%s: %s", self.model_name, self.tag, message)
        self.problem = message

    def _remove_builds(self, keep: Path | None) -> None:
        """Deletes every build directory (and fetch leftovers) but `keep`: a loaded model needs
        no files, so only the serving build's directory is kept, for inspection. Only names
        this service creates are touched."""
        for path in self.state_dir.iterdir():
            if path.name in (_LOCK_FILE, TAG_STATE_FILE) or path == keep or not _OWN_NAMES.fullmatch(path.name):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
