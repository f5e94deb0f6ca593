"""HTML pages from report data: Jinja2 templates (templates/), every value escaped (registry
content is untrusted input), pictures from modelgate.report.charts, no script, nothing fetched."""

from __future__ import annotations

import math
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"

# What a page may load: its own inline styles and data: images. No script runs and nothing is
# fetched, even from text that got past escaping.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_env = None


def _number(value, digits: int = 6) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def environment():
    global _env
    if _env is None:
        import jinja2

        _env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _env.filters["num"] = _number
        _env.filters["short"] = lambda h: (h or "—")[:12]
        _env.globals["csp"] = CONTENT_SECURITY_POLICY
    return _env


def page(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def gate_page(data: dict) -> str:
    """The gate's (or a golden test's) report: a failing gate's diagnosis, a passing release's review page."""
    from . import charts

    for section in data.get("golden", {}).get("outputs", []):
        section["scatter_svg"] = charts.output_scatter(section)
        section["heat_svg"] = charts.error_heatmap(section)
    return page("gate.html.j2", r=data)


def write(path: Path, html: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path
