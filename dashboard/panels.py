"""The one definition of the release dashboard: every panel, its PromQL and the limit each number is judged by.

Both renderings read this list and nothing else: the local page (``dashboard.page``) runs the queries through its
own API, and the Grafana JSON (``dashboard.grafana``) carries them verbatim, so the firm's on-call Grafana and
``mlrelease dashboard`` can never show different numbers. Expressions use Grafana's ``$stack`` template variable;
the page substitutes the stack it serves (``expressions``). Release metrics come from the textfile collector and
carry ``stack`` (serving/METRICS.md); router and host series come from the stack's own Prometheus and need no
filter.

A number without its limit cannot be read at 3 a.m., so every panel names its limits (a PromQL series, or a
constant when the limit is a convention rather than configuration) or says in ``no_limit`` why it has none.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

STACK_VARIABLE = "$stack"


class Query(BaseModel):
    """One PromQL expression of a panel; ``legend`` names each series with ``{{label}}`` placeholders."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(pattern=r"^[A-Z]$", description="Grafana's refId; limits name the query they judge by it")
    legend: str
    expr: str
    unit: str | None = Field(default=None, description="a Grafana unit id when it differs from the panel's")


class Limit(BaseModel):
    """The line a query's series must stay on the right side of.

    A limit series applies to a value series when its labels (``__name__`` aside) are a subset of the value's,
    so ``mlrelease_drift_psi_threshold{source}`` judges every feature of its source and a label-less limit judges
    every series.
    """

    model_config = ConfigDict(extra="forbid")

    legend: str
    expr: str | None = None
    value: float | None = Field(default=None, description="a constant limit (no series behind it)")
    bad: Literal["above", "below", "none"] = Field(
        default="above",
        description="which side of the limit is a problem; none: shown beside the number, judged by another query"
        " (a gate's direction differs per measure, its passed flag is the verdict)",
    )
    of: list[str] = Field(min_length=1, description="refs of the queries this limit judges")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.expr is None) == (self.value is None):
            raise ValueError(f"limit {self.legend!r}: give exactly one of expr (PromQL) or value (a constant)")
        return self


