"""A real browser for the report tests: Debian's chromium (tools/bootstrap installs it) driven by
playwright. Never skips: where chromium is missing, it fails and says how to install it.

Each page is opened with a watch on what a person would not see: console errors, uncaught page
errors, and every request that would leave the page (anything but the page's own URL and data:).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str:
    for candidate in (os.environ.get("MODELGATE_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(
        "no chromium here: the report tests drive Debian's chromium with playwright and never skip; "
        "run tools/bootstrap (or apt-get install chromium), or set MODELGATE_CHROMIUM=/path/to/chromium"
    )


@dataclass
class Watch:
    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def leaving(self) -> list[str]:
        """Requests for anything but the page itself (and data: images)."""
        base = self.url.split("#")[0]
        return [u for u in self.requests if not (u.split("#")[0] == base or u.startswith("data:"))]

    def assert_clean(self) -> None:
        assert not self.console_errors, f"console errors on {self.url}: {self.console_errors}"
        assert not self.page_errors, f"page errors on {self.url}: {self.page_errors}"
        assert not self.leaving(), f"requests leaving {self.url}: {self.leaving()}"


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@contextmanager
def open_page(b, url: str, *, width: int = 1280, height: int = 900):
    """A fresh page at `url` and the Watch of what it did."""
    context = b.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(5000)  # a static page: what is not there in 5 s is not coming
    watch = Watch(url)
    page.on("console", lambda m: watch.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: watch.page_errors.append(str(e)))
    page.on("request", lambda r: watch.requests.append(r.url))
    page.goto(url, wait_until="load")
    try:
        yield page, watch
    finally:
        context.close()


def screenshot(page, name: str) -> Path:
    """A full-page PNG in the test's undeclared outputs (bazel-testlogs/.../test.outputs/), or
    $MODELGATE_SCREENSHOT_DIR, or the working directory."""
    directory = Path(os.environ.get("MODELGATE_SCREENSHOT_DIR") or os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR") or ".")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
