"""Prometheus recording and alerting rules (serving/rules/) checked and unit-tested with promtool.

The rules are the contract between the metrics (serving/METRICS.md) and what on-call sees: a dashboard
queries the recorded names, and Alertmanager receives the alerts. promtool is the only tool that evaluates
them exactly as Prometheus does (templates included), so these tests run it rather than re-implement PromQL.
The structural tests below keep the promtool unit tests honest: a rule added without a test fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboard.panels import all_queries

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "serving" / "rules"
TESTS_DIR = Path(__file__).resolve().parent
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
UNIT_TESTS = sorted(TESTS_DIR.glob("*.test.yml"))
DEBIAN_PROMTOOL = "/usr/bin/promtool"

# Names other code depends on: the dashboard queries these records (every `level:metric:operations` name in its
# panels), Alertmanager routes on these alerts.
REQUIRED_RECORDS = set(re.findall(r"\b[a-z_]+:[a-z_]+:[a-z0-9_]+\b", " ".join(all_queries("any"))))
WATCH_ALERTS = {
    "MlreleaseWatchDivergenceBreached",
    "MlreleaseWatchErrorRateBreached",
    "MlreleaseWatchLatencyBreached",
    "MlreleaseWatchTelemetryMissing",
}
REQUIRED_ALERTS = WATCH_ALERTS | {
    "MlreleaseRolledBack",
    "MlreleaseCanaryStepFailed",
    "MlreleaseGateBlocked",
    "MlreleaseDrillFailed",
    "MlreleaseScrapeTargetDown",
    "MlreleaseRouterAbsent",
    "MlreleaseTelemetryStale",
    "MlreleaseTextfileCollectorError",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary; its absence is a broken setup, so the test fails instead of skipping."""
    found = shutil.which("promtool") or (DEBIAN_PROMTOOL if Path(DEBIAN_PROMTOOL).exists() else None)
    if found is None:
        pytest.fail("promtool is missing: run 'make setup', or apt-get install -y --no-install-recommends prometheus")
    return found


def _run(args: list[str]) -> None:
    """Run promtool and fail with its whole output, which names the rule and the expected/got difference."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def _rules() -> list[dict]:
    groups = [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]
    return [rule for group in groups for rule in group["rules"]]


def _unit_tests() -> list[dict]:
    return [test for path in UNIT_TESTS for test in yaml.safe_load(path.read_text())["tests"]]


def test_rule_files_are_valid(promtool: str) -> None:
    assert [p.name for p in RULE_FILES] == ["alerts.yml", "recording.yml"]
    _run([promtool, "check", "rules", *map(str, RULE_FILES)])


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(promtool: str, unit_test: Path) -> None:
    _run([promtool, "test", "rules", str(unit_test)])


def test_required_names_exist() -> None:
    names = {rule.get("record") or rule["alert"] for rule in _rules()}
    missing = (REQUIRED_RECORDS | REQUIRED_ALERTS) - names
    assert not missing, f"rules others depend on are missing or renamed: {sorted(missing)}"


def test_alerts_carry_severity_and_runbook_annotations() -> None:
    """Alertmanager routes on severity; on-call reads summary and description, so none may be missing."""
    for rule in (r for r in _rules() if "alert" in r):
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        if rule["alert"] in WATCH_ALERTS:
            assert rule["for"] == "0s", f"{rule['alert']} must fire at the first evaluation after the breach"


def test_every_record_has_a_value_test() -> None:
    tested = " ".join(case["expr"] for test in _unit_tests() for case in test.get("promql_expr_test", []))
    untested = {r["record"] for r in _rules() if "record" in r and r["record"] not in tested}
    assert not untested, f"recording rules without a promql_expr_test: {sorted(untested)}"


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [case for test in _unit_tests() for case in test.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert not alerts - firing, f"alerts never tested firing: {sorted(alerts - firing)}"
    assert not alerts - silent, f"alerts never tested silent on healthy input: {sorted(alerts - silent)}"
