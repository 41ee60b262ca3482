"""The panels of ``dashboard.panels`` as Grafana dashboard JSON, built with the pinned grafana-foundation-sdk.

A firm imports it next to its infrastructure dashboards: a ``datasource`` variable picks its Prometheus and a
``stack`` variable (from ``mlrelease_release_info``) fills the ``$stack`` the expressions already carry, so the
JSON holds the very PromQL the local page runs. Series limits are extra queries (refs ``L<index>``) drawn as red
dashed lines beside the values; constant limits become the thresholds of the queries they judge.
"""

from __future__ import annotations

import json
import math
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
)

from dashboard.panels import PANELS, Limit, Panel

UID = "mlrelease-release"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
_BUILDERS = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}
_GRID_WIDTH, _PANEL_HEIGHT = 24, 8


def _thresholds(limit: Limit) -> builders.ThresholdsConfig:
    """Red on the bad side of a constant limit; Grafana colours a step from its value up, so a limit that
    judges ``above`` starts red just past the value (a count at its limit of 0 stays green)."""
    assert limit.value is not None and limit.bad != "none"
    if limit.bad == "above":
        steps = [
            Threshold(value=None, color="green"),
            Threshold(value=math.nextafter(limit.value, math.inf), color="red"),
        ]
    else:
        steps = [Threshold(value=None, color="red"), Threshold(value=limit.value, color="green")]
    return builders.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def _description(panel: Panel) -> str:
    if panel.no_limit:
        return f"No limit: {panel.no_limit}."
    judged = []
    for limit in panel.limits:
        what = f"{limit.value:g}" if limit.value is not None else limit.expr
        judged.append(f"{limit.legend} = {what}, {limit.bad} is bad, judges {', '.join(limit.of)}")
    return "Limits: " + "; ".join(judged) + "."


def _panel(number: int, panel: Panel) -> Any:
    """One Grafana panel: its queries, its series limits as red dashed queries, its constant limits as thresholds."""
    instant = panel.kind != "timeseries"  # stat and table show the last value, as the page does
    built = (
        _BUILDERS[panel.kind]()
        .id(number)
        .title(panel.title)
        .description(_description(panel))
        .unit(panel.unit)
        .datasource(DATASOURCE)
        .span(_GRID_WIDTH // 3 * panel.width)
        .height(_PANEL_HEIGHT)
        .no_value(panel.empty or "no data")
    )
    for query in panel.queries:
        target = prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(query.ref)
        built.with_target((target.instant() if instant else target.range()).datasource(DATASOURCE))
        if query.unit:
            built.override_by_query(query.ref, [DynamicConfigValue(id_val="unit", value=query.unit)])
    for index, limit in enumerate(panel.limits):
        if limit.expr is not None:
            ref = f"L{index}"
            target = prometheus.Dataquery().expr(limit.expr).legend_format(f"limit: {limit.legend}").ref_id(ref)
            built.with_target((target.instant() if instant else target.range()).datasource(DATASOURCE))
            built.override_by_query(
                ref,
                [
                    DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": "red"}),
                    DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                ],
            )
            continue
        for ref in limit.of if limit.bad != "none" else []:
            built.override_by_query(ref, [DynamicConfigValue(id_val="thresholds", value=_thresholds(limit).build())])
    if panel.kind == "timeseries":
        built.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    return built


def build_dashboard(stack: str | None = None) -> dict[str, Any]:
    """The whole dashboard as the JSON document Grafana imports; ``stack`` preselects the stack variable."""
    variable = (
        builders.QueryVariable("stack")
        .label("stack")
        .query("label_values(mlrelease_release_info, stack)")
        .datasource(DATASOURCE)
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
    )
    if stack is not None:
        variable.current(VariableOption(selected=True, text=stack, value=stack))
    board = (
        builders.Dashboard("mlrelease: release")
        .uid(UID)
        .tags(["mlrelease", "release"])
        .refresh("10s")
        .time("now-15m", "now")
        .with_variable(builders.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(variable)
    )
    for number, panel in enumerate(PANELS, start=1):
        board.with_panel(_panel(number, panel))
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))
