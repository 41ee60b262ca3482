"""``mlrelease dashboard``: the panels of ``dashboard.panels`` as one live page on 127.0.0.1, for on-call at 3 a.m.

The server proxies every PromQL expression through its own JSON API, so the browser talks only to the page's
origin (no CDN, no Prometheus port exposed to it; plotly.js comes from the installed ``plotly`` wheel). It also
judges what it returns: each series carries its limit and whether it is over it, and ``/api/panels`` ends in a
status (red, amber, green) with the problems behind it, so the banner and the red numbers are decided in one
place, in Python, where they are tested. Missing telemetry is a problem, never an empty chart that looks fine.

Prometheus and Alertmanager are found from the stack's run directory on every request, so a runtime restarted on
new ports is followed without restarting the page.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from automation.audit import AuditError
from dashboard.panels import PANELS, Limit, Panel, expressions, render
from dashboard.timeline import TIMELINE_QUERIES, Event, history_events, metric_events
from serving import supervisor

HOST = "127.0.0.1"  # loopback only: the page has no authentication
WINDOW_SECONDS = 15 * 60
STEP_SECONDS = 5.0
STALE_SECONDS = 60.0  # a panel whose every series ended this long ago has lost its telemetry
RECENT_ROLLBACK_SECONDS = 10 * 60
TIMELINE_SECONDS = 6 * 3600
TIMELINE_STEP_SECONDS = 15.0
QUERY_TIMEOUT_SECONDS = 5.0
STATIC_DIR = Path(__file__).parent / "static"
PLOTLY_JS = files("plotly") / "package_data" / "plotly.min.js"
# Over-limit series that turn the banner red (panel id, query ref; None: any query); any other is amber.
RED_WHEN_OVER: dict[tuple[str, str | None], str] = {
    ("watch", "B"): "watch signal breached",
    ("rollbacks", "A"): "rollback in the last 10 min",
    ("alerts", "A"): "alert firing",
    ("health", None): "telemetry",
}
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

Status = Literal["red", "amber", "green"]


class Endpoints(BaseModel):
    """Where the stack's Prometheus and Alertmanager answer right now (None: not running)."""

    prometheus: str | None
    alertmanager: str | None


def locate(run_dir: Path) -> Endpoints:
    """The supervised ``prometheus`` and ``alertmanager`` of a stack's run directory (port key ``http``)."""

    def url(name: str) -> str | None:
        handle = supervisor.running_handle(name, run_dir)
        return f"http://{HOST}:{handle.ports['http']}" if handle and "http" in handle.ports else None

    return Endpoints(prometheus=url("prometheus"), alertmanager=url("alertmanager"))


class PrometheusError(RuntimeError):
    """Prometheus did not answer a query, or refused it; the message names the expression."""


class Source(BaseModel):
    """What one page serves: the stack, its run directory (Prometheus, Alertmanager) and its backend history."""

    stack: str
    run_dir: Path
    backend_url: str
    project: str


class SeriesData(BaseModel):
    """One series of a panel over the window, with the limit that judges it."""

    ref: str
    legend: str
    labels: dict[str, str]
    unit: str
    t: list[float]
    v: list[float | None]
    last: float | None
    last_at: float | None
    current: bool = Field(description="false once the series ended (a retired version): shown, no longer judged")
    limit: float | None = None
    limit_legend: str | None = None
    bad: Literal["above", "below", "none"] | None = None
    over: bool = False


class LimitLine(BaseModel):
    """A limit as the charts draw it: a constant, or a series over the window."""

    legend: str
    of: list[str]
    bad: Literal["above", "below", "none"]
    constant: float | None = None
    t: list[float] = []
    v: list[float | None] = []


class PanelData(BaseModel):
    """A panel's definition and what Prometheus answered for it."""

    id: str
    title: str
    kind: str
    unit: str
    width: int
    no_limit: str | None
    state: Literal["ok", "empty", "nodata", "stale", "error"]
    message: str | None = None
    series: list[SeriesData] = []
    limits: list[LimitLine] = []


