"""``mlrelease promote``, ``rollback``, ``audit`` and ``status`` as a user runs them: the real console script, the
real engine, model servers, router and Prometheus.

One stack for the module, in order: v1 first release, v2 promoted, a gate-failing and a canary-failing
candidate, a rollback to v1 (and its harmless re-run), v2 promoted again and a rollback killed mid-converge
then completed, and audit answers at times before, during and after those releases.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from playwright.sync_api import expect
from pulumi import automation as auto

from automation.backend_files import PROJECT_NAME, stack_outputs
from automation.engine import VENV_DIR
from automation.lock import holder
from components.targets import factory
from dashboard.panels import PANELS, all_queries, expressions
from serving import supervisor
from serving.wait import wait_until
from tests.engine.conftest import CliResult, Project, kill_engine_leftovers, mlrelease
from tests.engine.dashboard_page import open_dashboard, panel_states, screenshot, split

pytestmark = pytest.mark.engine
STACK = "cli"


@pytest.fixture(scope="module")
def stack(project: Project) -> auto.Stack:
    stack = project.stack(STACK)
    project.configure(stack, project.config("incumbent"))
    return stack


def promote(project: Project, variant: str) -> CliResult:
    model = project.models.models[variant].model_dir
    return mlrelease(project, "promote", "--stack", STACK, "--model", str(model))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def routes(project: Project) -> dict:
    return project.target(STACK).routes().model_dump()


def test_promote_gives_promoted_blocked_and_rolled_back(project: Project, stack: auto.Stack) -> None:
    before_first = time.time()
    first = promote(project, "incumbent")
    assert first.code == 0, first
    assert first.json["outcome"] == "promoted" and first.json["incumbent"] is None
    assert routes(project) == {"weights": {"v1": 100.0}, "primary": "v1"}
    refused = mlrelease(project, "rollback", "--stack", STACK)  # v1 has no predecessor to go back to
    assert refused.code == 2 and "no verified previous release to roll back to" in refused.stderr, refused
    assert routes(project) == {"weights": {"v1": 100.0}, "primary": "v1"}
    after_first = time.time()

    # The dashboard during the promote: the split it shows moves with the steps.
    with open_dashboard(project, STACK) as page:
        wait_until(lambda: split(page) == {"v1": 100.0}, 60, "the page to show v1 at 100 %")
        promoting = ThreadPoolExecutor(1).submit(promote, project, "good")
        shown: list[dict[str, float]] = []

        def settled() -> bool:  # the promote ended, and the page shows v2 at 100 % (or the promote failed)
            shown.append(split(page))
            return promoting.done() and (shown[-1].get("v2") == 100.0 or promoting.result().code != 0)

        wait_until(settled, 600, "the promote of v2 to end and the page to show it")
        good = promoting.result()
        assert good.code == 0, good
        # v2 at 0 % (registered, before the first step), then the steps' weights, then 100 %.
        between = {weight for split in shown if 0 < (weight := split.get("v2", 0)) < 100}
        assert between and between <= {5.0, 50.0}, f"the page showed v2 at {sorted({s.get('v2') for s in shown})}"
        assert shown[-1].get("v2") == 100.0, shown[-5:]
    assert good.code == 0, good
    assert good.json["outcome"] == "promoted" and good.json["incumbent"] == "v1"
    assert set(good.json["gates"]) == {"evaluation", "latency", "memory", "drift"}
    assert [v["weight"] for v in good.json["canary"]] == [5, 50, 100]
    assert all(v["passed"] for v in good.json["canary"])
    assert routes(project) == {"weights": {"v2": 100.0, "v1": 0.0}, "primary": "v2"}

    blocked = promote(project, "worse")
    assert blocked.code == 3, blocked
    assert blocked.json["outcome"] == "blocked" and blocked.json["gates"]["evaluation"]["passed"] is False
    assert "gate evaluation failed" in blocked.json["failure"]
    assert routes(project) == {"weights": {"v2": 100.0, "v1": 0.0}, "primary": "v2"}
    standby = project.target(STACK).deployment("v1")
    assert standby is not None and standby.ready

    caught = promote(project, "divergent")
    assert caught.code == 4, caught
    assert caught.json["outcome"] == "rolled_back" and "failed on disagreement" in caught.json["failure"]
    assert routes(project)["weights"]["v2"] == 100
    # Anything short of a promotion leaves the config naming what is live, and the stack's rollback target
    # warm: the same v1 process, still registered with the router (at 0).
    assert project_model_version(stack) == "v2"
    assert routes(project)["weights"]["v1"] == 0
    still = project.target(STACK).deployment("v1")
    assert still is not None and still.ready and still.process.pid == standby.process.pid

    # Audit: before the first release, settled on v1, mid-canary of v2, settled on v2 after the failures.
    step1, step2 = good.json["canary"][0], good.json["canary"][1]
    assert audit_models(project, before_first - 60)[0] == "before_first_release"
    assert audit_models(project, after_first) == ("settled", {"v1": 100})
    mid = (step1["ended_at"] + step1["started_at"]) / 2
    assert audit_models(project, mid) == ("update_in_progress", {"v2": 5, "v1": 95})
    mid2 = (step2["ended_at"] + step2["started_at"]) / 2
    assert audit_models(project, mid2)[1] == {"v2": 50, "v1": 50}
    state, live = audit_models(project, time.time())
    assert live["v2"] == 100 and state == "settled"


def project_model_version(stack: auto.Stack) -> str:
    return json.loads(stack.get_config("mlrelease:model").value)["version"]


def audit_models(project: Project, ts: float) -> tuple[str, dict[str, float]]:
    result = mlrelease(project, "audit", "--stack", STACK, "--at", iso(ts))
    assert result.code == 0, result
    return result.json["state"], {m["version"]: m["traffic_percent"] for m in result.json["models"]}


def test_rollback_restores_the_previous_verified_release_and_rerunning_is_harmless(
    project: Project, stack: auto.Stack
) -> None:
    warm = project.target(STACK).deployment("v1")
    assert warm is not None  # kept up through the failed attempt (the previous test)
    # The rollback's first move reads the backend's files, not the engine: they must say what the engine says.
    files = stack_outputs(project.env["PULUMI_BACKEND_URL"], PROJECT_NAME, STACK)
    assert files is not None and files["verified"] == stack.outputs()["verified"].value
    result = mlrelease(project, "rollback", "--stack", STACK)
    assert result.code == 0, result
    assert "traffic: 100% on v1 after" in result.stderr and "before any engine call" in result.stderr, result
    assert result.json["outcome"] == "rolled_back"
    assert result.json["restored"]["version"] == "v1" and result.json["from_version"] == "v2"
    # Traffic moved to the warm process (one router call), not to a server started for the rollback.
    print(f"rollback after the failed attempt: traffic on v1 after {result.json['traffic_seconds']:.3f} s")
    assert project.target(STACK).deployment("v1").process.pid == warm.process.pid
    assert result.json["traffic_seconds"] is not None and result.json["traffic_seconds"] < result.json["total_seconds"]
    assert routes(project) == {"weights": {"v1": 100.0}, "primary": "v1"}
    verified = stack.outputs()["verified"].value
    assert verified["live"]["version"] == "v1" and verified["restored_from"] == "v2"
    assert project_model_version(stack) == "v1"
    assert project.target(STACK).deployment("v2") is None  # the bad version is gone, not kept warm

    again = mlrelease(project, "rollback", "--stack", STACK)
    assert again.code == 0, again
    assert again.json["outcome"] == "already_rolled_back"
    assert routes(project) == {"weights": {"v1": 100.0}, "primary": "v1"}
    assert stack.outputs()["verified"].value["verified_at"] == verified["verified_at"]  # nothing re-verified

    status = mlrelease(project, "status", "--stack", STACK)
    assert status.code == 0, status
    assert status.json["verified"]["live"]["version"] == "v1" and status.json["restored_from"] == "v2"

    nothing = mlrelease(project, "rollback", "--stack", "no-such-stack")
    assert nothing.code == 2 and "does not exist" in nothing.stderr


def _query(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_one_pane_of_glass_after_the_releases_every_query_and_rule_answers(project: Project) -> None:
    """After promoted, blocked, rolled-back releases and a rollback: the stack's own Prometheus answers every PromQL
    expression of the dashboard and of the rules, the rules' alerts fired, and the page shows it all."""
    run_dir = factory.run_dir(project.dir, STACK)
    prometheus = f"http://127.0.0.1:{supervisor.running_handle('prometheus', run_dir).ports['http']}"
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    recording = [r["name"] for g in rules for r in g["rules"] if r["type"] == "recording"]
    assert len(recording) >= 8 and all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
    wait_until(lambda: all(_query(prometheus, name) for name in recording), 90, "every recording rule's series")
    # No watcher and no drill ran on this stack (tests/engine/test_cli_drill.py walks those panels); a panel that
    # says what its empty answer means (no alert firing, no warm previous version) may be empty.
    elsewhere = {"watch", "drill", "alerts"}
    allowed = {e for p in PANELS if p.id in elsewhere or p.empty for e in expressions(p, STACK).values()}
    allowed |= {e for e in all_queries(STACK) if "mlrelease_watch_" in e}
    empty = [e for e in all_queries(STACK) if e not in allowed and not _query(prometheus, e)]
    assert empty == [], f"dashboard queries with no series after the releases: {empty}"
    firing = {a["metric"]["alertname"] for a in _query(prometheus, 'ALERTS{alertstate="firing"}')}
    assert {"MlreleaseRolledBack", "MlreleaseCanaryStepFailed"} <= firing, firing
    totals = {
        (r["metric"].get("outcome") or r["metric"].get("trigger")): float(r["value"][1])
        for r in _query(prometheus, f'{{__name__=~"mlrelease_(releases|rollbacks)_total", stack="{STACK}"}}')
    }
    assert totals["promoted"] >= 2 and totals["blocked"] >= 1 and totals["rolled_back"] >= 1, totals
    assert totals["operator"] >= 1, totals

    with open_dashboard(project, STACK) as page:
        expect(page.locator(".event.outcome-rollback").first).to_contain_text(
            "mlrelease rollback to v1", timeout=60_000
        )
        expect(page.locator("#banner")).to_have_attribute("data-status", "red", timeout=60_000)
        expect(page.locator("#problems")).to_contain_text("rollback in the last 10 min")
        wait_until(lambda: split(page) == {"v1": 100.0}, 60, "the page to show v1 at 100 %")

        def every_panel_has_data() -> bool:
            states = panel_states(page)
            may_be_empty = {f"panel-{p.id}" for p in PANELS if p.empty}
            return all(
                state == "ok" or (state == "empty" and card in may_be_empty)
                for card, state in states.items()
                if card.removeprefix("panel-") not in elsewhere
            )

        wait_until(every_panel_has_data, 90, "every release and infrastructure panel to show data")
        screenshot(page, "release-after-rollback.png")


