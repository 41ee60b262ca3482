"""``mlrelease drill``: break the live version on purpose and measure how fast the stack recovers by itself.

After a verified release (the previous version warm beside the live one), the drill starts a watcher, waits
until it sees the live version healthy, injects the fault into the live version through the router's admin
API, and lets the watcher detect it and fire the rollback — no human and no shortcut: the same code path as
production. It measures ``detection_seconds`` (fault start -> rollback fired) and ``recovery_seconds`` (fault
start -> all traffic on the verified previous version and the stack converged), writes a JSON report to the
repo's ``drills/`` directory, and summarises it in the stack tag ``mlrelease:last-drill``.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from automation.errors import CommandFailed
from automation.stack import Say, StackContext
from automation.watch import Watcher
from components.targets import factory
from components.targets.base import Fault, TargetError
from serving.release_metrics import ReleaseMetrics

DRILL_DIR = "drills"
TAG = "mlrelease:last-drill"
FaultKind = Literal["error", "latency", "divergence"]
# Each fault is well past its watch limit (defaults: 5 % errors, p99 250 ms, 5 % decision flips), so a
# drill measures the rollback path, not the detection threshold.
FAULTS: dict[str, Fault] = {
    "error": Fault(error_rate=0.5),
    "latency": Fault(latency_ms=600),
    "divergence": Fault(perturbation=0.35),
}
BASELINE_TIMEOUT_S = 60.0


class DrillReport(BaseModel):
    """What ``mlrelease drill --json`` prints and what the drill directory keeps."""

    stack: str
    fault: FaultKind
    injected: Fault
    outcome: Literal["recovered", "failed"]
    started_at: datetime
    faulty_version: str
    restored_version: str | None
    detection_seconds: float | None = Field(description="fault start -> rollback fired")
    recovery_seconds: float | None = Field(description="fault start -> traffic on the verified version, converged")
    traffic_seconds: float | None = Field(description="rollback fired -> all traffic on the verified version")
    converge_seconds: float | None
    budget_seconds: float
    breach: str | None
    problem: str | None = Field(description="why the drill failed, when it did")
    report_path: str | None = None


def _preconditions(ctx: StackContext) -> tuple[str, str]:
    verified = ctx.verified() or {}
    live, previous = verified.get("live"), verified.get("previous")
    fix = f"promote a release over a verified one first (mlrelease promote --stack {ctx.name} --model DIR)"
    if not live or not previous:
        raise CommandFailed(f"a drill needs a verified release with a previous one to fall back to: {fix}", 2)
    try:
        routes = ctx.target.routes()
    except TargetError as exc:
        raise CommandFailed(f"the stack's runtime is not serving ({exc}): run `pulumi up -s {ctx.name}`", 2) from None
    if routes.primary != live["version"] or previous["version"] not in routes.weights:
        raise CommandFailed(
            f"live traffic ({routes.weights}, primary {routes.primary}) is not the verified release"
            f" {live['version']} with {previous['version']} warm: {fix}",
            2,
        )
    busy = ctx.holder()
    if busy:
        raise CommandFailed(f"stack {ctx.name} is busy ({busy.get('operation')}, pid {busy.get('pid')}): drill later")
    return live["version"], previous["version"]


def drill(ctx: StackContext, fault: FaultKind, budget_seconds: float, say: Say) -> DrillReport:
    """Inject ``fault`` into the live version and measure the watcher's rollback; always writes a report."""
    faulty, previous = _preconditions(ctx)
    watcher = Watcher(ctx, lambda line: say(f"watch: {line}"))
    watcher.trigger = "drill"
    deadline = time.monotonic() + BASELINE_TIMEOUT_S
    while not watcher.look().healthy:
        if watcher.fired.is_set():
            raise CommandFailed("the live version breached before any fault was injected: see the rollback above")
        if time.monotonic() > deadline:
            raise CommandFailed(
                f"the watcher saw no healthy baseline in {BASELINE_TIMEOUT_S:.0f}s ({watcher.state.verdict}):"
                " a drill needs live traffic on a healthy release"
            )
        time.sleep(watcher.spec.watch.interval_seconds)
    started = datetime.now(UTC)
    injected_at = time.time()
    say(f"injecting {fault} fault into {faulty}: {FAULTS[fault].model_dump(exclude_defaults=True)}")
    ctx.target.set_fault(faulty, FAULTS[fault])
    problem = None
    try:
        state = watcher.run(max_seconds=budget_seconds, after_rollback=True)
    except CommandFailed as exc:
        state, problem = watcher.state, f"the rollback failed: {exc}"
    finally:
        with contextlib.suppress(TargetError):
            ctx.target.set_fault(faulty, None)  # gone with its server after a rollback; cleared if it still runs
    recovered_at = time.time()
    routes = ctx.target.routes()
    live = ((ctx.verified() or {}).get("live") or {}).get("version")
    report = state.rollback
    if problem is None and state.fired_at is None:
        problem = f"the watcher did not fire within the budget of {budget_seconds:.0f}s"
    elif problem is None and (routes.primary != previous or routes.weights.get(previous) != 100 or live != previous):
        problem = f"after the rollback the stack serves {routes.weights} (verified live {live}), not {previous}"
    recovery = recovered_at - injected_at if problem is None else None
    if recovery is not None and recovery > budget_seconds:
        problem = f"recovery took {recovery:.1f}s, over the budget of {budget_seconds:.0f}s"
    result = DrillReport(
        stack=ctx.name,
        fault=fault,
        injected=FAULTS[fault],
        outcome="recovered" if problem is None else "failed",
        started_at=started,
        faulty_version=faulty,
        restored_version=report.restored["version"] if report else None,
        detection_seconds=state.fired_at - injected_at if state.fired_at else None,
        recovery_seconds=recovery,
        traffic_seconds=report.traffic_seconds if report else None,
        converge_seconds=report.converge_seconds if report else None,
        budget_seconds=budget_seconds,
        breach=state.breach,
        problem=problem,
    )
    return _keep(ctx, result)


def _keep(ctx: StackContext, report: DrillReport) -> DrillReport:
    """Write the report into the drill directory and summarise it in the stack's tag."""
    directory = Path(ctx.project_dir) / DRILL_DIR
    directory.mkdir(exist_ok=True)
    path = directory / f"{ctx.name}-{report.started_at:%Y%m%dT%H%M%SZ}-{report.fault}.json"
    report = report.model_copy(update={"report_path": str(path)})
    path.write_text(report.model_dump_json(indent=2) + "\n")
    ReleaseMetrics(factory.run_dir(ctx.project_dir, ctx.name)).drill(report.model_dump(mode="json"))
    seconds = f"detect {report.detection_seconds or 0:.1f}s recover {report.recovery_seconds or 0:.1f}s"
    ctx.stack.set_tag(TAG, f"{report.outcome} {report.fault} {seconds} at {report.started_at:%Y-%m-%dT%H:%M:%SZ}")
    return report
