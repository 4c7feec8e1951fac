"""A real browser for the dashboard's tests: Debian's Chromium driven by Playwright.

``scripts/services.sh up chromium`` installs Chromium; the ``browser`` fixture of
tests/conftest.py launches it with Playwright (``executable_path``: Playwright's own
browser downloads are never used), once per test module. :func:`watch` opens a page and
records console errors, failed requests and requests to any other origin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT

__all__ = ["CHROMIUM_ARGS", "SHOTS", "Watched", "watch"]

SHOTS = REPO_ROOT / "build" / "screenshots"
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-gpu"]


@dataclass
class Watched:
    """A page and everything that went wrong on it (console errors, failed or foreign requests)."""

    page: Any
    origin: str
    problems: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def watch(browser: Any, origin: str) -> Watched:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    w = Watched(page, origin)
    page.on("console", lambda m: w.problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: w.problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: w.problems.append(f"request failed: {r.url}")
            if "/api/events" not in r.url else None)  # an event stream cut at navigation
    page.on("request", lambda r: w.problems.append(f"foreign request: {r.url}")
            if not r.url.startswith((origin, "data:")) else None)
    return w
