"""``mlrelease status``: what a stack serves right now, what it would roll back to, and what the watcher sees."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from automation.drill import TAG
from automation.stack import StackContext
from automation.watch import read_state, summary
from components.targets.base import TargetError

_VERIFIED = ("live", "previous", "verified_at", "restored_from")


class StatusReport(BaseModel):
    """What ``mlrelease status --json`` prints."""

    stack: str
    configured: dict[str, Any] | None = Field(description="mlrelease:model of the stack's config")
    routes: dict[str, Any] | None = Field(description="live split and primary, from the target")
    versions: dict[str, dict[str, Any]] = Field(description="each deployed version: sha256, ready, process state")
    runtime_problems: list[str]
    verified: dict[str, Any] | None = Field(description="last verified checkpoint: live, previous, verified_at")
    rollback_to: str | None = Field(description="the version `mlrelease rollback` would restore")
    restored_from: str | None
    operation: dict[str, Any] | None = Field(description="the promote/rollback/drill holding the stack, if any")
    watcher: dict[str, Any] | None = Field(description="last state the watcher wrote, and whether it runs")
    last_drill: str | None


def status(ctx: StackContext) -> StatusReport:
    config = ctx.config()
    verified = ctx.verified()
    routes, versions, problems = None, {}, []
    try:
        live = ctx.target.routes()
        routes = live.model_dump(mode="json")
        for version in live.weights:
            deployment = ctx.target.deployment(version)
            versions[version] = (
                {"sha256": deployment.sha256, "ready": deployment.ready, "process": deployment.process.state}
                if deployment
                else {"sha256": None, "ready": False, "process": "absent"}
            )
        problems = ctx.target.status().problems
    except TargetError as exc:
        problems = [str(exc)]
    watch = read_state(ctx.project_dir, ctx.name)
    marker = config.get("restore") or {}
    return StatusReport(
        stack=ctx.name,
        configured=config.get("model"),
        routes=routes,
        versions=versions,
        runtime_problems=problems,
        verified={k: verified.get(k) for k in _VERIFIED} if verified else None,
        rollback_to=((verified or {}).get("previous") or {}).get("version") if not marker else None,
        restored_from=marker.get("from_version"),
        operation=ctx.holder(),
        watcher=summary(watch) if watch else None,
        last_drill=ctx.stack.list_tags().get(TAG),
    )
