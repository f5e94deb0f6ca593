"""What a person sees in the reports, checked in a real browser (Debian's chromium, playwright).

Each page is opened from a file or from the running service and checked as a reviewer reads it:
a failed output highlighted, the champion's value beside the candidate's, the history newest
first, registry text shown as text (a <script> in a rollback's reason included), no console
errors and no request leaving the page. Screenshots go to the test's outputs
(bazel-testlogs/tests/report/browser_test/test.outputs/). No test here skips: without chromium
they fail, saying how to install it (tools/bootstrap).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import browser
from modelgate.cli import registry as registry_cli
from modelgate.testing.cli import promote_ok, run
from modelgate.testing.releases import build_hash, make_bundle

RELEASE = Path("models/tiny_transformer/release").resolve()  # //models/tiny_transformer:release, in the runfiles
MODEL = "tiny_transformer"
HOSTILE = '<script>document.title="pwned";window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
RED = "rgb(214, 39, 40)"


@pytest.fixture(scope="module")
def chromium():
    with browser.browser() as b:
        yield b


def _ok(capsys, *argv) -> str:
    rc, out, err = run(capsys, registry_cli.main, *argv)
    assert rc == 0, err
    return out


@pytest.fixture
def history(clean_env, tmp_path, capsys):
    """A registry with a model's life: two promotions, a forced regression, a rollback by a person,
    a canary and its automatic rollback by serve. Returns (uri, {name: bundle})."""
    uri = (tmp_path / "registry").as_uri()
    b = {
        "v1": make_bundle(tmp_path / "b", MODEL, seed=1, accuracy=0.95, loss=0.10),
        "v2": make_bundle(tmp_path / "b", MODEL, seed=2, accuracy=0.96, loss=0.09),
        "v3": make_bundle(tmp_path / "b", MODEL, seed=3, accuracy=0.90, loss=0.12),
        "v4": make_bundle(tmp_path / "b", MODEL, seed=4, accuracy=0.97, loss=0.08),
    }
    promote_ok(capsys, uri, b["v1"])
    promote_ok(capsys, uri, b["v2"])
    promote_ok(capsys, uri, b["v3"], extra=("--force", "--reason", "hotfix: accept the accuracy drop for the latency win"))
    _ok(capsys, "rollback", MODEL, "--tag", "stable", "--registry", uri, "--reason", "accuracy dropped in production")
    promote_ok(capsys, uri, b["v2"], tag="canary")
    promote_ok(capsys, uri, b["v4"], tag="canary")
    _ok(capsys, "rollback", MODEL, "--tag", "canary", "--registry", uri, "--reason",
        "automatic canary rollback by serve: build %s breached 2 consecutive analysis windows (non-finite outputs 6/60)" % build_hash(b["v4"])[:12])  # fmt: skip
    return uri, b


def _texts(locator) -> list[str]:
    return [t.strip() for t in locator.all_inner_texts()]


def test_failing_golden_report_highlights_the_output_that_moved(chromium, tmp_path):
    """The golden test's page for a build whose one output is off by x1.01: that output's section is
    framed in red and says FAIL, its worst rows are highlighted, the scatter and heat map are drawn."""
    import torch

    from modelgate import golden, loading, portable
    from modelgate.report import gate_report, render
    from modelgate.spec import load_spec

    portable.deterministic(0)
    spec = load_spec(MODEL)
    model = loading.load_weights(spec, RELEASE / "weights.safetensors")
    data = golden.load(RELEASE, MODEL, [t.name for t in spec.inputs], spec.outputs)
    with torch.inference_mode():
        outputs = spec.forward(model, data.inputs)
    mutated = dict(outputs)
    name = spec.outputs[0]
    mutated[name] = outputs[name] * 1.01
    page_file = render.write(tmp_path / "golden_failing.html", render.gate_page(gate_report.golden_test_report(spec, data, mutated)))
    assert not all(r.passed for r in golden.compare(data, mutated))  # the test's own verdict agrees

    with browser.open_page(chromium, page_file.as_uri()) as (page, watch):
        section = page.locator(f'section.output[data-output="{name}"]')
        assert section.count() == 1
        assert "FAIL" in section.locator("h3").first.inner_text()
        assert section.evaluate("e => getComputedStyle(e).borderTopColor") == RED, "the failed output is not framed in red"
        assert section.evaluate("e => parseFloat(getComputedStyle(e).borderTopWidth)") >= 2
        outside = section.locator("table.worst tr.outside")
        assert outside.count() >= 1, "no worst row is highlighted"
        assert outside.first.evaluate("e => getComputedStyle(e.cells[0]).backgroundColor") != "rgba(0, 0, 0, 0)"
        images = section.locator("img")
        assert images.count() == 2
        assert all(w > 100 for w in images.evaluate_all("els => els.map(e => e.naturalWidth)")), "a figure did not draw"
        assert "FAILED" in page.locator("#verdict").inner_text()
        watch.assert_clean()
        browser.screenshot(page, "golden_failing_x1.01")


def test_passing_release_page_is_the_review_page(chromium):
    """The page the release build draws beside its bundle: passed, every output within tolerance,
    metrics against floors, ONNX at two lengths at least, the receipts it was bound to, lineage."""
    manifest = json.loads((RELEASE / "manifest.json").read_text())
    with browser.open_page(chromium, (RELEASE / "report.html").resolve().as_uri()) as (page, watch):
        assert "PASSED" in page.locator("#verdict").inner_text()
        assert page.locator("section.output.failed").count() == 0
        assert page.locator("section.output.passed").count() == len(manifest["serving"]["outputs"])
        for metric, value in manifest["metrics"].items():
            if metric in manifest["metric_gates"]:
                cell = page.locator(f'#metric-table tr[data-metric="{metric}"] td.candidate')
                assert cell.inner_text() == f"{value:.6g}"
        assert page.locator("#onnx tr").count() >= 3  # a header and two lengths
        receipts = page.locator("#receipts").inner_text()
        for entry in manifest["tests"]["receipts"].values():
            assert entry["target"] in receipts
        assert manifest["build_hash"] in page.locator("#lineage").inner_text()
        watch.assert_clean()
        browser.screenshot(page, "release_review_passing")


def test_review_page_puts_the_champion_beside_the_candidate(chromium, history, tmp_path, capsys):
    """`registry report --release=BUNDLE`: the local release against the build stable names."""
    uri, bundles = history
    out = tmp_path / "site"
    _ok(capsys, "report", "--out", out, "--registry", uri, "--release", RELEASE.resolve())
    manifest = json.loads((RELEASE / "manifest.json").read_text())
    review = out / f"review-{MODEL}-{manifest['build_hash'][:12]}.html"
    champion = json.loads((bundles["v2"] / "manifest.json").read_text())  # stable after the rollback
    with browser.open_page(chromium, review.as_uri()) as (page, watch):
        row = page.locator('#metric-table tr[data-metric="accuracy"]')
        assert row.locator("td.candidate").inner_text() == f"{manifest['metrics']['accuracy']:.6g}"
        assert row.locator("td.champion").inner_text() == f"{champion['metrics']['accuracy']:.6g}", "the champion's value is not beside the candidate's"
        assert build_hash(bundles["v2"])[:12] in page.locator("#metrics").inner_text()
        watch.assert_clean()
        browser.screenshot(page, "release_review_against_champion")
    assert (out / f"release-{MODEL}-{manifest['build_hash'][:12]}.html").is_file()


def test_registry_page_after_promotions_and_rollbacks(chromium, history, tmp_path, capsys):
    uri, bundles = history
    out = tmp_path / "site"
    _ok(capsys, "report", "--out", out, "--registry", uri)
    with browser.open_page(chromium, (out / "index.html").as_uri()) as (page, watch):
        model = page.locator(f'section.model[data-model="{MODEL}"]')
        stable = model.locator('table.tags tr[data-tag="stable"]')
        assert build_hash(bundles["v2"])[:12] in stable.inner_text()
        seqs = [int(s) for s in model.locator("ol.timeline li").evaluate_all("els => els.map(e => e.dataset.seq)")]
        assert seqs == sorted(seqs, reverse=True) and seqs[0] == 7, f"the timeline is not newest first: {seqs}"
        first = model.locator("ol.timeline li").first
        assert "rollback" in first.inner_text() and "automatic (canary)" in first.inner_text()
        rollback = model.locator('ol.timeline li[data-seq="4"]')
        assert "accuracy dropped in production" in rollback.inner_text()
        assert rollback.evaluate("e => getComputedStyle(e).borderLeftColor") == RED
        forced = model.locator('ol.timeline li[data-seq="3"]')
        assert "FORCED" in forced.inner_text() and "hotfix" in forced.inner_text()
        # The forced build's metrics beside the champion's (stable: v2), once a person opens it.
        build = model.locator(f'details.build[data-build="{build_hash(bundles["v3"])}"]')
        build.locator("summary").click()
        regressed = build.locator('tr[data-metric="accuracy"]')
        assert regressed.locator("td.candidate").inner_text() == "0.9"
        assert regressed.locator("td.champion").inner_text() == "0.96"
        assert "REGRESSES" in regressed.inner_text()
        assert model.locator("img").count() == 1  # metrics over time
        assert model.locator("img").evaluate("e => e.naturalWidth") > 100
        watch.assert_clean()
        browser.screenshot(page, "registry_after_promotion_and_rollback")


def test_registry_text_is_shown_as_text_never_run(chromium, history, tmp_path, capsys):
    """A rollback's reason holding <script> and an <img onerror> is printed as those characters."""
    uri, _ = history
    _ok(capsys, "rollback", MODEL, "--tag", "stable", "--registry", uri, "--reason", HOSTILE)
    out = tmp_path / "site"
    _ok(capsys, "report", "--out", out, "--registry", uri)
    with browser.open_page(chromium, (out / "index.html").as_uri()) as (page, watch):
        reason = page.locator("ol.timeline li").first.locator(".reason")
        assert HOSTILE in reason.inner_text(), "the reason is not shown as text"
        assert page.locator("main script, main img[src='x']").count() == 0
        assert page.evaluate("window.__pwned") is None and page.title() != "pwned"
        watch.assert_clean()
        browser.screenshot(page, "registry_hostile_reason_as_text")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_service_ui_shows_the_registry(chromium, history, keys, tmp_path, capsys):
    """serve's GET /ui, from the running service: the same page, for the model it serves."""
    import uvicorn

    from modelgate.cli import open_registry
    from modelgate.serve.app import create_app
    from modelgate.serve.deployment import Deployment
    from modelgate.serve.notifications import NotificationGuard

    uri, _ = history
    _ok(capsys, "rollback", MODEL, "--tag", "stable", "--registry", uri, "--reason", HOSTILE)
    registry = open_registry(uri)[1]
    deployment = Deployment(MODEL, "stable", registry, str(keys["signer_public"]), tmp_path / "state")
    app = create_app(deployment, NotificationGuard(None), manage_deployment=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        with browser.open_page(chromium, f"http://127.0.0.1:{port}/ui") as (page, watch):
            assert page.locator(f'section.model[data-model="{MODEL}"]').count() == 1
            first = page.locator("ol.timeline li").first
            assert HOSTILE in first.locator(".reason").inner_text()
            assert page.evaluate("window.__pwned") is None
            watch.assert_clean()
            browser.screenshot(page, "serve_ui")
    finally:
        server.should_exit = True
        thread.join(10)


def test_no_chromium_fails_with_a_clear_message(monkeypatch, tmp_path):
    """Where chromium is missing the suite fails (never skips), naming the fix."""
    monkeypatch.setattr(browser, "CHROMIUM_CANDIDATES", (str(tmp_path / "nothing"),))
    monkeypatch.setenv("MODELGATE_CHROMIUM", str(tmp_path / "nothing"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(AssertionError, match="tools/bootstrap"):
        browser.chromium_path()
