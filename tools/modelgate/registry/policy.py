"""May this build get this tag? Promotion policy in one place: an ordered list of checks that every
promotion goes through, whoever calls api.promote (the CLI, a test, a canary's automatic promotion).

    1. receipts  the release's test receipts are its own, made for its build, and passed (and a GPU
                 variant ran, where --require=gpu asks for one)            check_release
    2. version   a version tag names one build, forever                       TAG_CHECKS[0]
    3. first     a channel's first build has no baseline                      TAG_CHECKS[1]
    4. baseline  the build the channel names now verifies, as fetch verifies  TAG_CHECKS[2]
                 it (its metrics are the bar: an unverified one would let whoever writes to the
                 registry lower or raise it)
    5. budget    no metric regresses beyond its budget against that baseline TAG_CHECKS[3]

1 runs once per bundle before anything is written; 2-5 run at commit time against the tag's state
then (Registry.move_tag: they run again if another promoter moved the tag meanwhile).
`--force --reason=TEXT` overrides 4 and 5 (recorded in the history), never 1 or 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from modelgate import receipts
from modelgate.errors import GateError, VerificationError

from . import bundle as bundles
from . import budgets, tags
from .registry import Registry, TagState


@dataclass
class Decision:
    unchanged: bool  # the tag names this build already: nothing to move
    checks: list[budgets.MetricCheck]
    first: bool  # a channel's first build: no baseline
    forced: bool  # moved past a failing check by --force --reason


def check_release(b: bundles.Bundle, required: set[str]) -> list[str]:
    """Check 1: raises ReceiptError (one line) unless the bundle's receipts are its own and passed;
    returns notes to print (GPU receipts that were not recorded)."""
    return receipts.check_bundle(b.directory, b.manifest, required)


@dataclass
class _Move:
    registry: Registry
    b: bundles.Bundle
    tag: str
    kind: tags.TagKind
    state: TagState
    force: bool
    load_verifier: Callable[[], None]
    baseline: dict | None = field(default=None)


def _version_tag_never_moves(m: _Move) -> Decision | None:
    if m.state.build_hash is not None and not m.kind.movable:
        raise GateError(
            f"{m.b.model}: version tag {m.tag} already names build {m.state.build_hash[:12]}; "
            "version tags never move (choose a new version)"
        )
    return None


def _first_build_has_no_baseline(m: _Move) -> Decision | None:
    if m.state.build_hash is None:
        return Decision(False, [], m.kind.movable, False)
    return None


def _baseline_verifies(m: _Move) -> Decision | None:
    m.load_verifier()
    try:
        m.baseline = m.registry.read_verified_build(m.b.model, m.state.build_hash)
    except VerificationError as e:
        if m.force:
            return Decision(False, [], False, True)
        raise GateError(
            f"{m.b.model}: {m.tag} points at build {m.state.build_hash[:12]}, whose manifest does not verify, so its metrics "
            f"cannot be the baseline ({e}); pass --force --reason=TEXT to promote anyway"
        ) from None
    if m.baseline is None:
        if m.force:
            return Decision(False, [], False, True)
        raise GateError(
            f"{m.b.model}: {m.tag} points at build {m.state.build_hash[:12]}, whose manifest is missing from "
            f"{m.registry.uri}; cannot compare metrics (pass --force --reason=TEXT to promote anyway)"
        )
    return None


def _metrics_within_budget(m: _Move) -> Decision | None:
    b = m.b
    checks = budgets.compare(b.manifest.get("metrics", {}), m.baseline.get("metrics", {}), b.manifest.get("metric_gates", {}))
    failed = budgets.failures(checks)
    if failed and not m.force:
        raise GateError(
            f"refusing to promote {b.model} {b.build_hash[:12]} to {m.tag}: "
            + "; ".join(c.describe() for c in failed)
            + f" against {m.state.build_hash[:12]} (pass --force --reason=TEXT to override)"
        )
    return Decision(False, checks, False, bool(failed))


# Checks 2-5, in order: the first that decides (or refuses) ends the list.
TAG_CHECKS = (_version_tag_never_moves, _first_build_has_no_baseline, _baseline_verifies, _metrics_within_budget)


def decide(
    registry: Registry,
    b: bundles.Bundle,
    tag: str,
    kind: tags.TagKind,
    state: TagState,
    force: bool,
    load_verifier: Callable[[], None],
) -> Decision:
    """Checks 2-5 against the tag's state: the decision, or GateError naming the failed check.
    `load_verifier` makes sure the registry has the promoter's public key (a dry run loads it only
    when there is a baseline to verify)."""
    if state.build_hash == b.build_hash:
        return Decision(True, [], False, False)
    move = _Move(registry, b, tag, kind, state, force, load_verifier)
    for check in TAG_CHECKS:
        decision = check(move)
        if decision is not None:
            return decision
    raise AssertionError("the last check always decides")
