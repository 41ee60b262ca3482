"""The live page against a real Prometheus: every PromQL expression of the dashboard answers, every panel shows
data, and a breached watch signal turns the banner red with a rollback marker on the timeline, in headless
Chromium (Debian's), driven by Playwright's sync API. The screenshot is for a human to look at."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from dashboard.panels import PANELS, all_queries, expressions
from serving.wait import wait_until
from tests.dashboard.conftest import STACK, Runtime

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
DEADLINE_MS = 90_000  # rules need a minute-window's first samples; a 2-core runner is slow to start Chromium


def _answers(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_every_query_answers_against_a_real_prometheus(runtime: Runtime) -> None:
    url = runtime.prometheus.url
    wait_until(
        lambda: _answers(url, "version:mlrelease_request_latency_seconds:p99_1m") and _answers(url, "ALERTS or up"),
        60,
        "the recording rules' first values",
    )
    may_be_empty = {e for p in PANELS if p.empty for e in expressions(p, STACK).values()}
    empty = [expr for expr in all_queries(STACK) if not _answers(url, expr) and expr not in may_be_empty]
    assert empty == [], f"queries with no series in a healthy runtime: {empty}"


def _states(page: Page) -> dict[str, str]:
    return page.evaluate("() => Object.fromEntries([...document.querySelectorAll('#panels > .card')]"
                         ".map(c => [c.id, c.dataset.state]))")  # fmt: skip


def test_page_shows_every_panel_and_turns_red_on_a_breach(runtime: Runtime, page_url: str) -> None:
    origin = urlsplit(page_url).netloc
    foreign: list[str] = []
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1680, "height": 1050})
            page.on("request", lambda r: foreign.append(r.url) if urlsplit(r.url).netloc != origin else None)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(page_url)
            expect(page.locator("#panels > .card")).to_have_count(len(PANELS), timeout=DEADLINE_MS)

            # Healthy: every panel has data (the alerts panel says "no alert firing"), nothing is red. Amber is
            # allowed: this test's own Chromium may push the real host's CPU over its 90 % saturation line.
            page.wait_for_function(
                "() => [...document.querySelectorAll('#panels > .card')].every("
                "c => c.dataset.state === 'ok' || (c.id === 'panel-alerts' && c.dataset.state === 'empty'))",
                timeout=DEADLINE_MS,
            )
            expect(page.locator("#banner")).to_have_attribute(
                "data-status", re.compile("green|amber"), timeout=DEADLINE_MS
            )
            expect(page.locator("#problems li.red")).to_have_count(0)
            expect(page.locator("#panel-alerts .state")).to_have_text("no alert firing")
            expect(page.locator(".event.outcome-rollback").first).to_contain_text("mlrelease rollback to v0")
            page.screenshot(path=str(ARTIFACTS / "dashboard-healthy.png"), full_page=True)

            runtime.watcher.breach()
            expect(page.locator("#banner")).to_have_attribute("data-status", "red", timeout=DEADLINE_MS)
            expect(page.locator("#problems")).to_contain_text("watch signal breached: divergence")
            expect(page.locator("#panel-watch tr.over").first).to_contain_text("divergence")
            expect(page.locator("#panel-alerts")).to_contain_text(
                "MlreleaseWatchDivergenceBreached", timeout=DEADLINE_MS
            )
            expect(page.locator("#problems")).to_contain_text("rollback in the last 10 min", timeout=DEADLINE_MS)
            expect(page.locator(".event.outcome-rollback", has_text="ROLLBACK (watch)")).to_have_count(
                1, timeout=DEADLINE_MS
            )
            page.wait_for_function(
                "() => [...document.querySelectorAll('#panels > .card')].every(c => c.dataset.state === 'ok')",
                timeout=DEADLINE_MS,
            )
            assert "no data" not in page.locator("#panels").inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert foreign == [], "the page must load nothing from another origin"
    assert console_errors == []


def test_cli_serves_the_page_of_a_running_stack_until_interrupted(runtime: Runtime) -> None:
    env = {**os.environ, "PULUMI_BACKEND_URL": runtime.backend_url}
    command = [str(Path(sys.executable).with_name("mlrelease")), "dashboard", "--stack", STACK]
    with subprocess.Popen(
        [*command, "--project-dir", str(runtime.project_dir)], stdout=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            first = process.stdout.readline() if process.stdout else ""
            assert re.fullmatch(r"dashboard: http://127\.0\.0\.1:\d+/\n", first), first
            url = first.split(" ", 1)[1].strip()
            reply = httpx.get(f"{url}api/panels", timeout=30).json()
            assert reply["stack"] == STACK and reply["endpoints"]["prometheus"] == runtime.prometheus.url
            assert len(reply["panels"]) == len(PANELS)
            assert httpx.get(f"{url}static/plotly.min.js", timeout=10).text.startswith("/**")
        finally:
            process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
