"""The canary: routing, analysis and automatic rollback; the fault-injection runs under open-loop load.

The four runs (tests/serve/canary_load.py, a real `serve --canary-tag=canary` process, 200 req/s):
a canary that answers NaN for ~5% of requests outside the golden set, one 5x slower, one whose
answers differ from stable's beyond the golden tolerances on the shadow sample, and a healthy one.
Each bad one is stopped within BOUND canary requests and rolled back by a signed history event
whose reason holds the breach figures, with no failed client request; the healthy one keeps its
traffic.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import pytest

from modelgate.errors import UsageError
from modelgate.serve.canary import BUCKETS, Canary, CanaryConfig, Service, Window, bucket, judge
from modelgate.serve.deployment import Deployment
from modelgate.serve.app import create_app
from modelgate.serve.notifications import NotificationGuard
from tests.serve import canary_load, harness
from tests.serve.bundles import build_hash

with warnings.catch_warnings():  # starlette suggests a package (httpx2) that the lock does not pin
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

# Rollback is decided after BREACH_WINDOWS windows of WINDOW_REQUESTS canary requests; requests in
# flight when it is decided (at most one per keep-alive connection, 32) still reach the canary. A
# fault that shows in every window (slow, shifted) is stopped within BOUND; NaN for ~5% of rows can
# leave a window of 60 clean (probability 0.05): it is given three more windows.
BOUND = canary_load.BREACH_WINDOWS * canary_load.WINDOW_REQUESTS + 32
NAN_BOUND = BOUND + 3 * canary_load.WINDOW_REQUESTS


# ---- analysis, routing, configuration (no server)


def window(canary: list[tuple[float, str]], stable: list[float] = (), shadow: list[bool] = ()) -> Window:
    return Window(1, 0.0, list(canary), list(stable), list(shadow))


def test_a_window_without_enough_samples_has_no_verdict_however_bad_they_are():
    config = CanaryConfig(min_samples=20, window_requests=100)
    verdict = judge(window([(0.001, "nonfinite")] * 19), config)
    assert verdict.verdict == "insufficient" and verdict.breaches == ()
    assert judge(window([(0.001, "nonfinite")] * 20), config).verdict == "breach"


def test_latency_breaches_only_against_enough_stable_samples_and_beyond_ratio_and_slack():
    config = CanaryConfig(min_samples=20, max_p95_ratio=2.0, p95_slack_ms=2.0)
    slow = [(0.010, "ok")] * 20
    assert judge(window(slow, [0.001] * 19), config).verdict == "healthy"  # no stable figure: no latency verdict
    breach = judge(window(slow, [0.001] * 20), config)
    assert breach.verdict == "breach" and breach.breaches[0].startswith("p95 latency 10.00 ms > 3.00 ms")
    # 2x stable but within the slack: healthy (sub-millisecond noise is not a regression)
    assert judge(window([(0.0025, "ok")] * 20, [0.001] * 20), config).verdict == "healthy"


def test_shadow_mismatches_breach_only_with_enough_comparisons():
    config = CanaryConfig(min_samples=20, min_shadow_samples=5)
    ok = [(0.001, "ok")] * 20
    assert judge(window(ok, shadow=[False] * 4), config).verdict == "healthy"
    verdict = judge(window(ok, shadow=[False] * 5), config)
    assert verdict.verdict == "breach" and "shadow mismatches 5/5" in verdict.breaches[0]


def test_routing_is_sticky_and_a_step_up_only_adds_clients():
    keys = [f"user-{i}" for i in range(20_000)]
    at_5 = {k for k in keys if bucket(k) < 5 * BUCKETS / 100}
    at_25 = {k for k in keys if bucket(k) < 25 * BUCKETS / 100}
    assert abs(len(at_5) / len(keys) - 0.05) < 0.01 and abs(len(at_25) / len(keys) - 0.25) < 0.015
    assert at_5 <= at_25
    assert all(bucket(k) == bucket(k) for k in keys[:100])


def test_a_config_file_with_an_unknown_key_or_impossible_windows_is_refused(tmp_path):
    path = tmp_path / "canary.json"
    path.write_text(json.dumps({"weight": 10, "max_eror_rate": 0.1}))
    with pytest.raises(UsageError, match="unknown keys: max_eror_rate"):
        CanaryConfig.load(path, {})
    path.write_text(json.dumps({"min_samples": 50, "window_requests": 20}))
    with pytest.raises(UsageError, match="no window could have a verdict"):
        CanaryConfig.load(path, {})
    path.write_text(json.dumps({"weight": 10, "steps": [5, 25, 50, 100]}))
    assert CanaryConfig.load(path, {"min_samples": 10}).steps == (5.0, 25.0, 50.0, 100.0)


def test_the_model_packages_canary_config_loads():
    config = CanaryConfig.load(Path(harness.REPO) / "models" / "tiny_transformer" / "canary.json", {})
    assert config.breach_windows >= 1 and config.min_samples <= config.window_requests


# ---- in-process: a canary without a signing key stops routing and says so; step-up; promotion


@pytest.fixture
def pair(local_registry, keys, tmp_path, releases):
    """Stable at v1 and canary at v2 on a local registry, two Deployments (no worker threads)."""
    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    harness.promote(local_registry, v1, keys["signer"], tag="canary")
    harness.promote(local_registry, v2, keys["signer"], tag="canary")
    made = []

    def deployment(tag: str) -> Deployment:
        d = Deployment(harness.MODEL, tag, harness.open_registry(local_registry), str(keys["signer_public"]), tmp_path / f"state-{tag}")
        d.claim()
        assert d.check("startup").outcome == "serving"
        made.append(d)
        return d

    yield deployment("stable"), deployment("canary")
    for d in made:
        d.stop()


def predict(client: TestClient, key: str, body: dict) -> dict:
    response = client.post("/predict", json=body, headers={"X-Modelgate-Key": key})
    assert response.status_code == 200, response.text
    doc = response.json()
    assert response.headers["x-modelgate-arm"] == doc["arm"] and response.headers["x-modelgate-build"] == doc["build_hash"]
    doc["fallback"] = response.headers.get("x-modelgate-fallback")
    return doc


def golden_body(bundle: Path) -> dict:
    from safetensors.numpy import load_file

    return {"inputs": {k: v[:1].tolist() for k, v in load_file(str(bundle / "inputs.safetensors")).items()}}


def test_without_a_signing_key_a_breaching_canary_stops_taking_traffic_and_reports(pair, releases, local_registry):
    stable, canary_deployment = pair
    # v2 is another training run: the shadow comparison with stable (v1) sees every answer differ.
    config = CanaryConfig(weight=50, window_requests=10, min_samples=10, breach_windows=2, shadow_fraction=1.0, min_shadow_samples=5)
    canary = Canary(canary_deployment, config, stable_tag="stable")
    service = Service(stable, canary)
    client = TestClient(create_app(stable, NotificationGuard(None), service=service, manage_deployment=False))
    body = golden_body(releases["v1"])
    answered = [predict(client, f"user-{i}", body) for i in range(200)]
    routed = [i for i, a in enumerate(answered) if a["fallback"] or a["arm"] == "canary"]
    assert len(routed) == 20  # two windows of 10, then routing stopped
    assert all(answered[i]["fallback"] == "shadow_mismatch" and answered[i]["arm"] == "stable" for i in routed)
    assert all(a["arm"] == "stable" and a["fallback"] is None for a in answered[routed[-1] + 1 :])
    version = client.get("/version").json()
    halted = harness.wait_for(lambda: canary.halted[build_hash(releases["v2"])].get("recorded") and canary.halted[build_hash(releases["v2"])], 5, "the report")
    assert version["canary"]["state"] == "halted" and halted["recorded"] == "unrecorded"
    assert "no signing key" in halted["note"]
    assert [e["action"] for e in harness.open_registry(local_registry).events(harness.MODEL)] == ["promote"] * 3  # nothing written
    metrics = client.get("/metrics").text
    assert 'modelgate_rollbacks_total{build_hash="%s",model="tiny_transformer",recorded="unrecorded",tag="canary"} 1.0' % build_hash(releases["v2"])[:12] in metrics
    check_dashboard(metrics, list(service.metrics.registry._collector_to_names))


def check_dashboard(metrics: str, registry_collectors) -> None:
    """Every series the Grafana dashboard queries is one the service exports, with the labels it groups by."""
    import re

    path = Path(harness.REPO) / "tools" / "modelgate" / "serve" / "grafana" / "modelgate-serve.json"
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [a["expr"] for a in dashboard["annotations"]["list"]]
    exported: dict[str, set] = {}
    for line in metrics.splitlines():
        if line.startswith("# TYPE modelgate_"):  # a metric with no sample yet still declares itself
            _, _, name, kind = line.split()
            for suffix in ("_bucket", "_sum", "_count") if kind == "histogram" else ("",):
                exported.setdefault(name + suffix, set())
        elif line.startswith("modelgate_") and "{" in line:
            name, labels = line.split("{", 1)
            exported.setdefault(name, set()).update(re.findall(r'(\w+)="', labels.rsplit("}", 1)[0]))
    declared = {label for collector in registry_collectors for label in getattr(collector, "_labelnames", ())}
    for expr in exprs:
        for name in re.findall(r"\b(modelgate_\w+)", expr):
            assert name in exported, f"the dashboard queries {name}, which /metrics does not export: {sorted(exported)}"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label == "le" or label in declared or any(label in labels for labels in exported.values()), f"no metric has label {label!r}"


def test_an_allowed_canary_steps_up_and_is_promoted_to_stable_by_a_signed_event(pair, releases, keys, local_registry):
    stable, canary_deployment = pair
    config = CanaryConfig(weight=5, steps=(5, 50, 100), step_windows=1, promote_after=2, window_requests=10, min_samples=10, p95_slack_ms=1000)
    canary = Canary(
        canary_deployment, config, stable_tag="stable", signing_key=str(keys["signer"]), write_registry=harness.open_registry(local_registry)
    )
    service = Service(stable, canary)
    client = TestClient(create_app(stable, NotificationGuard(None), service=service, manage_deployment=False))
    body = golden_body(releases["v1"])
    weights = []
    for i in range(2000):
        predict(client, f"user-{i}", body)
        if canary.weight and (not weights or weights[-1] != canary.weight):
            weights.append(canary.weight)
        if canary.state == "promoted":
            break
    assert weights == [5, 50, 100]
    event = harness.wait_for(lambda: next((e for e in canary.events if e["action"] == "promote"), None), 30, "the promotion")
    history = harness.open_registry(local_registry).events(harness.MODEL)
    assert history[-1]["action"] == "promote" and history[-1]["tag"] == "stable" and history[-1]["seq"] == event["seq"]
    assert history[-1]["build_hash"] == build_hash(releases["v2"]) and "signature" in history[-1]
    assert history[-1]["reason"].startswith("automatic canary promotion by serve: build")
    stable.check("notify")
    assert stable.current.build_hash == build_hash(releases["v2"])
    assert predict(client, "user-1", body)["arm"] == "stable"  # the canary tag names stable's build now: no canary


# ---- the fault-injection runs, under open-loop load


@pytest.fixture(scope="module")
def runs(releases, tmp_path_factory):
    done: dict[str, canary_load.FaultRun] = {}
    lock = threading.Lock()

    def run(fault: str) -> canary_load.FaultRun:
        with lock:
            if fault not in done:
                done[fault] = canary_load.run_fault(fault, releases["v1"], tmp_path_factory.mktemp(f"canary-{fault}"))
                print(canary_load.describe(done[fault], 200.0))
            return done[fault]

    return run


@pytest.mark.parametrize("fault, breach", [("nan", "non-finite outputs"), ("slow", "p95 latency"), ("shifted", "shadow mismatches")])
def test_a_bad_canary_is_rolled_back_by_a_signed_event_with_no_failed_request(runs, fault, breach):
    run = runs(fault)
    assert run.failed == [], run.failed[:3]
    assert 0 < run.canary_requests <= (NAN_BOUND if fault == "nan" else BOUND), run.log[-2000:]
    assert run.version["canary"]["state"] == "halted"
    event = run.rollback
    assert event is not None, run.history
    assert event["previous"] == run.canary and event["build_hash"] == run.stable and "signature" in event
    assert event["reason"].startswith(f"automatic canary rollback by serve: build {run.canary[:12]} breached 2 consecutive")
    assert breach in event["reason"] and '"canary_requests":' in event["reason"]
    halted = run.version["canary"]["halted"][run.canary]
    assert halted["recorded"] == "signed" and halted["seq"] == event["seq"]
    assert any(line.startswith("modelgate_rollbacks_total{") and 'recorded="signed"' in line for line in run.metrics_after)
    assert not any("modelgate_rollbacks_total" in line for line in run.metrics_before)


def test_the_shadow_sample_catches_a_canary_that_differs_beyond_the_golden_tolerances(runs):
    run = runs("shifted")
    assert any('result="mismatch"' in line for line in run.metrics_after)
    # A compared request that differed was answered by stable; half the canary's requests are compared.
    assert run.fallbacks > 0 and all(line for line in run.metrics_after if 'reason="shadow_mismatch"' in line)


def test_a_healthy_canary_keeps_its_share_and_is_not_rolled_back(runs):
    run = runs("healthy")
    assert run.failed == []
    assert run.rollback is None and run.version["canary"]["state"] == "running"
    share = run.answered_by_canary / len(run.samples)
    assert 0.15 < share < 0.35, share  # 25% of keys, from ~1 s into the run
    assert any(v["verdict"] == "healthy" for v in run.version["canary"]["last_verdicts"])


def test_the_open_inference_protocol_answers_from_the_routed_arm_and_says_which(pair, releases):
    stable, canary_deployment = pair
    canary = Canary(canary_deployment, CanaryConfig(weight=100, min_samples=10, window_requests=10, p95_slack_ms=1000), stable_tag="stable")
    client = TestClient(create_app(stable, NotificationGuard(None), service=Service(stable, canary), manage_deployment=False))
    inputs = golden_body(releases["v1"])["inputs"]
    request = {"inputs": [
        {"name": "tokens", "datatype": "INT64", "shape": [1, len(inputs["tokens"][0])], "data": inputs["tokens"]},
        {"name": "mask", "datatype": "BOOL", "shape": [1, len(inputs["mask"][0])], "data": inputs["mask"]},
    ]}  # fmt: skip
    response = client.post(f"/v2/models/{harness.MODEL}/infer", json=request, headers={"X-Request-Id": "client-7"})
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == build_hash(releases["v2"]) == response.headers["x-modelgate-build"]
    assert response.headers["x-modelgate-arm"] == "canary"
    # A client that names stable's build gets stable's answer, whatever the routing says.
    pinned = client.post(f"/v2/models/{harness.MODEL}/versions/{build_hash(releases['v1'])}/infer", json=request)
    assert pinned.json()["model_version"] == build_hash(releases["v1"]) and pinned.headers["x-modelgate-arm"] == "stable"
    assert client.get("/version").json()["canary"]["build_hash"] == build_hash(releases["v2"])
