"""The registry as a page: models, their tags and where each points, the history as a timeline
(newest first: promotions, rollbacks, automatic canary rollbacks, who, why, forced), each model's
metrics over time, and every build's receipts and lineage. Also a local release's review page
against the champion a tag names (`registry report --release=DIR --tag=stable`).

Everything read from a registry is untrusted: it reaches the page only through Jinja2's escaping
(modelgate.report.render), pictures only as data: images.
"""

from __future__ import annotations

from pathlib import Path

from . import data as report_data

CHAMPION_TAG = "stable"
AUTOMATIC_PREFIX = "automatic canary"


def _event_view(e: dict) -> dict:
    reason = e.get("reason") or ""
    return {
        "seq": e.get("seq"),
        "time": e.get("time"),
        "action": e.get("action") or "promote",
        "tag": e.get("tag"),
        "build_hash": e.get("build_hash"),
        "previous": e.get("previous"),
        "user": e.get("user"),
        "forced": bool(e.get("forced")),
        "reason": reason,
        "release": e.get("release"),
        "commit": e.get("commit") or e.get("git_commit"),
        # serve's canary writes its rollbacks and promotions with a reason that says so (modelgate.serve.canary)
        "automatic": str(reason).startswith(AUTOMATIC_PREFIX),
    }


def model_view(registry, model: str, *, champion_tag: str = CHAMPION_TAG) -> dict:
    """One model's part of the page, from the registry's checked records."""
    from modelgate.registry import api

    shown = api.show(registry, model)
    events = api.history(registry, model, oldest_first=True)
    first_promoted: dict[str, int] = {}
    for e in events:
        first_promoted.setdefault(e.get("build_hash"), int(e.get("seq") or 0))
    hashes = sorted(set(registry.list_builds(model)), key=lambda h: (first_promoted.get(h, 1 << 60), h))
    champion_hash = (shown["tags"].get(champion_tag) or {}).get("build_hash")
    manifests = {h: registry.read_checked_build(model, h) or {} for h in hashes}
    champion = manifests.get(champion_hash) if champion_hash else None
    gates = {}
    for doc in manifests.values():
        gates.update(doc.get("metric_gates") or {})
    tag_names: dict[str, list[str]] = {}
    for tag, t in sorted(shown["tags"].items()):
        if t.get("build_hash"):
            tag_names.setdefault(t["build_hash"], []).append(tag)
    builds = []
    series: dict[str, list[tuple[str, float]]] = {}
    for h in hashes:
        doc = manifests[h]
        metrics = doc.get("metrics") or {}
        for name, value in sorted(metrics.items()):
            if isinstance(value, (int, float)) and name in gates:
                series.setdefault(name, []).append((h[:8], float(value)))
        builds.append(
            {
                "build_hash": h,
                "tags": tag_names.get(h, []),
                "is_champion": h == champion_hash,
                "metrics": report_data.metric_rows(
                    {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                    doc.get("metric_gates") or gates,
                    {"metrics": champion.get("metrics") or {}} if champion and h != champion_hash else None,
                ),
                "lineage": report_data.lineage(doc),
                "receipts": report_data.receipts_rows(doc),
                "gate_passed": (doc.get("gate") or {}).get("passed"),
            }
        )
    from . import charts

    return {
        "model": model,
        "tags": [dict(t, tag=tag) for tag, t in sorted(shown["tags"].items())],
        "timeline": [_event_view(e) for e in sorted(events, key=lambda e: int(e.get("seq") or 0), reverse=True)],
        "builds": builds,
        "champion_tag": champion_tag,
        "champion": champion_hash,
        "chart": charts.metrics_over_time(series, {k: (g or {}).get("floor") for k, g in gates.items()}),
    }


def registry_view(registry, *, models: list[str] | None = None, champion_tag: str = CHAMPION_TAG, generated_by: str = "") -> dict:
    from modelgate.registry import api

    names = models if models is not None else [m["model"] for m in api.list_models(registry)]
    return {
        "registry": str(registry.uri),
        "models": [model_view(registry, m, champion_tag=champion_tag) for m in names],
        "generated_by": generated_by,
    }


def registry_page(registry, **kwargs) -> str:
    from . import render

    return render.page("registry.html.j2", r=registry_view(registry, **kwargs))


def champion_of(registry, model: str, tag: str) -> tuple[dict | None, dict | None]:
    """(champion description for the page, its manifest) of the build `tag` names, or (None, None)."""
    state = registry.tag_state(model, tag)
    if not state.build_hash:
        return None, None
    doc = registry.read_checked_build(model, state.build_hash) or {}
    return {"tag": tag, "build_hash": state.build_hash, "seq": state.seq, "registry": str(registry.uri), "metrics": doc.get("metrics") or {}}, doc


def review_page(registry, bundle_dir: Path, tag: str = CHAMPION_TAG) -> tuple[str, dict]:
    """A local release bundle's review page against the champion `tag` names: the bundle's gate
    verdict, metrics (floor, champion, regression budget), receipts and lineage. The golden and
    ONNX pictures come from the build (<bundle>/report.html); this page adds the champion."""
    import json

    from . import render

    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    model = manifest.get("model")
    champion, _ = champion_of(registry, model, tag)
    checks = (manifest.get("gate") or {}).get("checks") or []
    data = {
        "kind": "review",
        "model": model,
        "build_hash": manifest.get("build_hash"),
        "passed": all(c.get("passed") for c in checks) if checks else bool((manifest.get("gate") or {}).get("passed")),
        "title": f"Release review: {model} {str(manifest.get('build_hash'))[:12]} against {tag}",
        "failed_checks": [c.get("name") for c in checks if not c.get("passed")],
        "checks": checks,
        "golden": None,
        "metrics": {
            "rows": report_data.metric_rows(manifest.get("metrics") or {}, manifest.get("metric_gates") or {}, champion or {"metrics": {}}),
            "champion": champion,
            "champion_note": f"{model} has no tag {tag!r} in {registry.uri}: nothing to compare with (a first promotion has no baseline).",
        },
        "onnx": None,
        "receipts": report_data.receipts_rows(manifest),
        "receipts_note": "no test receipts in this bundle",
        "lineage": report_data.lineage(manifest),
        "generated_by": f"registry report --release={bundle_dir} --tag={tag}",
    }
    return render.page("gate.html.j2", r=data), data