class Problem(BaseModel):
    """One line of the banner."""

    severity: Literal["red", "amber"]
    text: str
    panel: str | None = None


class PanelsReply(BaseModel):
    """``GET /api/panels``: every panel's series over the last ``window_seconds``, and the verdict of the banner."""

    stack: str
    now: float
    window_seconds: float
    status: Status
    problems: list[Problem]
    panels: list[PanelData]
    endpoints: Endpoints


class TimelineReply(BaseModel):
    """``GET /api/timeline``: the release's events, oldest first, and why a source could not be read."""

    stack: str
    now: float
    events: list[Event]
    notes: list[str]


def legend_text(template: str, labels: Mapping[str, str]) -> str:
    """A ``{{label}}`` legend filled from a series' labels (Grafana's legend format)."""
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template).strip()


def _labels(series: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in series["metric"].items() if k != "__name__"}


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value


class Prometheus:
    """The few Prometheus HTTP API calls the page makes, over one shared client session."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """``query_range`` result of ``expr``; PrometheusError when it cannot be had."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        try:
            async with self.session.get(
                f"{self.url}/api/v1/query_range",
                params=params,
                timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_SECONDS),
            ) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"prometheus at {self.url} did not answer {expr!r}: {exc!r}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"prometheus refused {expr!r}: {body.get('error', 'no reason given')}")
        return body["data"]["result"]


def _candidates(
    panel: Panel, ref: str, labels: Mapping[str, str], limit_series: Mapping[int, list[dict[str, Any]]]
) -> list[tuple[float, str, Limit]]:
    """Every limit value that judges the series ``labels`` of query ``ref``, with its legend."""
    found = []
    for index, limit in enumerate(panel.limits):
        if ref not in limit.of:
            continue
        if limit.value is not None:
            found.append((limit.value, limit.legend, limit))
            continue
        for series in limit_series.get(index, []):
            own = _labels(series)
            value = _number(series["values"][-1][1]) if series["values"] else None
            if value is not None and own.items() <= labels.items():
                found.append((value, legend_text(limit.legend, own), limit))
    return found


def _judge(series: SeriesData, candidates: list[tuple[float, str, Limit]]) -> None:
    """Set the series' shown limit: the first one its last value is over, else the tightest."""
    if not candidates:
        return

    def over(value: float, limit: Limit) -> bool:
        if series.last is None or limit.bad == "none":
            return False
        return series.last > value if limit.bad == "above" else series.last < value

    breached = [c for c in candidates if over(c[0], c[2])]
    direction = candidates[0][2].bad
    same_side = [c for c in candidates if c[2].bad == direction]
    tightest = (max if direction == "below" else min)(same_side, key=lambda c: c[0])
    value, legend, limit = breached[0] if breached else tightest
    series.limit, series.limit_legend, series.bad, series.over = value, legend, limit.bad, bool(breached)


