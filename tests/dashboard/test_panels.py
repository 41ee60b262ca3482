"""The one dashboard definition, without a server: every panel judged by a limit (or saying why not), the Grafana
rendering carrying exactly its queries, and the page's verdicts (limits by label subset, the banner's colour)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError
from typer.testing import CliRunner

from automation.cli import app
from bench.bench_audit import SyntheticStack
from dashboard.grafana import build_dashboard
from dashboard.page import (
    PanelData,
    SeriesData,
    Source,
    _candidates,
    _judge,
    legend_text,
    make_app,
    problems_of,
    status_of,
)
from dashboard.panels import PANELS, STACK_VARIABLE, Limit, Panel, Query, all_queries, expressions
from dashboard.timeline import history_events, metric_events


def test_every_panel_has_a_limit_or_says_why_not() -> None:
    for panel in PANELS:
        assert bool(panel.limits) != bool(panel.no_limit), panel.id
        assert not panel.no_limit or len(panel.no_limit) > 20, f"{panel.id}: say why there is no limit"
    assert len({p.id for p in PANELS}) == len(PANELS)
    with pytest.raises(ValidationError, match="give limits, or no_limit"):
        Panel(id="x", title="x", kind="stat", unit="short", queries=[Query(ref="A", legend="", expr="up")])
    with pytest.raises(ValidationError, match="judges unknown queries"):
        Panel(
            id="x",
            title="x",
            kind="stat",
            unit="short",
            queries=[Query(ref="A", legend="", expr="up")],
            limits=[Limit(legend="l", value=1, of=["B"])],
        )


def test_required_content_is_on_the_dashboard() -> None:
    exprs = " ".join(q.expr for p in PANELS for q in p.queries) + " ".join(
        lim.expr or "" for p in PANELS for lim in p.limits
    )
    for name in (
        "version:mlrelease_requests:rate1m",
        "version:mlrelease_request_errors:ratio_rate1m",
        "version:mlrelease_request_latency_seconds:p50_1m",
        "version:mlrelease_request_latency_seconds:p99_1m",
        "version:mlrelease_process_cpu_seconds:rate1m",
        "job:mlrelease_pair_disagreements:ratio_rate1m",
        "instance:node_cpu_utilisation:rate1m",
        "instance:node_memory_utilisation:ratio",
        "mlrelease_traffic_weight",
        "mlrelease_process_resident_bytes",
        "mlrelease_watch_signal_value",
        "mlrelease_watch_signal_limit",
        "mlrelease_watch_signal_breached",
        "mlrelease_drift_psi{",
        "mlrelease_drift_psi_threshold",
        "mlrelease_drift_p_value_adjusted",
        "mlrelease_gate_observed",
        "mlrelease_gate_threshold",
        "mlrelease_canary_check_observed",
        "mlrelease_release_info",
        "mlrelease_drill_recovery_seconds",
        "mlrelease_drill_budget_seconds",
        "mlrelease_rollbacks_total",
        "up",
        "prometheus_tsdb_head_series",
        "prometheus_rule_evaluation_failures_total",
        'ALERTS{alertstate="firing"}',
    ):
        assert name in exprs, name


def test_all_queries_set_the_stack_and_refuse_a_stack_that_is_not_a_name() -> None:
    queries = all_queries("staging")
    assert len(queries) >= len(PANELS)
    assert not [q for q in queries if STACK_VARIABLE in q]
    assert sum('stack="staging"' in q for q in queries) >= 15  # every release metric is filtered
    with pytest.raises(ValueError, match="not a stack name"):
        all_queries('staging"} or up{x="')


def test_grafana_json_has_the_same_panels_and_expressions() -> None:
    board = build_dashboard("staging")
    assert [p["title"] for p in board["panels"]] == [p.title for p in PANELS]
    for grafana_panel, panel in zip(board["panels"], PANELS, strict=True):
        assert grafana_panel["type"] == panel.kind
        targets = {t["refId"]: t["expr"] for t in grafana_panel["targets"]}
        assert all(t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for t in grafana_panel["targets"])
        as_page = expressions(panel, STACK_VARIABLE.removeprefix("$"))  # the page's, with the variable kept
        assert {k: v.replace('stack="stack"', 'stack="$stack"') for k, v in as_page.items()} == {
            k if not k.startswith("L") else f"limit:{k[1:]}": v for k, v in targets.items()
        }
        assert grafana_panel["fieldConfig"]["defaults"]["unit"] == panel.unit
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["stack"]["query"] == "label_values(mlrelease_release_info, stack)"
    assert variables["stack"]["current"]["value"] == "staging"


def _thresholds(panel: dict) -> dict[str, list[dict]]:
    return {
        o["matcher"]["options"]: prop["value"]["steps"]
        for o in panel["fieldConfig"]["overrides"]
        for prop in o["properties"]
        if prop["id"] == "thresholds"
    }


def test_grafana_thresholds_come_from_the_constant_limits() -> None:
    board = {p["title"]: p for p in build_dashboard()["panels"]}
    host = _thresholds(board["Host CPU / memory"])
    assert host["A"] == host["B"] == [{"value": None, "color": "green"}, {"value": 0.9000000000000001, "color": "red"}]
    health = _thresholds(board["Telemetry health (Prometheus, scrapes, watcher)"])
    assert health["A"] == [{"value": None, "color": "red"}, {"value": 1, "color": "green"}]
    alerts = _thresholds(board["Firing alerts"])["A"]
    assert alerts[1]["value"] > 0 and math.isclose(alerts[1]["value"], 0, abs_tol=1e-300)  # 0 firing stays green


def _series(labels: dict[str, str], last: float) -> dict:
    return {"metric": labels, "values": [[1.0, str(last)]]}


def test_a_limit_judges_the_series_whose_labels_include_its_own() -> None:
    drift = next(p for p in PANELS if p.id == "drift")
    limits = {0: [_series({"stack": "s", "source": "gate"}, 0.25), _series({"stack": "s", "source": "live"}, 0.1)]}
    live = SeriesData(
        ref="A",
        legend="",
        labels={"stack": "s", "feature": "age", "source": "live"},
        unit="short",
        t=[1.0],
        v=[0.2],
        last=0.2,
        last_at=1.0,
        current=True,
    )
    _judge(live, _candidates(drift, "A", live.labels, limits))
    assert (live.limit, live.over, live.limit_legend) == (0.1, True, "PSI limit")
    gate = live.model_copy(update={"labels": {"stack": "s", "feature": "age", "source": "gate"}, "over": False})
    _judge(gate, _candidates(drift, "A", gate.labels, limits))
    assert (gate.limit, gate.over) == (0.25, False)
    assert legend_text("{{role}}: {{version}} {{missing}}", {"role": "live", "version": "v1"}) == "live: v1"


def _panel(panel_id: str, series: list[SeriesData], state: str = "ok") -> PanelData:
    panel = next(p for p in PANELS if p.id == panel_id)
    return PanelData(
        id=panel.id,
        title=panel.title,
        kind=panel.kind,
        unit=panel.unit,
        width=panel.width,
        no_limit=panel.no_limit,
        state=state,  # type: ignore[arg-type]
        message="no data" if state == "nodata" else None,
        series=series,
    )


def test_the_banner_is_red_for_a_breach_amber_for_another_limit_and_green_otherwise() -> None:
    def over(ref: str) -> SeriesData:
        return SeriesData(
            ref=ref, legend="divergence breached", labels={}, unit="short", t=[1], v=[1], last=1, limit=0,
            last_at=1, current=True, limit_legend="1 = rollback fired", bad="above", over=True,
        )  # fmt: skip

    ok = SeriesData(ref="A", legend="v1", labels={}, unit="s", t=[1], v=[0.01], last=0.01, last_at=1, current=True)
    assert status_of(problems_of([_panel("latency", [ok])], [])) == "green"
    amber = problems_of([_panel("latency", [over("B")])], [])
    assert status_of(amber) == "amber"
    red = problems_of([_panel("watch", [over("B")])], [])
    assert status_of(red) == "red" and red[0].text.startswith("watch signal breached: divergence breached")
    missing = problems_of([_panel("requests", [], state="nodata")], [])
    assert [p.text for p in missing] == ["Requests per second by version: no data"]


def test_timeline_marks_rollbacks_from_history_and_from_their_stamps(tmp_path: Path) -> None:
    history = SyntheticStack(tmp_path, "staging")
    history.release("v0", 1000.0, message="mlrelease promote v0")
    history.release("v1", 2000.0, message="mlrelease promote v1")
    history.rollback(3000.0, 3001.0, message="mlrelease rollback to v0 from v1: watcher: divergence")
    events = history_events(history.url, "mlrelease", "staging")
    assert [(e.lane, e.outcome) for e in events] == [("update", "ok"), ("update", "ok"), ("rollback", "rollback")]
    counted = metric_events(
        {
            # two rollbacks by the watcher: each at its own stamp, not at the point where the range first saw it
            "rollback_at": [{"metric": {"trigger": "watch"}, "values": [[10, "7"], [25, "7"], [40, "33"], [55, "33"]]}],
            "canary_at": [{"metric": {"candidate": "v2"}, "values": [[10, "5"], [25, "5"], [40, "30"]]}],
            "canary_verdict": [{"metric": {"candidate": "v2"}, "values": [[10, "1"], [25, "1"], [40, "0"]]}],
        }
    )
    assert sorted((e.at, e.lane, e.outcome) for e in counted) == [
        (5.0, "canary", "ok"),
        (7.0, "rollback", "rollback"),
        (30.0, "canary", "failed"),
        (33.0, "rollback", "rollback"),
    ]


def test_cli_writes_the_grafana_json_and_refuses_a_stack_without_runtime(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: mlrelease\nruntime: python\n")
    out = tmp_path / "board.json"
    result = CliRunner().invoke(app, ["dashboard", "--stack", "staging", "--grafana", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["uid"] == "mlrelease-release"
    result = CliRunner().invoke(app, ["dashboard", "--stack", "staging", "--project-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "has no runtime" in result.output and "`mlrelease promote --stack staging" in result.output
    result = CliRunner().invoke(app, ["dashboard", "--stack", "a b", "--grafana", str(out)])
    assert result.exit_code == 2 and "not a stack name" in result.output


def test_the_api_says_what_is_missing_when_the_stack_has_no_runtime(tmp_path: Path) -> None:
    source = Source(stack="staging", run_dir=tmp_path / "run", backend_url=tmp_path.as_uri(), project="mlrelease")

    async def ask() -> tuple[dict, dict, str]:
        async with TestClient(TestServer(make_app(source))) as client:
            panels = await (await client.get("/api/panels")).json()
            timeline = await (await client.get("/api/timeline")).json()
            index = await client.get("/")
            return panels, timeline, index.headers["Content-Security-Policy"]

    panels, timeline, csp = asyncio.run(ask())
    assert panels["status"] == "red"
    assert panels["problems"][0]["text"] == (
        "prometheus of staging is not running: run `mlrelease promote` or `pulumi up` first"
    )
    assert {p["state"] for p in panels["panels"]} == {"error"}
    assert "alertmanager not running" in panels["problems"][-1]["text"]
    assert timeline["events"] == [] and timeline["notes"][0].startswith("stack history: no history for stack staging")
    assert "default-src 'self'" in csp


def test_a_series_that_ended_is_shown_but_not_judged() -> None:
    retired = SeriesData(
        ref="A", legend="v2", labels={}, unit="percentunit", t=[1], v=[0.5], last=0.5, last_at=1, current=False,
        limit=0.05, limit_legend="watch limit", bad="above", over=True,
    )  # fmt: skip
    assert status_of(problems_of([_panel("errors", [retired])], [])) == "green"
