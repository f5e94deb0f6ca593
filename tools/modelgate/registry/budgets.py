"""Metric budgets: comparing a candidate's metrics with those of the build a channel tag points at now
(the floors and regression budgets each model's spec sets; one of promote's checks, registry/policy.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Metrics are floats written by different processes: allow for rounding at the budget's edge.
_EPSILON = 1e-12


@dataclass(frozen=True)
class MetricCheck:
    metric: str
    candidate: float | None
    baseline: float | None
    regression: float | None  # how much worse the candidate is (negative: better)
    max_regression: float
    higher_is_better: bool
    passed: bool

    def describe(self) -> str:
        if self.regression is None:
            return f"{self.metric}: not compared ({'no baseline value' if self.baseline is None else 'no candidate value'})"
        verdict = "ok" if self.passed else f"regresses by {self.regression:.4g} > {self.max_regression:g}"
        return f"{self.metric} {self.candidate:.4g} vs {self.baseline:.4g} ({verdict})"

    def to_json(self) -> dict:
        return asdict(self)


def compare(candidate: dict, baseline: dict, gates: dict) -> list[MetricCheck]:
    """One check per gated metric; a metric missing on either side is reported and not compared."""
    checks = []
    for metric, gate in sorted(gates.items()):
        higher = bool(gate.get("higher_is_better", True))
        budget = float(gate["max_regression"])
        new, old = candidate.get(metric), baseline.get(metric)
        if new is None or old is None:
            checks.append(MetricCheck(metric, new, old, None, budget, higher, True))
            continue
        regression = (old - new) if higher else (new - old)
        checks.append(MetricCheck(metric, new, old, regression, budget, higher, regression <= budget + _EPSILON))
    return checks


def failures(checks: list[MetricCheck]) -> list[MetricCheck]:
    return [c for c in checks if not c.passed]
