"""The dashboard as an on-call engineer opens it during a release: ``mlrelease dashboard`` (the real console script)
on the test project's stack, read by Debian's headless Chromium through Playwright. Used by the engine tests that
release for real, so the page is checked against the real runtime, not a fixture."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

from automation.engine import VENV_DIR
from serving import supervisor
from serving.wait import wait_until
from tests.engine.conftest import Project

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "dashboard" / "artifacts"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def open_dashboard(project: Project, stack: str) -> Iterator[Page]:
    """The page of ``stack`` served by ``mlrelease dashboard`` and loaded in headless Chromium."""
    port = supervisor.free_port()
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "dashboard", "--stack", stack, "--port", str(port)]
    proc = subprocess.Popen([*argv, "--project-dir", str(project.dir)], env=project.env, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: proc.poll() is not None or _answers(url), 30, f"mlrelease dashboard on {url}")
        assert proc.poll() is None, f"mlrelease dashboard exited with {proc.returncode}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            try:
                page = browser.new_page(viewport={"width": 1680, "height": 1050})
                page.goto(url)
                page.wait_for_selector("#panels > .card", timeout=60_000)
                yield page
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def split(page: Page) -> dict[str, float]:
    """The live split as the page's split panel shows it now: ``v1: 75.0 % · no limit`` per current version."""
    spans = page.locator("#panel-split .now > span").all_inner_texts()
    found = {}
    for text in spans:
        name, _, rest = text.partition(":")
        if "(ended)" not in name:
            found[name.strip()] = float(rest.split("%")[0])
    return found


def panel_states(page: Page) -> dict[str, str]:
    return page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('#panels > .card')].map(c => [c.id, c.dataset.state]))"
    )


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def panels_json(page: Page) -> dict:
    """What the page's own API answers now (the numbers behind every panel)."""
    return json.loads(page.evaluate("async () => JSON.stringify(await (await fetch('/api/panels')).json())"))