class Panel(BaseModel):
    """One panel: its queries, their limits, and what an empty answer means."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    kind: Literal["timeseries", "stat", "table"]
    unit: str = Field(description="Grafana unit id: percent, percentunit, reqps, s, bytes, short, none")
    queries: list[Query] = Field(min_length=1)
    limits: list[Limit] = []
    no_limit: str | None = Field(default=None, description="why this panel has no limit")
    empty: str | None = Field(
        default=None, description="what an empty answer means when it is not missing telemetry (no alert firing)"
    )
    width: Literal[1, 2, 3] = Field(default=1, description="columns of the page's 3-column grid")

    @model_validator(mode="after")
    def _limits_judge_queries(self) -> Self:
        refs = [q.ref for q in self.queries]
        if len(set(refs)) != len(refs):
            raise ValueError(f"panel {self.id}: query refs must be distinct, got {refs}")
        if bool(self.limits) == bool(self.no_limit):
            raise ValueError(f"panel {self.id}: give limits, or no_limit saying why there is none (not both)")
        for limit in self.limits:
            unknown = set(limit.of) - set(refs)
            if unknown:
                raise ValueError(f"panel {self.id}: limit {limit.legend!r} judges unknown queries {sorted(unknown)}")
        return self


def _stack(name: str) -> str:
    return f'{name}{{stack="{STACK_VARIABLE}"}}'


def _gate_limit(gate: str, measure: str, to_base_unit: str) -> str:
    """A gate's threshold in the panel's base unit. The gates judge latency in ms and memory in MiB, and the
    writer names a measure by its criterion without the unit (serving/release_metrics.py: ``p99_latency``,
    ``peak_rss``), so the conversion is here, next to the name it depends on."""
    return f'max(mlrelease_gate_threshold{{stack="{STACK_VARIABLE}",gate="{gate}",measure="{measure}"}}) {to_base_unit}'


WATCHER_STALE_SECONDS = 120.0  # two looks at mlrelease:watch.interval_seconds' maximum (60 s), with margin
HOST_SATURATION = 0.9

PANELS: list[Panel] = [
    Panel(
        id="split",
        title="Live traffic split",
        kind="timeseries",
        unit="percent",
        queries=[Query(ref="A", legend="{{version}}", expr="mlrelease_traffic_weight")],
        no_limit="a split is a decision, not a measurement: the canary checks that judge each step are beside it",
    ),
    Panel(
        id="watch",
        title="Watcher signals vs limits",
        kind="table",
        unit="short",
        queries=[
            Query(ref="A", legend="{{signal}}", expr=_stack("mlrelease_watch_signal_value")),
            Query(ref="B", legend="{{signal}} breached", expr=_stack("mlrelease_watch_signal_breached")),
        ],
        limits=[
            Limit(legend="signal limit", expr=_stack("mlrelease_watch_signal_limit"), of=["A"]),
            Limit(legend="1 = rollback fired", value=0, of=["B"]),
        ],
    ),
    Panel(
        id="alerts",
        title="Firing alerts",
        kind="table",
        unit="none",
        queries=[Query(ref="A", legend="{{alertname}} {{severity}}", expr='ALERTS{alertstate="firing"}')],
        limits=[Limit(legend="any firing alert pages", value=0, of=["A"])],
        empty="no alert firing",
    ),
    Panel(
        id="errors",
        title="Error rate by version",
        kind="timeseries",
        unit="percentunit",
        queries=[Query(ref="A", legend="{{version}}", expr="version:mlrelease_request_errors:ratio_rate1m")],
        limits=[
            Limit(
                legend="watch limit",
                expr=f'max(mlrelease_watch_signal_limit{{stack="{STACK_VARIABLE}",signal="error_rate"}})',
                of=["A"],
            )
        ],
    ),
    Panel(
        id="latency",
        title="Latency p50 / p99 by version",
        kind="timeseries",
        unit="s",
        queries=[
            Query(ref="A", legend="p50 {{version}}", expr="version:mlrelease_request_latency_seconds:p50_1m"),
            Query(ref="B", legend="p99 {{version}}", expr="version:mlrelease_request_latency_seconds:p99_1m"),
        ],
        limits=[
            Limit(legend="p50 gate limit", expr=_gate_limit("latency", "p50_latency", "/ 1000"), of=["A"]),
            Limit(legend="p99 gate limit", expr=_gate_limit("latency", "p99_latency", "/ 1000"), of=["B"]),
        ],
    ),
    Panel(
        id="divergence",
        title="Prediction divergence: live vs warm previous",
        kind="timeseries",
        unit="percentunit",
        queries=[Query(ref="A", legend="decision disagreement", expr="job:mlrelease_pair_disagreements:ratio_rate1m")],
        # Not missing telemetry: the previous version retires after mlrelease:rollback.window_seconds, and then no
        # shadow pairs exist. While it is warm, the watcher's divergence signal judges silence.
        empty="no shadow pairs: no warm previous version serves beside the live one",
        limits=[
            Limit(
                legend="canary limit",
                expr=f'max(mlrelease_canary_check_threshold{{stack="{STACK_VARIABLE}",check="disagreement"}})',
                of=["A"],
            ),
            Limit(
                legend="watch limit",
                expr=f'max(mlrelease_watch_signal_limit{{stack="{STACK_VARIABLE}",signal="divergence"}})',
                of=["A"],
            ),
        ],
    ),
    Panel(
        id="requests",
        title="Requests per second by version",
        kind="timeseries",
        unit="reqps",
        queries=[Query(ref="A", legend="{{version}}", expr="version:mlrelease_requests:rate1m")],
        no_limit="throughput is demand, not health: error rate and latency beside it carry the limits",
    ),
    Panel(
        id="cpu",
        title="CPU by version (cores)",
        kind="timeseries",
        unit="short",
        queries=[Query(ref="A", legend="{{version}}", expr="version:mlrelease_process_cpu_seconds:rate1m")],
        limits=[Limit(legend="host cores", expr='count(node_cpu_seconds_total{mode="idle"})', of=["A"])],
    ),
    Panel(
        id="memory",
        title="Resident memory by version",
        kind="timeseries",
        unit="bytes",
        queries=[Query(ref="A", legend="{{version}}", expr="mlrelease_process_resident_bytes")],
        limits=[
            Limit(legend="memory gate limit", expr=_gate_limit("memory", "peak_rss", "* 1048576"), of=["A"]),
        ],
    ),
    Panel(
        id="canary",
        title="Canary: last step judged",
        kind="table",
        unit="short",
        queries=[
            Query(ref="A", legend="{{check}} ({{candidate}})", expr=_stack("mlrelease_canary_check_observed")),
            Query(ref="B", legend="verdict ({{candidate}}), 1 = passed", expr=_stack("mlrelease_canary_verdict")),
            Query(
                ref="C",
                legend="step weight ({{candidate}})",
                expr=_stack("mlrelease_canary_weight_percent"),
                unit="percent",
            ),
        ],
        limits=[
            Limit(legend="check limit", expr=_stack("mlrelease_canary_check_threshold"), of=["A"]),
            Limit(legend="must pass", value=1, bad="below", of=["B"]),
        ],
    ),
    Panel(
        id="gates",
        title="Gates: last run",
        kind="table",
        unit="short",
        queries=[
            Query(ref="A", legend="{{gate}} {{measure}} ({{candidate}})", expr=_stack("mlrelease_gate_observed")),
            Query(ref="B", legend="{{gate}} passed ({{candidate}})", expr=_stack("mlrelease_gate_passed")),
        ],
        limits=[
            Limit(legend="gate threshold", expr=_stack("mlrelease_gate_threshold"), bad="none", of=["A"]),
            Limit(legend="must pass", value=1, bad="below", of=["B"]),
        ],
    ),
    Panel(
        id="drift",
        title="Drift per feature: PSI (gate and live)",
        kind="table",
        unit="short",
        queries=[
            Query(ref="A", legend="PSI {{feature}} ({{source}})", expr=_stack("mlrelease_drift_psi")),
            Query(ref="B", legend="adj. p {{feature}} ({{source}})", expr=_stack("mlrelease_drift_p_value_adjusted")),
        ],
        limits=[Limit(legend="PSI limit", expr=_stack("mlrelease_drift_psi_threshold"), of=["A"])],
    ),
    Panel(
        id="release",
        title="Verified release: live and warm previous",
        kind="table",
        unit="none",
        queries=[
            Query(ref="A", legend="{{role}}: {{version}} sha256 {{sha256}}", expr=_stack("mlrelease_release_info"))
        ],
        no_limit="which versions serve is an identity, not a number; the timeline shows how they got there",
    ),
    Panel(
        id="drill",
        title="Last drill: detection / recovery vs budget",
        kind="stat",
        unit="s",
        queries=[
            Query(ref="A", legend="detection ({{fault}})", expr=_stack("mlrelease_drill_detection_seconds")),
            Query(ref="B", legend="recovery ({{fault}})", expr=_stack("mlrelease_drill_recovery_seconds")),
        ],
        limits=[Limit(legend="budget", expr=_stack("mlrelease_drill_budget_seconds"), of=["A", "B"])],
        empty="no drill recorded on this stack: run `mlrelease drill --stack <stack>`",
    ),
    Panel(
        id="rollbacks",
        title="Rollbacks in the last 10 min",
        kind="stat",
        unit="short",
        queries=[
            Query(
                ref="A",
                legend="{{trigger}}",
                # round: increase() extrapolates to the window's edges, and a rollback is a whole event
                expr=f'round(sum by (trigger) (increase(mlrelease_rollbacks_total{{stack="{STACK_VARIABLE}"}}[10m])))',
            )
        ],
        limits=[Limit(legend="any rollback needs a look", value=0, of=["A"])],
        empty="no rollback recorded",
    ),
    Panel(
        id="host",
        title="Host CPU / memory",
        kind="timeseries",
        unit="percentunit",
        queries=[
            Query(ref="A", legend="CPU {{instance}}", expr="instance:node_cpu_utilisation:rate1m"),
            Query(ref="B", legend="memory {{instance}}", expr="instance:node_memory_utilisation:ratio"),
        ],
        limits=[Limit(legend="saturation", value=HOST_SATURATION, of=["A", "B"])],
    ),
    Panel(
        id="health",
        title="Telemetry health (Prometheus, scrapes, watcher)",
        kind="table",
        unit="short",
        queries=[
            Query(ref="A", legend="up {{job}}", expr="up"),
            Query(
                ref="B",
                legend="rule evaluation failures (5m)",
                expr="sum(increase(prometheus_rule_evaluation_failures_total[5m]))",
            ),
            Query(ref="C", legend="textfile scrape error", expr="max(node_textfile_scrape_error)"),
            Query(
                ref="D",
                legend="watcher's last look",
                expr=f"time() - {_stack('mlrelease_watch_last_check_timestamp_seconds')}",
                unit="s",
            ),
            Query(ref="E", legend="TSDB head series", expr="sum(prometheus_tsdb_head_series)"),
        ],
        limits=[
            Limit(legend="scraped", value=1, bad="below", of=["A"]),
            Limit(legend="none", value=0, of=["B", "C"]),
            Limit(legend="stale after", value=WATCHER_STALE_SECONDS, of=["D"]),
        ],
        width=2,
    ),
]

_STACK_NAME = re.compile(r"^[A-Za-z0-9_./-]+$")


def check_stack(stack: str) -> str:
    """``stack`` if it is a plain Pulumi stack name, so it can never break out of the label matcher it lands in;
    ValueError otherwise."""
    if not _STACK_NAME.match(stack):
        raise ValueError(f"stack {stack!r} is not a stack name (letters, digits, _ . / -)")
    return stack


def render(expr: str, stack: str) -> str:
    """``expr`` with ``$stack`` set to ``stack`` (checked by ``check_stack``)."""
    return expr.replace(STACK_VARIABLE, check_stack(stack))


def expressions(panel: Panel, stack: str) -> dict[str, str]:
    """Every PromQL expression of ``panel`` for ``stack``: queries by ref, series limits by ``limit:<index>``."""
    found = {q.ref: render(q.expr, stack) for q in panel.queries}
    for index, limit in enumerate(panel.limits):
        if limit.expr is not None:
            found[f"limit:{index}"] = render(limit.expr, stack)
    return found


def all_queries(stack: str) -> list[str]:
    """Every PromQL expression of the dashboard for ``stack``: what a test walks against a real Prometheus."""
    return [expr for panel in PANELS for expr in expressions(panel, stack).values()]
