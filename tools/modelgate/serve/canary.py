"""A canary beside the stable build: routing, per-arm analysis windows, automatic rollback.

    serve --model=M --tag=stable --canary-tag=canary --canary-weight=10 [--signing-key=PEM]

Two Deployments run in one process, each following its tag (fetch, verify, warm up, swap as
before). `Service` routes each request to one arm:

  * **Sticky routing.** A request's key (the `--canary-key-header` header, default
    X-Modelgate-Key; else X-Request-Id; else a random one) is hashed (blake2b) into one of 10,000
    buckets; buckets below weight x 100 go to the canary. One client (one key) sees one build, and
    a step-up (5 -> 25 -> 50 -> 100 %) only adds clients to the canary, never moves one back.
  * **No failed request for a canary's fault.** A canary request whose model raises, answers NaN
    or inf, or (on the shadow sample) differs from stable's answer beyond the golden tolerances is
    answered by stable instead (counted as a fallback and as the canary's error): the client gets
    a good answer, the analysis gets the figure.
  * **Analysis windows.** Each arm's requests are collected in windows, closed after
    `window_requests` canary requests or `window_seconds`, whichever comes first. A window with
    fewer than `min_samples` canary requests has no verdict (missing data never rolls back, and
    never counts as healthy). Otherwise it breaches when the canary's error rate, non-finite rate
    or shadow mismatch rate exceeds its limit, or its p95 latency exceeds both `max_p95_ratio` x
    stable's p95 in the same window and stable's p95 + `p95_slack_ms` (the p95 check needs
    `min_samples` stable requests too; the shadow check `min_shadow_samples` comparisons).
  * **Rollback.** `breach_windows` consecutive breaching windows stop canary traffic at once (in
    the request that closed the window), then, where the service holds a signing key, a background
    thread appends a signed `"action": "rollback"` event for the canary tag through the registry
    (modelgate.registry.api.rollback: the canary tag moves back to the build it named before, the
    reason carries the breach figures, so `registry history M` shows who and why). Without a key,
    routing stops and /version and /metrics say so. The canary Deployment then follows its tag
    back; a build the canary tag names later starts a new canary.
  * **Step-up and promotion, only where the operator allows it** (`steps`, `promote_after`):
    after `step_windows` healthy windows the weight moves to the next step; after `promote_after`
    healthy windows at the last step the canary's build is promoted to the stable tag as a signed
    history event (modelgate.registry.api.promote: the metric gate against stable still applies).

With the canary tag naming the stable build (or nothing, or a build this service rolled back), the
canary arm takes no traffic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from modelgate.errors import InputError, ModelgateError, UsageError
from modelgate.serve import metrics as metrics_lib
from modelgate.serve.deployment import Deployment, Served, _now_iso, short
from modelgate.serve.runtime import compare

log = logging.getLogger("modelgate.serve")

BUCKETS = 10_000
REQUEST_ID_HEADER = "x-request-id"
DEFAULT_KEY_HEADER = "x-modelgate-key"


@dataclass(frozen=True)
class CanaryConfig:
    """Thresholds and schedule; from flags or a JSON file of these keys (serve --canary-config)."""

    weight: float = 10.0  # percent of requests (of keys) routed to the canary
    steps: tuple[float, ...] = ()  # step-up schedule in percent, e.g. (5, 25, 50, 100); empty: stay at weight
    step_windows: int = 3  # healthy windows before the next step
    promote_after: int = 0  # healthy windows at the last step before promoting to stable; 0: never
    window_requests: int = 100  # canary requests per window ...
    window_seconds: float = 30.0  # ... or this long, whichever comes first
    min_samples: int = 20  # fewer canary requests in a window: no verdict
    breach_windows: int = 2  # consecutive breaching windows that roll the canary back
    max_error_rate: float = 0.01
    max_nonfinite_rate: float = 0.0
    max_p95_ratio: float = 2.0
    p95_slack_ms: float = 2.0
    shadow_fraction: float = 0.0  # share of canary requests stable also answers, for comparison
    max_shadow_mismatch_rate: float = 0.0
    min_shadow_samples: int = 5
    key_header: str = DEFAULT_KEY_HEADER

    def check(self) -> "CanaryConfig":
        def bad(message: str):
            raise UsageError(f"canary configuration: {message}")

        weights = (self.weight, *self.steps)
        if not all(0 <= w <= 100 for w in weights):
            bad(f"weights are percentages (0 to 100), got {', '.join(f'{w:g}' for w in weights)}")
        if list(self.steps) != sorted(self.steps):
            bad(f"steps must increase, got {', '.join(f'{w:g}' for w in self.steps)}")
        for name in ("step_windows", "window_requests", "min_samples", "breach_windows", "min_shadow_samples"):
            if getattr(self, name) < 1:
                bad(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.promote_after < 0:
            bad(f"promote_after must be 0 (never) or more, got {self.promote_after}")
        if self.min_samples > self.window_requests:
            bad(f"min_samples ({self.min_samples}) exceeds window_requests ({self.window_requests}): no window could have a verdict")
        if not 0 <= self.shadow_fraction <= 1:
            bad(f"shadow_fraction is a share (0 to 1), got {self.shadow_fraction}")
        if self.window_seconds <= 0 or self.max_p95_ratio <= 0:
            bad("window_seconds and max_p95_ratio must be positive")
        return self

    @property
    def start_weight(self) -> float:
        return self.steps[0] if self.steps else self.weight

    @classmethod
    def load(cls, path: Path | None, overrides: Mapping[str, object]) -> "CanaryConfig":
        """The file's settings (unknown keys refused), then the flags given."""
        values: dict = {}
        if path is not None:
            try:
                doc = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise UsageError(f"cannot read the canary configuration {path}: {e}") from None
            if not isinstance(doc, dict):
                raise UsageError(f"the canary configuration {path} is not a JSON object")
            known = {f.name: f for f in fields(cls)}
            unknown = sorted(set(doc) - set(known))
            if unknown:
                raise UsageError(f"the canary configuration {path} has unknown keys: {', '.join(unknown)} (known: {', '.join(known)})")
            values.update(doc)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "steps" in values:
            values["steps"] = tuple(float(s) for s in values["steps"])
        try:
            return cls(**values).check()
        except TypeError as e:
            raise UsageError(f"canary configuration: {e}") from None