def test_rollback_killed_mid_converge_completes_when_run_again(project: Project, stack: auto.Stack) -> None:
    assert promote(project, "good").code == 0
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "rollback", "--stack", STACK, "--project-dir", str(project.dir)]
    proc = subprocess.Popen(argv, env=project.env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    config_file = project.dir / f"Pulumi.{STACK}.yaml"
    # Killed once the restore config is written, i.e. while its up converges: traffic already moved.
    wait_until(lambda: "mlrelease:restore" in config_file.read_text(), 120, "the rollback's restore config")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    kill_engine_leftovers(project.dir)
    assert routes(project)["primary"] == "v1"

    result = mlrelease(project, "rollback", "--stack", STACK)
    assert result.code == 0, result
    assert result.json["outcome"] in ("rolled_back", "already_rolled_back")
    assert stack.outputs()["verified"].value["live"]["version"] == "v1"
    assert routes(project) == {"weights": {"v1": 100.0}, "primary": "v1"}


def test_bad_input_exits_2_and_changes_nothing(project: Project, stack: auto.Stack, tmp_path, unchanged) -> None:
    assert_unchanged = unchanged(stack, project.target(STACK))
    missing = mlrelease(project, "promote", "--stack", STACK, "--model", str(tmp_path / "nope"))
    assert missing.code == 2 and "--model" in missing.stderr
    wrong = promote_with_version(project, "good", "v7")
    assert wrong.code == 2 and "serves version v2" in wrong.stderr
    good = project.models.models["good"]
    tampered = mlrelease(project, "promote", "--stack", STACK, "--model", str(good.model_dir), "--sha256", "0" * 64)
    assert tampered.code == 2 and f"artifact sha256 is {good.sha256}, not the expected" in tampered.stderr
    bad_time = mlrelease(project, "audit", "--stack", STACK, "--at", "yesterday")
    assert bad_time.code == 2 and "ISO 8601" in bad_time.stderr
    assert_unchanged()


def promote_with_version(project: Project, variant: str, version: str) -> CliResult:
    model = project.models.models[variant].model_dir
    return mlrelease(project, "promote", "--stack", STACK, "--model", str(model), "--version", version)


def test_a_verified_attempt_retires_its_standby_and_a_second_promote_meanwhile_is_refused(
    project: Project, stack: auto.Stack, tmp_path
) -> None:
    """v1 -> v2 -> v3: v1 stays up while v3 is canaried (the rollback target if v3 failed), and stops once v3
    is verified, when v2 becomes the rollback target. While v3's promote holds the stack, another is refused."""
    assert promote(project, "good").code == 0  # over the restored v1: v1 is the verified previous, warm
    assert stack.outputs()["verified"].value["previous"]["version"] == "v1"
    v3 = tmp_path / "v3"
    shutil.copytree(project.models.models["incumbent"].model_dir, v3)
    settings = json.loads((v3 / "model-settings.json").read_text())
    settings["parameters"]["version"] = "v3"
    (v3 / "model-settings.json").write_text(json.dumps(settings))
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "promote", "--stack", STACK, "--model", str(v3)]
    first = subprocess.Popen(
        [*argv, "--project-dir", str(project.dir), "--json"], env=project.env, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: holder(project.dir, STACK) is not None, 60, "the first promote to take the stack's lock")
        second = promote(project, "good")
        assert second.code == 1, second
        assert f"stack {STACK} is busy: promote v3 (pid {first.pid})" in second.stderr
        assert "wait for it to finish, then run promote v2 again" in second.stderr
    finally:
        out, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and json.loads(out)["outcome"] == "promoted", out
    assert routes(project) == {"weights": {"v3": 100.0, "v2": 0.0}, "primary": "v3"}
    assert project.target(STACK).deployment("v1") is None
    retired = stack.outputs()
    assert retired["verified"].value["previous"]["version"] == "v2"


