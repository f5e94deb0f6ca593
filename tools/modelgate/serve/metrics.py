"""Prometheus metrics of the service, on GET /metrics (prometheus-client, its own registry).

Per request, labelled by model, tag, arm ("stable" or "canary") and build hash (12 hex digits,
as the logs and /version's short forms print it):

    modelgate_requests_total                    every request an arm took (a canary request that
                                                fell back to stable counts on the canary arm)
    modelgate_request_errors_total{kind}        invalid_input (the client's: 4xx), model_error (the
                                                model raised), nonfinite (NaN or inf in an output),
                                                shadow_mismatch (the canary's answer differed from
                                                stable's beyond the golden tolerances)
    modelgate_request_latency_seconds           histogram of the time in the handler (parse, model,
                                                answer), the figure the canary analysis uses
    modelgate_nonfinite_outputs_total           requests whose outputs held a non-finite value
    modelgate_fallbacks_total{reason}           canary requests answered by stable instead
    modelgate_shadow_comparisons_total{result}  canary answers compared with stable's (match, mismatch)

Per tag and canary:

    modelgate_rollouts_total{outcome}           rollout attempts: serving, refused, failed
    modelgate_refusals_total                    builds or tag states refused
    modelgate_rollbacks_total{recorded}         automatic canary rollbacks: signed (a history event)
                                                or unrecorded (no signing key: routing stopped only)
    modelgate_promotions_total                  automatic promotions of a healthy canary
    modelgate_canary_windows_total{verdict}     analysis windows: healthy, breach, insufficient
    modelgate_canary_weight_percent             the share of requests routed to the canary now
    modelgate_build_info{arm, build_hash, runtime, git_commit}   1 per serving build
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ARM_LABELS = ("model", "tag", "arm", "build_hash")


class _StateCollector:
    """Gauges read at scrape time from the service's state: nothing to keep in sync."""

    def __init__(self, read: Callable[[], Iterable[GaugeMetricFamily]]):
        self._read = read

    def collect(self):
        yield from self._read()

    def describe(self):
        return []


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("modelgate_requests", "Requests taken by an arm", ARM_LABELS, registry=r)
        self.errors = Counter("modelgate_request_errors", "Failed or rejected answers by kind", ARM_LABELS + ("kind",), registry=r)
        self.latency = Histogram(
            "modelgate_request_latency_seconds", "Time in the handler: parse, model, answer", ARM_LABELS, buckets=LATENCY_BUCKETS, registry=r
        )
        self.nonfinite = Counter("modelgate_nonfinite_outputs", "Requests whose outputs held NaN or inf", ARM_LABELS, registry=r)
        self.fallbacks = Counter("modelgate_fallbacks", "Canary requests answered by stable instead", ARM_LABELS + ("reason",), registry=r)
        self.shadow = Counter("modelgate_shadow_comparisons", "Canary answers compared with stable's", ARM_LABELS + ("result",), registry=r)
        self.rollouts = Counter("modelgate_rollouts", "Rollout attempts by outcome", ("model", "tag", "outcome"), registry=r)
        self.refusals = Counter("modelgate_refusals", "Builds or tag states refused", ("model", "tag"), registry=r)
        self.rollbacks = Counter("modelgate_rollbacks", "Automatic canary rollbacks", ("model", "tag", "build_hash", "recorded"), registry=r)
        self.promotions = Counter("modelgate_promotions", "Automatic promotions of a healthy canary", ("model", "tag", "build_hash"), registry=r)
        self.windows = Counter("modelgate_canary_windows", "Canary analysis windows by verdict", ("model", "tag", "build_hash", "verdict"), registry=r)
        self._children: dict[tuple, tuple] = {}

    def add_state(self, read: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self.registry.register(_StateCollector(read))

    def arm(self, model: str, tag: str, arm: str, build_hash: str) -> "ArmMetrics":
        """The per-request metrics of one arm and build, label lookups done once."""
        key = (model, tag, arm, build_hash[:12])
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = ArmMetrics(self, key)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ArmMetrics:
    def __init__(self, metrics: Metrics, labels: tuple):
        self.labels = labels
        self._metrics = metrics
        self.requests = metrics.requests.labels(*labels)
        self.latency = metrics.latency.labels(*labels)
        self.nonfinite = metrics.nonfinite.labels(*labels)
        self._errors: dict[str, object] = {}

    def error(self, kind: str) -> None:
        child = self._errors.get(kind)
        if child is None:
            child = self._errors[kind] = self._metrics.errors.labels(*self.labels, kind)
        child.inc()

    def fallback(self, reason: str) -> None:
        self._metrics.fallbacks.labels(*self.labels, reason).inc()

    def shadow(self, result: str) -> None:
        self._metrics.shadow.labels(*self.labels, result).inc()


def gauge(name: str, documentation: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family