@dataclass
class Window:
    """One analysis window: what each arm did since it opened."""

    number: int
    opened: float  # clock
    canary: list[tuple[float, str]] = field(default_factory=list)  # (seconds, "ok" | error kind)
    stable: list[float] = field(default_factory=list)  # seconds of stable-arm requests that succeeded
    shadow: list[bool] = field(default_factory=list)  # True: the answers matched


@dataclass(frozen=True)
class Verdict:
    number: int
    verdict: str  # "healthy", "breach", "insufficient"
    figures: dict
    breaches: tuple[str, ...] = ()
    closed: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def judge(window: Window, config: CanaryConfig) -> Verdict:
    """The window's verdict. Only checks with enough data count: missing data never breaches."""
    n = len(window.canary)
    kinds = [kind for _, kind in window.canary]
    errors = sum(1 for k in kinds if k in ("model_error", "rejected"))
    nonfinite = kinds.count("nonfinite")
    canary_p95 = p95([s for s, k in window.canary if k == "ok"] or [s for s, _ in window.canary])
    stable_p95 = p95(window.stable)
    mismatches = window.shadow.count(False)
    figures = {
        "canary_requests": n,
        "errors": errors,
        "error_rate": round(errors / n, 4) if n else None,
        "nonfinite": nonfinite,
        "nonfinite_rate": round(nonfinite / n, 4) if n else None,
        "canary_p95_ms": round(canary_p95 * 1000, 3) if canary_p95 is not None else None,
        "stable_requests": len(window.stable),
        "stable_p95_ms": round(stable_p95 * 1000, 3) if stable_p95 is not None else None,
        "shadow_compared": len(window.shadow),
        "shadow_mismatches": mismatches,
    }
    if n < config.min_samples:
        return Verdict(window.number, "insufficient", figures, closed=_now_iso())
    breaches = []
    if errors / n > config.max_error_rate:
        breaches.append(f"error rate {errors}/{n} = {errors / n:.1%} > {config.max_error_rate:.1%}")
    if nonfinite / n > config.max_nonfinite_rate:
        breaches.append(f"non-finite outputs {nonfinite}/{n} = {nonfinite / n:.1%} > {config.max_nonfinite_rate:.1%}")
    if canary_p95 is not None and stable_p95 is not None and len(window.stable) >= config.min_samples:
        limit = max(config.max_p95_ratio * stable_p95, stable_p95 + config.p95_slack_ms / 1000)
        if canary_p95 > limit:
            breaches.append(
                f"p95 latency {canary_p95 * 1000:.2f} ms > {limit * 1000:.2f} ms "
                f"(stable p95 {stable_p95 * 1000:.2f} ms x {config.max_p95_ratio:g}, at least + {config.p95_slack_ms:g} ms)"
            )
    if len(window.shadow) >= config.min_shadow_samples and mismatches / len(window.shadow) > config.max_shadow_mismatch_rate:
        breaches.append(
            f"shadow mismatches {mismatches}/{len(window.shadow)} = {mismatches / len(window.shadow):.1%} "
            f"> {config.max_shadow_mismatch_rate:.1%} (golden tolerances)"
        )
    return Verdict(window.number, "breach" if breaches else "healthy", figures, tuple(breaches), closed=_now_iso())