def test_no_secret_reaches_stack_state_outputs_or_logs(project: Project, stack: auto.Stack) -> None:
    token = (project.target(STACK).run_dir / "admin-token").read_text().strip()
    assert len(token) >= 16
    state = json.dumps(stack.export_stack().deployment)
    status = mlrelease(project, "status", "--stack", STACK)
    assert status.code == 0, status
    logs = [p for p in project.target(STACK).run_dir.rglob("*.log") if p.is_file()]
    assert logs, "the runtime keeps its process logs in the run directory"
    passphrase = project.env["PULUMI_CONFIG_PASSPHRASE"]
    config = (project.dir / f"Pulumi.{STACK}.yaml").read_text()
    places = [
        ("stack state", state),
        ("status --json", json.dumps(status.json) + status.stderr),
        ("stack config", config),
    ]
    for where, text in places + [(str(p), p.read_text(errors="replace")) for p in logs]:
        assert token not in text, f"the admin token appears in {where}"
        assert passphrase not in text, f"the stack passphrase appears in {where}"


def test_audit_verify_checks_the_chain_the_engine_wrote_and_names_an_edit_and_a_deletion(
    project: Project, stack: auto.Stack, tmp_path
) -> None:
    """After this module's releases, rollbacks and failed attempts, the real records form an intact chain whose
    head is the stack's verified record; in a copy of the backend, one edited and one deleted history file are
    both named, the first one first, with exit 1."""
    intact = mlrelease(project, "audit", "--stack", STACK, "--verify")
    assert intact.code == 0 and intact.json["intact"], intact
    assert intact.json["sealed_records"] >= 4 and intact.json["unchained_records"] == 0, intact
    assert intact.json["head"] == stack.outputs()["verified"].value["chain_sha256"]

    copy = tmp_path / "state"
    shutil.copytree(project.env["PULUMI_BACKEND_URL"].removeprefix("file://"), copy)
    history = copy / ".pulumi" / "history" / PROJECT_NAME / STACK
    sealed = {n for n in os.listdir(history) if n.endswith(".history.json")} - set(intact.json["unsealed"])
    edited, deleted = sorted(sealed, key=lambda n: int(n.rsplit("-", 1)[1].split(".")[0]))[1:3]
    record = json.loads((history / edited).read_text())
    record["message"] = "mlrelease promote v2 (approved)"
    (history / edited).write_text(json.dumps(record))
    (history / deleted).unlink()
    broken = mlrelease(
        project, "audit", "--stack", STACK, "--verify", env={**project.env, "PULUMI_BACKEND_URL": copy.as_uri()}
    )
    assert broken.code == 1 and not broken.json["intact"], broken
    assert [(b["kind"], b["file"]) for b in broken.json["breaks"]] == [("edited", edited), ("deleted", deleted)]
    plain = mlrelease(
        project,
        "audit",
        "--stack",
        STACK,
        "--verify",
        json_output=False,
        env={**project.env, "PULUMI_BACKEND_URL": copy.as_uri()},
    )
    assert plain.code == 1 and f"history BROKEN, 2 breaks; first: {edited}" in plain.stdout, plain
