"""The report's pictures: matplotlib figures as SVG, embedded as data: URIs (self-contained pages,
nothing fetched at view time; an SVG in an <img> runs no script, whatever text it holds)."""

from __future__ import annotations

import base64
import io
import os
import tempfile

_plt = None


def _pyplot():
    """matplotlib, loaded once, headless, with a font it ships (the same SVG on every machine) and
    its font cache in one place per user (a fresh cache costs seconds per process)."""
    global _plt
    if _plt is None:
        os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), f"modelgate-matplotlib-{os.getuid()}"))
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams.update(
            {
                "svg.hashsalt": "modelgate",  # stable element ids: the same data, the same bytes
                "svg.fonttype": "none",  # text as text: smaller, and the browser can find it
                "font.family": "DejaVu Sans",
                "font.size": 9,
                "axes.spines.top": False,
                "axes.spines.right": False,
            }
        )
        import matplotlib.pyplot as plt

        _plt = plt
    return _plt


def _svg(fig) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", dpi=110, metadata={"Date": None, "Creator": "modelgate"})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def output_scatter(section: dict) -> str | None:
    """Expected against actual (left) and the error against expected with the tolerance band
    atol + rtol * |expected| shaded (right); elements outside the band in red."""
    points = [p for p in section.get("points") or [] if p[1] is not None]
    if not points:
        return None
    import numpy as np

    plt = _pyplot()
    e = np.array([p[0] for p in points])
    a = np.array([p[1] for p in points])
    bad = np.array([p[2] for p in points], dtype=bool)
    atol, rtol = section["atol"], section["rtol"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    lo, hi = float(min(e.min(), a.min())), float(max(e.max(), a.max()))
    left.plot([lo, hi], [lo, hi], color="#888", lw=0.8, zorder=1)
    # Points as one embedded raster (axes, labels and the band stay vector): a page with thousands
    # of points stays small (minilm's went from 703 KiB of SVG paths).
    left.scatter(e[~bad], a[~bad], s=6, color="#2b7bba", label="within tolerance", zorder=2, rasterized=True)
    left.scatter(e[bad], a[bad], s=9, color="#d62728", label="outside", zorder=3, rasterized=True)
    left.set_xlabel("expected (golden)")
    left.set_ylabel("actual")
    left.set_title("expected vs actual")
    grid = np.linspace(float(e.min()), float(e.max()), 200)
    band = atol + rtol * np.abs(grid)
    right.fill_between(grid, -band, band, color="#2ca02c", alpha=0.25, label=f"tolerance (atol {atol:g}, rtol {rtol:g})")
    right.axhline(0, color="#888", lw=0.8)
    right.scatter(e[~bad], (a - e)[~bad], s=6, color="#2b7bba", zorder=2, rasterized=True)
    right.scatter(e[bad], (a - e)[bad], s=9, color="#d62728", zorder=3, rasterized=True)
    right.set_xlabel("expected")
    right.set_ylabel("actual − expected")
    right.set_title("error and tolerance band")
    right.legend(loc="best", fontsize=7, frameon=False)
    if bad.any():
        left.legend(loc="best", fontsize=7, frameon=False)
    return _svg(fig)


def error_heatmap(section: dict) -> str | None:
    """|actual − expected| / tolerance per element (rows: every index but the last axis; columns:
    the last axis; max-pooled where the output is large): 1 is the tolerance, red beyond it."""
    heat = section.get("heat")
    if not heat or not heat.get("cells"):
        return None
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    plt = _pyplot()
    cells = np.clip(np.array(heat["cells"], dtype=float), 0, 2)
    rows, cols = cells.shape
    fig, ax = plt.subplots(figsize=(min(8.4, 2.5 + cols * 0.08), min(4.0, 1.4 + rows * 0.12)))
    image = ax.imshow(cells, aspect="auto", cmap="RdYlGn_r", norm=TwoSlopeNorm(vmin=0, vcenter=1, vmax=2), interpolation="nearest")
    bar = fig.colorbar(image, ax=ax, fraction=0.05)
    bar.set_label("error / tolerance (>1 fails)")
    pooled = " (max-pooled)" if heat.get("pooled") else ""
    ax.set_title(f"error per element{pooled}: {heat['rows']} rows × {heat['cols']} columns")
    ax.set_xlabel("last axis")
    ax.set_ylabel("row")
    return _svg(fig)


def metrics_over_time(series: dict[str, list[tuple[str, float]]], floors: dict[str, float | None]) -> str | None:
    """Each metric across a model's builds in promotion order (x: the build's first promotion),
    with its floor as a dashed line."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    names = sorted(series)[:6]
    fig, axes = plt.subplots(1, len(names), figsize=(min(10.0, 3.3 * len(names)), 2.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        labels = [label for label, _ in series[name]]
        values = [value for _, value in series[name]]
        ax.plot(range(len(values)), values, marker="o", color="#2b7bba")
        if floors.get(name) is not None:
            ax.axhline(floors[name], color="#d62728", ls="--", lw=0.9, label="floor")
            ax.legend(loc="best", fontsize=7, frameon=False)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(name)
    return _svg(fig)