def bucket(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(errors="replace"), digest_size=8).digest(), "big") % BUCKETS


def finite(outputs: Mapping[str, np.ndarray]) -> bool:
    for value in outputs.values():
        value = np.asarray(value)
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            return False
    return True


class CanaryFailure(Exception):
    """The canary could not give this request a good answer (kind: a metrics error kind)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Canary:
    """The canary arm's state machine for one canary build at a time:

        idle      no canary build (the tag names nothing, the stable build, or a halted build)
        running   routed at `weight`, analysed window by window
        halted    breached: routing stopped; rolled back (signed event) or reported (no key)
        promoted  promoted to stable (then idle, once stable serves it)
    """

    def __init__(
        self,
        deployment: Deployment,
        config: CanaryConfig,
        *,
        stable_tag: str,
        signing_key: str | None = None,
        write_registry=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.deployment = deployment
        self.config = config
        self.stable_tag = stable_tag
        self.signing_key = signing_key
        self.write_registry = write_registry  # a Registry over the same storage, to sign with
        self._clock = clock
        self._lock = threading.Lock()
        self.build_hash: str | None = None  # the canary build under analysis
        self.state = "idle"
        self.weight = 0.0
        self._window: Window | None = None
        self._numbers = 0
        self.consecutive_breaches = 0
        self.healthy_windows = 0  # consecutive, at the current weight
        self.verdicts: list[Verdict] = []  # the latest few
        self.halted: dict[str, dict] = {}  # build hash -> what happened (never routed again)
        self.events: list[dict] = []  # rollbacks and promotions this service made
        self.metrics: metrics_lib.Metrics | None = None
        self.on_stable_changed: Callable[[], None] | None = None

    # ---- which build, at which weight

    def sync(self, stable: Served | None) -> Served | None:
        """The canary build to route to now, or None; starts a new canary when the tag names a new build."""
        served = self.deployment.current
        candidate = (
            served is not None and stable is not None and served.build_hash != stable.build_hash and served.build_hash not in self.halted
        )
        if not candidate:
            if self.state in ("running", "promoting"):
                with self._lock:
                    if self.state in ("running", "promoting"):
                        self._reset(None, "idle")  # the tag moved to nothing, to stable's build, or stable took it
            return None
        if served.build_hash != self.build_hash:
            with self._lock:
                if served.build_hash != self.build_hash:
                    self._reset(served.build_hash, "running")
                    log.info("%s: canary %s (tag %s) takes %g%% of requests", served.model_name, short(served.build_hash), served.tag, self.weight)
        return served if self.state in ("running", "promoting") else None

    def _reset(self, build_hash: str | None, state: str) -> None:
        self.build_hash, self.state = build_hash, state
        self.weight = self.config.start_weight if state == "running" else 0.0
        self._window = Window(self._next_number(), self._clock()) if state == "running" else None
        self.consecutive_breaches = self.healthy_windows = 0

    def _next_number(self) -> int:
        self._numbers += 1
        return self._numbers

    def routes_to_canary(self, key: str) -> bool:
        return self.state in ("running", "promoting") and bucket(key) < self.weight * (BUCKETS / 100)

    # ---- recording and judging

    def record(self, arm: str, build_hash: str, seconds: float, kind: str = "ok", shadow_match: bool | None = None) -> None:
        if self.state != "running":
            return
        closed = None
        with self._lock:
            window = self._window
            if window is None or self.state != "running":
                return
            if arm == "canary":
                if build_hash != self.build_hash:
                    return
                window.canary.append((seconds, kind))
                if shadow_match is not None:
                    window.shadow.append(shadow_match)
            elif kind == "ok":
                window.stable.append(seconds)
            if len(window.canary) >= self.config.window_requests or self._clock() - window.opened >= self.config.window_seconds:
                closed = self._close(window)
        if closed is not None:
            self._act(*closed)

    def tick(self) -> None:
        """Closes a window that ran out of time without traffic to close it."""
        if self.state != "running":
            return
        closed = None
        with self._lock:
            window = self._window
            if window is not None and self.state == "running" and self._clock() - window.opened >= self.config.window_seconds:
                closed = self._close(window)
        if closed is not None:
            self._act(*closed)

    def _close(self, window: Window) -> tuple[str, Verdict, str]:
        """Judges the window and decides (under the lock); returns (action, verdict, build)."""
        verdict = judge(window, self.config)
        self._window = Window(self._next_number(), self._clock())
        self.verdicts = (self.verdicts + [verdict])[-20:]
        build = self.build_hash
        if self.metrics is not None:
            self.metrics.windows.labels(self.deployment.model_name, self.deployment.tag, short(build), verdict.verdict).inc()
        action = "none"
        if verdict.verdict == "breach":
            self.consecutive_breaches += 1
            self.healthy_windows = 0
            if self.consecutive_breaches >= self.config.breach_windows:
                self.state = "halted"  # at once: the next request routes to stable
                self.weight = 0.0
                self._window = None
                action = "rollback"
        elif verdict.verdict == "healthy":
            self.consecutive_breaches = 0
            self.healthy_windows += 1
            action = self._after_healthy()
        log.info(
            "%s: canary %s window %d: %s %s%s", self.deployment.model_name, short(build), verdict.number, verdict.verdict,
            json.dumps(verdict.figures, sort_keys=True), f" ({'; '.join(verdict.breaches)})" if verdict.breaches else "",
        )  # fmt: skip
        return action, verdict, build

    def _after_healthy(self) -> str:
        steps = self.config.steps
        at_last = not steps or self.weight >= steps[-1]
        if not at_last and self.healthy_windows >= self.config.step_windows:
            self.weight = next(s for s in steps if s > self.weight)
            self.healthy_windows = 0
            log.info("%s: canary %s steps up to %g%%", self.deployment.model_name, short(self.build_hash), self.weight)
            return "none"
        if at_last and self.config.promote_after and self.healthy_windows >= self.config.promote_after:
            self.state = "promoting"
            return "promote"
        return "none"

    def _act(self, action: str, verdict: Verdict, build: str) -> None:
        if action == "rollback":
            reason = self._reason(verdict, build)
            self.halted[build] = {"at": _now_iso(), "reason": reason, "window": verdict.number, "recorded": None}
            log.error("%s: canary %s halted: %s", self.deployment.model_name, short(build), reason)
            threading.Thread(target=self._roll_back, args=(build, reason), name="modelgate-canary-rollback", daemon=True).start()
        elif action == "promote":
            threading.Thread(target=self._promote, args=(build, verdict), name="modelgate-canary-promote", daemon=True).start()

    def _reason(self, verdict: Verdict, build: str) -> str:
        n = self.config.breach_windows
        figures = json.dumps(verdict.figures, sort_keys=True, separators=(",", ":"))
        return (
            f"automatic canary rollback by serve: build {short(build)} breached {n} consecutive analysis window"
            f"{'s' if n > 1 else ''} (last, window {verdict.number}: {'; '.join(verdict.breaches)}); figures {figures}"
        )

    def _roll_back(self, build: str, reason: str) -> None:
        from modelgate.registry import api

        model, tag = self.deployment.model_name, self.deployment.tag
        record = self.halted[build]
        if self.signing_key is None or self.write_registry is None:
            record["recorded"] = "unrecorded"
            record["note"] = "no signing key (--signing-key): routing stopped; the canary tag still names this build"
            self._count_rollback(build, "unrecorded")
            return
        try:
            state = self.write_registry.tag_state(model, tag)
            if state.build_hash != build:
                record["recorded"] = "unrecorded"
                record["note"] = f"the canary tag already names {short(state.build_hash)}: nothing to roll back"
                self._count_rollback(build, "unrecorded")
                return
            result = api.rollback(
                self.write_registry, model, tag, signing_key=lambda: self.signing_key, reason=reason,
                warn=lambda message: log.warning("%s: %s", model, message),
            )  # fmt: skip
        except (ModelgateError, OSError) as e:
            record["recorded"] = "unrecorded"
            record["note"] = f"the rollback event could not be written: {e}"
            log.error("%s: canary %s: %s; routing stays stopped", model, short(build), record["note"])
            self._count_rollback(build, "unrecorded")
            return
        record.update(recorded="signed", seq=result.seq, rolled_back_to=result.build_hash)
        self.events.append({"action": "rollback", "tag": tag, "build_hash": build, "to": result.build_hash, "seq": result.seq, "reason": reason})
        self._count_rollback(build, "signed")
        log.warning("%s: rolled %s back from %s to %s (history event %s)", model, tag, short(build), short(result.build_hash), result.seq)
        self.deployment.request_check("notify")

    def _count_rollback(self, build: str, recorded: str) -> None:
        if self.metrics is not None:
            self.metrics.rollbacks.labels(self.deployment.model_name, self.deployment.tag, short(build), recorded).inc()

    def _promote(self, build: str, verdict: Verdict) -> None:
        from modelgate.registry import api
        from modelgate.registry import bundle as bundles

        model = self.deployment.model_name
        served = self.deployment.current
        reason = (
            f"automatic canary promotion by serve: build {short(build)} healthy for {self.config.promote_after} "
            f"windows at {self.weight:g}% (last, window {verdict.number}: {json.dumps(verdict.figures, sort_keys=True, separators=(',', ':'))})"
        )
        try:
            if self.signing_key is None or self.write_registry is None:
                raise UsageError("no signing key (--signing-key): promotion needs one")
            if served is None or served.build_hash != build:
                raise UsageError("the canary build is no longer serving")
            [result] = api.promote(
                self.write_registry, [bundles.read(served.directory)], self.stable_tag, signing_key=lambda: self.signing_key,
                reason=reason, warn=lambda message: log.warning("%s: %s", model, message),
            )  # fmt: skip
        except (ModelgateError, OSError) as e:
            log.error("%s: canary %s not promoted: %s; it keeps its weight", model, short(build), e)
            with self._lock:
                if self.state == "promoting" and self.build_hash == build:
                    self.state, self.healthy_windows = "running", 0
            self.events.append({"action": "promote-refused", "tag": self.stable_tag, "build_hash": build, "error": str(e)})
            return
        self.events.append({"action": "promote", "tag": self.stable_tag, "build_hash": build, "seq": result.seq, "reason": reason})
        if self.metrics is not None:
            self.metrics.promotions.labels(model, self.stable_tag, short(build)).inc()
        log.warning("%s: promoted canary %s to %s (history event %s)", model, short(build), self.stable_tag, result.seq)
        with self._lock:
            if self.build_hash == build:
                self.state = "promoted"
        if self.on_stable_changed is not None:
            self.on_stable_changed()

    # ---- reading

    def status(self) -> dict:
        window = self._window
        return {
            "tag": self.deployment.tag,
            "state": self.state,
            "build_hash": self.build_hash,
            "weight_percent": self.weight,
            "consecutive_breaches": self.consecutive_breaches,
            "healthy_windows": self.healthy_windows,
            "window": {"number": window.number, "canary_requests": len(window.canary), "stable_requests": len(window.stable)} if window else None,
            "last_verdicts": [v.to_json() for v in self.verdicts[-5:]],
            "halted": {k: dict(v) for k, v in self.halted.items()},
            "events": list(self.events),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()},
            "signing_key": self.signing_key is not None,
        }


@dataclass(frozen=True)
class Answer:
    result: object  # what `encode` returned
    served: Served
    arm: str  # the arm whose build answered: "stable" or "canary"
    routed: str  # the arm the request was routed to
    fallback: str | None = None  # why a canary request was answered by stable


class Service:
    """The stable Deployment, an optional Canary, and the per-request metrics."""

    def __init__(self, stable: Deployment, canary: Canary | None = None, metrics: metrics_lib.Metrics | None = None, *, seed: int | None = None):
        self.stable = stable
        self.canary = canary
        self.metrics = metrics or metrics_lib.Metrics()
        self._random = random.Random(seed)
        self._shadow_random = random.Random(None if seed is None else seed + 1)
        if canary is not None:
            canary.metrics = self.metrics
            canary.on_stable_changed = lambda: stable.request_check("notify")
        for deployment in self.deployments():
            deployment.on_attempt = self._count_attempt
        self.metrics.add_state(self._state_metrics)
        self.model_name = stable.model_name

    def deployments(self) -> list[Deployment]:
        return [self.stable] + ([self.canary.deployment] if self.canary else [])

    def deployment_for(self, tag: str) -> Deployment | None:
        return next((d for d in self.deployments() if d.tag == tag), None)

    def _count_attempt(self, deployment: Deployment, attempt) -> None:
        self.metrics.rollouts.labels(deployment.model_name, deployment.tag, attempt.outcome).inc()
        if attempt.outcome == "refused":
            self.metrics.refusals.labels(deployment.model_name, deployment.tag).inc()

    def _state_metrics(self):
        builds = []
        for arm, deployment in (("stable", self.stable), ("canary", self.canary.deployment if self.canary else None)):
            served = deployment.current if deployment else None
            if served is not None:
                builds.append(([served.model_name, served.tag, arm, short(served.build_hash), served.runtime, served.git_commit or ""], 1.0))
        yield metrics_lib.gauge(
            "modelgate_build_info", "The build each tag serves (1)", ["model", "tag", "arm", "build_hash", "runtime", "git_commit"], builds
        )
        if self.canary is not None:
            c = self.canary
            yield metrics_lib.gauge(
                "modelgate_canary_weight_percent", "Share of requests routed to the canary now", ["model", "tag", "build_hash"],
                [([self.model_name, c.deployment.tag, short(c.build_hash)], c.weight)],
            )  # fmt: skip
            yield metrics_lib.gauge(
                "modelgate_canary_consecutive_breaches", "Breaching analysis windows in a row", ["model", "tag"],
                [([self.model_name, c.deployment.tag], float(c.consecutive_breaches))],
            )  # fmt: skip

    # ---- routing

    def key_of(self, headers: Mapping[str, str]) -> str:
        header = self.canary.config.key_header if self.canary else DEFAULT_KEY_HEADER
        return headers.get(header) or headers.get(REQUEST_ID_HEADER) or f"random-{self._random.getrandbits(64):x}"

    def route(self, headers: Mapping[str, str]) -> tuple[Served | None, Served | None]:
        """(stable, canary or None) for this request."""
        stable = self.stable.current
        if self.canary is None:
            return stable, None
        canary = self.canary.sync(stable)
        if canary is None or not self.canary.routes_to_canary(self.key_of(headers)):
            return stable, None
        return stable, canary

    def answer(
        self,
        headers: Mapping[str, str],
        parse: Callable,
        encode: Callable,
        unavailable: Callable[[str], Exception],
        pinned: Served | None = None,
    ) -> Answer:
        """Answers one request: parse(served) -> inputs, served.forward, encode(served, outputs) -> result.

        InputError is the client's (a 4xx), as is a model that cannot run the inputs (422); any
        failure of the canary falls back to stable. `pinned`: a build the client named (OIP's
        /versions/<build_hash>), answered by that build alone."""
        if pinned is not None:
            canary_build = self.canary.deployment.current if self.canary else None
            arm = "canary" if canary_build is not None and canary_build is pinned else "stable"
            return self._answer_plain(pinned, arm, parse, encode)
        stable, canary = self.route(headers)
        if stable is None:
            raise unavailable(self.stable.problem or "starting up, looking at the tag")
        if canary is not None:
            try:
                return self._answer_canary(stable, canary, parse, encode)
            except CanaryFailure as failure:
                return self._answer_plain(stable, "stable", parse, encode, routed="canary", fallback=failure.kind)
        return self._answer_plain(stable, "stable", parse, encode)

    def _answer_plain(self, served: Served, arm: str, parse, encode, routed: str | None = None, fallback: str | None = None) -> Answer:
        """One build answers, its errors are the client's answer. A fallback (routed "canary") is
        counted on the canary arm only, so the arms' figures stay apart."""
        counted = routed is None
        m = self.metrics.arm(served.model_name, served.tag, arm, served.build_hash)
        start = time.perf_counter()
        if counted:
            m.requests.inc()
        kind = "ok"
        try:
            inputs = parse(served)
            try:
                outputs = served.forward(inputs)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for inputs it cannot run
                kind = "model_error"
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise InputError(422, f"the model cannot run on these inputs: {first}") from None
            if not finite(outputs):
                kind = "nonfinite"
                m.nonfinite.inc()
            result = encode(served, outputs)
        except InputError:
            kind = "model_error" if kind == "model_error" else "invalid_input"
            raise
        except Exception:
            kind = "nonfinite" if kind == "nonfinite" else "model_error"
            raise
        finally:
            seconds = time.perf_counter() - start
            if counted:
                m.latency.observe(seconds)
                if kind != "ok":
                    m.error(kind)
                if self.canary is not None:
                    self.canary.record(arm, served.build_hash, seconds, kind)
        return Answer(result, served, arm, routed or arm, fallback)

    def _answer_canary(self, stable: Served, canary: Served, parse, encode) -> Answer:
        m = self.metrics.arm(canary.model_name, canary.tag, "canary", canary.build_hash)
        m.requests.inc()
        start = time.perf_counter()
        shadow_match = None
        try:
            inputs = parse(canary)
            try:
                outputs = canary.forward(inputs)
            except Exception as e:  # noqa: BLE001 - the canary's fault until stable shows otherwise
                raise CanaryFailure("model_error", str(e)) from None
            if not finite(outputs):
                m.nonfinite.inc()
                raise CanaryFailure("nonfinite", "the canary's outputs hold non-finite values")
            seconds = time.perf_counter() - start
            if self.canary.config.shadow_fraction and self._shadow_random.random() < self.canary.config.shadow_fraction:
                shadow_match = self._shadow(stable, canary, parse, outputs)
                m.shadow("match" if shadow_match else "mismatch")
                if shadow_match is False:
                    raise CanaryFailure("shadow_mismatch", "the canary's answer differs from stable's beyond the golden tolerances")
            result = encode(canary, outputs)
        except CanaryFailure as failure:
            seconds = time.perf_counter() - start
            m.latency.observe(seconds)
            m.error(failure.kind)
            m.fallback(failure.kind)
            self.canary.record("canary", canary.build_hash, seconds, failure.kind, shadow_match)
            raise
        except InputError:
            # The client's mistake, or the canary's signature refusing what stable takes: stable decides.
            seconds = time.perf_counter() - start
            try:
                answer = self._answer_plain(stable, "stable", parse, encode, routed="canary", fallback="rejected")
            except InputError:
                m.latency.observe(seconds)
                m.error("invalid_input")
                raise
            m.latency.observe(seconds)
            m.error("rejected")
            m.fallback("rejected")
            self.canary.record("canary", canary.build_hash, seconds, "rejected")
            return answer
        m.latency.observe(seconds)
        self.canary.record("canary", canary.build_hash, seconds, "ok", shadow_match)
        return Answer(result, canary, "canary", "canary")

    def _shadow(self, stable: Served, canary: Served, parse, canary_outputs) -> bool | None:
        """Stable answers the same request; True when every shared output is within the canary's
        golden tolerances of stable's, None when stable cannot answer it (no data)."""
        try:
            expected = stable.forward(parse(stable))
        except Exception:  # noqa: BLE001 - no comparison, no verdict
            return None
        tolerances = canary.signature.tolerances
        for name, value in canary_outputs.items():
            if name not in expected or name not in tolerances:
                continue
            tol = tolerances[name]
            if compare(name, value, expected[name], tol["atol"], tol["rtol"]) is not None:
                return False
        return True

    # ---- reading

    def version(self) -> dict:
        doc = self.stable.version()
        doc["arm"] = "stable"
        if self.canary is not None:
            canary = self.canary.status()
            canary["deployment"] = self.canary.deployment.version()
            canary["signing_key"] = self.canary.signing_key is not None
            doc["canary"] = canary
        return doc


def headers_of(answer: Answer) -> dict[str, str]:
    headers = {"x-modelgate-build": answer.served.build_hash, "x-modelgate-arm": answer.arm, "x-modelgate-tag": answer.served.tag}
    if answer.fallback:
        headers["x-modelgate-fallback"] = answer.fallback
    return headers


def default_canary_state_dir(state_dir: Path, canary_tag: str) -> Path:
    return state_dir.parent / f"{state_dir.name}.{canary_tag}"