async def panel_data(prometheus: Prometheus, panel: Panel, stack: str, now: float) -> PanelData:
    """One panel's series and limits over the window ending ``now``, each series judged against its limit."""
    start = now - WINDOW_SECONDS
    exprs = expressions(panel, stack)
    base = PanelData(
        id=panel.id,
        title=panel.title,
        kind=panel.kind,
        unit=panel.unit,
        width=panel.width,
        no_limit=panel.no_limit,
        state="ok",
    )
    try:
        answers = await asyncio.gather(*(prometheus.range(e, start, now, STEP_SECONDS) for e in exprs.values()))
    except PrometheusError as exc:
        return base.model_copy(update={"state": "error", "message": str(exc)})
    by_key = dict(zip(exprs, answers, strict=True))
    limit_series = {int(key.split(":")[1]): result for key, result in by_key.items() if key.startswith("limit:")}
    for query in panel.queries:
        for raw in by_key[query.ref]:
            labels = _labels(raw)
            t = [float(point[0]) for point in raw["values"]]
            v = [_number(point[1]) for point in raw["values"]]
            series = SeriesData(
                ref=query.ref,
                legend=legend_text(query.legend, labels) or query.ref,
                labels=labels,
                unit=query.unit or panel.unit,
                t=t,
                v=v,
                last=v[-1] if v else None,
                last_at=t[-1] if t else None,
                current=bool(t) and now - t[-1] <= STALE_SECONDS,
            )
            _judge(series, _candidates(panel, query.ref, labels, limit_series))
            base.series.append(series)
    for index, limit in enumerate(panel.limits):
        if limit.value is not None:
            base.limits.append(LimitLine(legend=limit.legend, of=limit.of, bad=limit.bad, constant=limit.value))
        for raw in limit_series.get(index, []):
            base.limits.append(
                LimitLine(
                    legend=legend_text(limit.legend, _labels(raw)),
                    of=limit.of,
                    bad=limit.bad,
                    t=[float(p[0]) for p in raw["values"]],
                    v=[_number(p[1]) for p in raw["values"]],
                )
            )
    if not base.series:
        state, message = ("empty", panel.empty) if panel.empty else ("nodata", "no data")
        return base.model_copy(update={"state": state, "message": message})
    newest = max(s.last_at or 0.0 for s in base.series)
    if panel.empty is None and now - newest > STALE_SECONDS:
        return base.model_copy(update={"state": "stale", "message": f"stale: last sample {now - newest:.0f}s ago"})
    return base


def problems_of(panels: Sequence[PanelData], recent_rollbacks: Sequence[Event]) -> list[Problem]:
    """What the banner says: red for a breached watch signal, a recent rollback, a firing alert or lost
    telemetry; amber for any other number over its limit."""
    found = [Problem(severity="red", text=event.label, panel="timeline") for event in recent_rollbacks]
    for panel in panels:
        if panel.state in ("nodata", "stale", "error"):
            found.append(Problem(severity="red", text=f"{panel.title}: {panel.message}", panel=panel.id))
        for series in panel.series:
            if not (series.over and series.current):
                continue
            red = RED_WHEN_OVER.get((panel.id, series.ref)) or RED_WHEN_OVER.get((panel.id, None))
            side = ">" if series.bad == "above" else "<"
            numbers = (
                ""
                if series.unit == "none"
                else f": {series.last:.3g} {side} {series.limit:.3g} ({series.limit_legend})"
            )
            text = f"{red or panel.title}: {series.legend}{numbers}"
            found.append(Problem(severity="red" if red else "amber", text=text, panel=panel.id))
    return sorted(found, key=lambda p: p.severity != "red")


def status_of(problems: Sequence[Problem]) -> Status:
    """Red if any problem is red, amber if any is amber, else green."""
    severities = {p.severity for p in problems}
    return "red" if "red" in severities else "amber" if severities else "green"


SOURCE = web.AppKey("source", Source)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _history(source: Source, newest: int) -> tuple[list[Event], list[str]]:
    try:
        return history_events(source.backend_url, source.project, source.stack, newest=newest), []
    except AuditError as exc:
        return [], [f"stack history: {exc}"]


async def _alertmanager_problem(session: aiohttp.ClientSession, url: str | None) -> Problem | None:
    if url is None:
        return Problem(severity="amber", text="alertmanager not running: firing alerts reach no one", panel="alerts")
    try:
        async with session.get(f"{url}/-/healthy", timeout=aiohttp.ClientTimeout(total=2)) as response:
            if response.status == 200:
                return None
    except (aiohttp.ClientError, TimeoutError):
        pass
    return Problem(severity="amber", text=f"alertmanager at {url} is not healthy", panel="alerts")


