"""`registry report`: the registry page and the review pages of local release bundles, as files."""

from __future__ import annotations

import shutil
from pathlib import Path

from modelgate.errors import UsageError

from . import registry_page, render


def write_reports(registry, *, out, models=None, releases=(), tag: str = registry_page.CHAMPION_TAG) -> list[Path]:
    """Writes DIR/index.html and, per release bundle, review-<model>-<hash12>.html (against the
    build `tag` names) beside a copy of the bundle's own report.html (release-<model>-<hash12>.html:
    the golden and ONNX pictures the build drew). Returns the pages written, index first."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out={out} is not a directory")
    written = [render.write(out / "index.html", registry_page.registry_page(registry, models=models, champion_tag=tag,
                                                                            generated_by="bazel run //tools:registry -- report"))]  # fmt: skip
    for bundle in releases:
        bundle = Path(bundle)
        if not (bundle / "manifest.json").is_file():
            raise UsageError(f"--release={bundle} is not a release bundle (no manifest.json); build one with bazel build //models/<m>:release")
        html, data = registry_page.review_page(registry, bundle, tag)
        stem = f"{data['model']}-{str(data['build_hash'])[:12]}"
        written.append(render.write(out / f"review-{stem}.html", html))
        if (bundle / "report.html").is_file():
            target = out / f"release-{stem}.html"
            shutil.copyfile(bundle / "report.html", target)
            written.append(target)
    return written
