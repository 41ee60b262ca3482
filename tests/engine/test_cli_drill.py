"""``mlrelease drill`` and ``mlrelease watch``: the watcher rolls back by itself on each signal and on silence.

Each test starts from v2 promoted over v1 (v1 warm) on one stack, breaks v2 for real through the router's admin
API (or stops all traffic), and asserts the watcher fired the rollback with no human: all traffic on v1, the
stack converged to v1's recorded config, and the measured seconds reported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from prometheus_client.parser import text_string_to_metric_families
from pulumi import automation as auto

from automation.drill import TAG
from automation.engine import VENV_DIR
from automation.lock import ReleaseLock
from automation.watch import read_state
from components.targets import factory
from dashboard.panels import PANELS, expressions
from serving import monitoring, supervisor
from serving.wait import wait_until
from tests.engine.conftest import Project, kill_engine_leftovers, mlrelease
from tests.engine.dashboard_page import open_dashboard, panel_states, screenshot

pytestmark = pytest.mark.engine
STACK = "drill"
WATCH = {"missing_seconds": 6}
BUDGET = 120


@pytest.fixture(scope="module")
def stack(project: Project) -> auto.Stack:
    return project.released(STACK, watch=WATCH)


@pytest.fixture
def v2_over_v1(project: Project, stack: auto.Stack) -> auto.Stack:
    """v2 live and verified, v1 warm beside it (promoted again after an earlier test rolled it back)."""
    if stack.outputs()["verified"].value["live"]["version"] != "v2":
        project.configure(stack, project.config("good", watch=WATCH))
        stack.up()
    assert project.target(STACK).routes().model_dump() == {"weights": {"v2": 100.0, "v1": 0.0}, "primary": "v2"}
    return stack


def _rolled_back_to_v1(project: Project, stack: auto.Stack) -> None:
    assert project.target(STACK).routes().model_dump() == {"weights": {"v1": 100.0}, "primary": "v1"}
    verified = stack.outputs()["verified"].value
    assert verified["live"]["version"] == "v1" and verified["restored_from"] == "v2"


def _textfile(project: Project, name: str) -> dict[tuple[str, frozenset], float]:
    text = (factory.run_dir(project.dir, STACK) / "textfile" / f"{name}.prom").read_text()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def _firing(project: Project, alertname: str) -> dict | None:
    alerts = monitoring.firing_alerts(factory.run_dir(project.dir, STACK))
    return next((a for a in alerts if a["labels"]["alertname"] == alertname), None)


@pytest.mark.parametrize(
    ("fault", "signal", "alert"),
    [
        ("error", "error_rate:", "MlreleaseWatchErrorRateBreached"),
        ("latency", "latency: p99", "MlreleaseWatchLatencyBreached"),
        ("divergence", "divergence:", "MlreleaseWatchDivergenceBreached"),
    ],
)
def test_drill_recovers_from_each_fault_and_reports_the_seconds(
    project: Project, v2_over_v1: auto.Stack, fault: str, signal: str, alert: str
) -> None:
    def rollbacks() -> float:
        try:
            counters = _textfile(project, "counters")
        except FileNotFoundError:
            return 0.0
        return counters.get(("mlrelease_rollbacks_total", frozenset({("stack", STACK), ("trigger", "drill")})), 0.0)

    before = rollbacks()
    result = mlrelease(project, "drill", "--stack", STACK, "--fault", fault, "--budget", str(BUDGET))
    assert result.code == 0, result
    report = result.json
    assert report["outcome"] == "recovered" and report["problem"] is None
    assert report["faulty_version"] == "v2" and report["restored_version"] == "v1"
    assert 0 < report["detection_seconds"] < report["recovery_seconds"] <= BUDGET
    assert report["traffic_seconds"] is not None and report["converge_seconds"] > 0
    assert signal in report["breach"]
    _rolled_back_to_v1(project, v2_over_v1)
    kept = json.loads(Path(report["report_path"]).read_text())
    assert kept["recovery_seconds"] == report["recovery_seconds"]
    assert v2_over_v1.get_tag(TAG).startswith(f"recovered {fault} ")
    # One pane of glass: the breach is an alert in the stack's Alertmanager, the drill and its rollback are metrics.
    wait_until(lambda: _firing(project, alert) is not None, 30, f"{alert} in Alertmanager")
    assert _firing(project, alert)["labels"]["stack"] == STACK
    drill_metrics = _textfile(project, "drill")
    labels = frozenset({("stack", STACK), ("fault", fault)})
    assert drill_metrics[("mlrelease_drill_recovery_seconds", labels)] == pytest.approx(report["recovery_seconds"])
    assert drill_metrics[("mlrelease_drill_passed", labels)] == 1
    assert rollbacks() == before + 1
    live_drift = _textfile(project, "drift-live")  # the watcher's periodic check of the live inputs
    assert any(name == "mlrelease_drift_psi" and ("source", "live") in labels for name, labels in live_drift)


def test_the_page_marks_the_breach_and_shows_the_watcher_and_the_last_drill(
    project: Project, stack: auto.Stack
) -> None:
    """After the drills: the watcher's panels and the drill's have data from the stack's own Prometheus, and the
    page tells the on-call engineer at a glance that a watch signal breached and a rollback happened."""
    run_dir = factory.run_dir(project.dir, STACK)
    prometheus = f"http://127.0.0.1:{supervisor.running_handle('prometheus', run_dir).ports['http']}"

    def answers(expr: str) -> bool:
        body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        return body["status"] == "success" and bool(body["data"]["result"])

    watched = [e for p in PANELS if p.id in ("watch", "drill", "alerts") for e in expressions(p, STACK).values()]
    missing: list[str] = []

    def all_answer() -> bool:
        missing[:] = [e for e in watched if not answers(e)]
        return not missing

    try:
        wait_until(all_answer, 90, "every watch, drill and alert query to answer")
    except TimeoutError:
        pytest.fail(f"queries with no series after the drills: {missing}")
    with open_dashboard(project, STACK) as page:
        expect(page.locator("#banner")).to_have_attribute("data-status", "red", timeout=60_000)
        expect(page.locator("#problems")).to_contain_text("watch signal breached", timeout=60_000)
        expect(page.locator("#panel-alerts")).to_contain_text("MlreleaseWatch", timeout=60_000)
        expect(page.locator(".event.outcome-rollback", has_text="ROLLBACK (drill)").first).to_be_visible(timeout=60_000)
        states: dict[str, str] = {}

        def panels_ok() -> bool:
            states.update(panel_states(page))
            return all(states[f"panel-{name}"] == "ok" for name in ("watch", "drill", "rollbacks"))

        try:
            wait_until(panels_ok, 90, "the watcher's, the drill's and the rollbacks' panels to show data")
        except TimeoutError:
            pytest.fail(f"panel states after the drills: {states}")
        screenshot(page, "drill.png")


def test_watch_fires_on_missing_telemetry_never_during_a_promote_and_finishes_once_after_a_kill(
    project: Project, v2_over_v1: auto.Stack
) -> None:
    """Silence is a breach, but not while a promote holds the stack; the watcher that fires is killed with its
    engine mid-converge, and the restarted one finishes that rollback, once."""
    project.target(STACK).stop_traffic()  # no client requests: silence must not read as health
    with ReleaseLock(project.dir, STACK, "promote v9"):  # a promote in progress: nothing may interleave
        paused = mlrelease(project, "watch", "--stack", STACK, "--exit-after-rollback", "--max-seconds", "12")
        busy = mlrelease(project, "rollback", "--stack", STACK)
    assert paused.code == 0 and paused.json["phase"] == "stopped" and paused.json["fired_at"] is None, paused
    assert busy.code == 1 and "busy: promote v9" in busy.stderr
    assert v2_over_v1.outputs()["verified"].value["live"]["version"] == "v2"

    argv = [str(VENV_DIR / "bin" / "mlrelease"), "watch", "--stack", STACK, "--project-dir", str(project.dir)]
    first = subprocess.Popen([*argv, "--exit-after-rollback"], env=project.env, start_new_session=True, text=True)
    config_file = project.dir / f"Pulumi.{STACK}.yaml"
    try:
        # Killed with its engine once the restore config is written, i.e. while its up converges.
        wait_until(lambda: "mlrelease:restore" in config_file.read_text(), BUDGET, "the watcher's restore config")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        kill_engine_leftovers(project.dir)
    killed_at = time.time()
    fired = read_state(project.dir, STACK)
    assert fired is not None and fired.phase == "fired" and "no telemetry" in (fired.breach or ""), fired
    assert project.target(STACK).routes().primary == "v1"  # traffic moved before the converge
    assert v2_over_v1.outputs()["verified"].value["live"]["version"] == "v2"  # the converge did not finish

    again = mlrelease(project, "watch", "--stack", STACK, "--exit-after-rollback", "--max-seconds", str(BUDGET))
    assert again.code == 0, again
    assert again.json["phase"] == "fired" and "finished an interrupted rollback" in again.json["breach"], again
    assert again.json["rollback"]["restored"]["version"] == "v1" and again.json["rollback"]["from_version"] == "v2"
    _rolled_back_to_v1(project, v2_over_v1)
    # Once: one update after the kill, restoring v1 from v2.
    restores = [
        u.message
        for u in v2_over_v1.history()
        if u.message.startswith("mlrelease rollback") and u.start_time.replace(tzinfo=UTC).timestamp() > killed_at
    ]
    assert len(restores) == 1 and restores[0].startswith("mlrelease rollback to v1 from v2"), restores


def test_drill_refuses_without_a_warm_previous_version(project: Project, stack: auto.Stack) -> None:
    if stack.outputs()["verified"].value["live"]["version"] == "v2":
        assert mlrelease(project, "rollback", "--stack", STACK).code == 0
    result = mlrelease(project, "drill", "--stack", STACK, "--fault", "error")
    assert result.code == 2 and "a drill needs a verified release with a previous one" in result.stderr