async def api_panels(request: web.Request) -> web.Response:
    """Every panel's series over the last 15 minutes, judged, and the banner's status."""
    source, session = request.app[SOURCE], request.app[SESSION]
    endpoints, now = locate(source.run_dir), time.time()
    problems: list[Problem] = []
    if endpoints.prometheus is None:
        panels = [
            PanelData(
                id=p.id,
                title=p.title,
                kind=p.kind,
                unit=p.unit,
                width=p.width,
                no_limit=p.no_limit,
                state="error",
                message="prometheus not running",
            )
            for p in PANELS
        ]
        problems.append(
            Problem(
                severity="red",
                text=f"prometheus of {source.stack} is not running: run `mlrelease promote` or `pulumi up` first",
            )
        )
    else:
        prometheus = Prometheus(session, endpoints.prometheus)
        panels = list(await asyncio.gather(*(panel_data(prometheus, p, source.stack, now) for p in PANELS)))
    history, _notes = _history(source, newest=20)
    recent = [e for e in history if e.lane == "rollback" and (e.end or e.at) >= now - RECENT_ROLLBACK_SECONDS]
    problems += problems_of(panels, recent)
    alertmanager = await _alertmanager_problem(session, endpoints.alertmanager)
    problems += [alertmanager] if alertmanager else []
    reply = PanelsReply(
        stack=source.stack,
        now=now,
        window_seconds=WINDOW_SECONDS,
        status=status_of(problems),
        problems=problems,
        panels=panels,
        endpoints=endpoints,
    )
    return web.json_response(text=reply.model_dump_json())


async def api_timeline(request: web.Request) -> web.Response:
    """The release's events over the last 6 hours: stack history merged with the release metrics' stamps."""
    source, session = request.app[SOURCE], request.app[SESSION]
    endpoints, now = locate(source.run_dir), time.time()
    events, notes = _history(source, newest=200)
    if endpoints.prometheus is None:
        notes.append("release metrics: prometheus not running")
    else:
        prometheus = Prometheus(session, endpoints.prometheus)
        start = now - TIMELINE_SECONDS
        try:
            answers = await asyncio.gather(
                *(
                    prometheus.range(render(expr, source.stack), start, now, TIMELINE_STEP_SECONDS)
                    for expr in TIMELINE_QUERIES.values()
                )
            )
            events += metric_events(dict(zip(TIMELINE_QUERIES, answers, strict=True)))
        except PrometheusError as exc:
            notes.append(f"release metrics: {exc}")
    reply = TimelineReply(stack=source.stack, now=now, events=sorted(events, key=lambda e: e.at), notes=notes)
    return web.json_response(text=reply.model_dump_json())


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def plotly_js(_request: web.Request) -> web.Response:
    return web.Response(body=PLOTLY_JS.read_bytes(), content_type="text/javascript")


@web.middleware
async def _same_origin_only(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """The page may load nothing from elsewhere: a CDN or a remote font would break offline and leak the host."""
    response = await handler(request)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def make_app(source: Source) -> web.Application:
    """The page's aiohttp application for ``source``."""

    async def session(app: web.Application) -> Any:
        async with aiohttp.ClientSession() as client:
            app[SESSION] = client
            yield

    app = web.Application(middlewares=[_same_origin_only])
    app[SOURCE] = source
    app.cleanup_ctx.append(session)
    app.router.add_get("/", index)
    app.router.add_get("/api/panels", api_panels)
    app.router.add_get("/api/timeline", api_timeline)
    app.router.add_get("/static/plotly.min.js", plotly_js)
    app.router.add_static("/static/", STATIC_DIR)
    return app


async def start(app: web.Application, port: int) -> tuple[web.AppRunner, str]:
    """Listen on 127.0.0.1:``port`` (0: any free port); the runner (``cleanup`` it) and the page's URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner, f"http://{HOST}:{runner.addresses[0][1]}/"


def serve(app: web.Application, port: int, ready: Callable[[str], None]) -> None:
    """Serve ``app`` until interrupted; ``ready`` gets the URL once the port is bound."""

    async def run() -> None:
        runner, url = await start(app, port)
        ready(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(run())
