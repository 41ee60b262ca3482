"""``promote`` and ``rollback``: the two operations that change what a stack serves, via the Automation API.

promote: point the stack's ``mlrelease:model`` at a model directory, run the preview (the gates), then the up
(the canary). Anything short of a promotion puts the stack's config back as it was, so config always names
what is live. Outcomes: ``promoted``, ``blocked`` (a gate failed; nothing changed), ``rolled_back`` (a canary
step failed; its traffic already went back to the incumbent).

rollback: back to the stack's verified previous release. Traffic moves first, through the target, to the warm
previous version (one router call); then that release's recorded config, with an ``mlrelease:restore`` marker,
is written and converged with an up. Every step is idempotent and the marker records where a crashed run got
to, so re-running finishes the job; once restored, a re-run only confirms it.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pulumi import automation as auto
from pydantic import BaseModel, Field

from automation.backend_files import PROJECT_NAME, stack_outputs
from automation.errors import CommandFailed
from automation.lock import LockBusy
from automation.stack import EngineProgress, Say, StackContext
from components.spec import ModelSpec, SpecError, load_spec
from components.targets import factory
from components.targets.base import Routes, Target, TargetError
from serving.artifacts import ArtifactDigestError, ModelDirError, artifact_digest, read_settings
from serving.release_metrics import ReleaseMetrics
from serving.v2 import DEFAULT_OUTPUT, OutputSpec

PROMOTE_EXIT = {"promoted": 0, "blocked": 3, "rolled_back": 4}
_GATE_FAILURE = re.compile(r"gate (\w+) failed: (.*?)(?=; gate \w+ failed: |$)")


class PromoteReport(BaseModel):
    """What ``mlrelease promote --json`` prints."""

    stack: str
    outcome: Literal["promoted", "blocked", "rolled_back"]
    candidate: dict[str, str] = Field(description="name, version, sha256, model_dir")
    incumbent: str | None = Field(description="the verified live version it was judged against")
    gates: dict[str, Any] = Field(description="gate -> {passed, summary}; on a block, the failing gates")
    canary: list[dict[str, Any]] = Field(description="verdicts of this release's steps, in order")
    failure: str | None = Field(description="the verdict that stopped the release, with its numbers")
    routes: dict[str, Any] | None = Field(description="live split after the command")
    durations: dict[str, float] = Field(description="preview_seconds, up_seconds, total_seconds")


class RollbackReport(BaseModel):
    """What ``mlrelease rollback --json`` prints."""

    stack: str
    outcome: Literal["rolled_back", "already_rolled_back"]
    restored: dict[str, str] = Field(description="version and sha256 of the verified release now live")
    from_version: str | None
    reason: str
    traffic_seconds: float | None = Field(description="rollback start -> all traffic on the restored version")
    converge_seconds: float = Field(description="the up that restored the recorded config")
    total_seconds: float
    routes: dict[str, Any]


def _candidate(given: str, project_dir: Path, version: str | None, expected_sha256: str | None) -> dict[str, str]:
    """The candidate of ``--model`` (a directory, or ``s3://BUCKET/PREFIX/`` fetched into the artifact cache)."""
    remote, model_dir = given.startswith("s3://"), Path(given).resolve()
    try:
        if remote:
            from automation.stores.artifacts import cache_root, fetch_model_dir  # boto3 only where it is needed

            model_dir = fetch_model_dir(given, expected_sha256, cache_root(project_dir))
        settings = read_settings(model_dir)
        sha256 = artifact_digest(model_dir)
    except (ModelDirError, ArtifactDigestError, OSError) as exc:
        raise CommandFailed(f"--model {given}: {exc}", 2) from None
    if expected_sha256 and expected_sha256.lower() != sha256:
        raise CommandFailed(
            f"--model {given}: artifact sha256 is {sha256}, not the expected {expected_sha256}: the artifact was"
            " changed or the wrong directory was given; nothing was released",
            2,
        )
    served = settings.parameters.version
    if version and served and version != served:
        raise CommandFailed(
            f"--version {version}, but {model_dir}/model-settings.json serves version {served}:"
            f" pass --version {served} or fix model-settings.json",
            2,
        )
    if not (version or served):
        raise CommandFailed(f"{model_dir}/model-settings.json has no parameters.version: pass --version", 2)
    path = given if remote else str(model_dir)  # state records where the model came from
    return {"name": settings.name, "version": str(version or served), "path": path, "sha256": sha256}


def _gates(outputs: dict[str, Any]) -> dict[str, Any]:
    evidence = (outputs.get("release-gates") or {}).get("evidence") or {}
    return {name: {"passed": g["passed"], "summary": g["summary"]} for name, g in (evidence.get("gates") or {}).items()}


def _steps(outputs: dict[str, dict[str, Any]], since: float) -> list[dict[str, Any]]:
    verdicts = [o.get("verdict") for name, o in sorted(outputs.items()) if name.startswith("release-canary-")]
    return [v for v in verdicts if v and (v.get("started_at") or 0) >= since]


def _routes(target: Target) -> dict[str, Any] | None:
    try:
        return target.routes().model_dump(mode="json")
    except TargetError:
        return None


def promote(
    ctx: StackContext,
    model_dir: str | Path,
    version: str | None,
    say: Say,
    *,
    expected_sha256: str | None = None,
    output: OutputSpec | None = None,
) -> PromoteReport:
    """Gates, then canary, for the model in ``model_dir``; the stack's config is restored unless promoted.

    ``expected_sha256`` (from the training pipeline's record) makes a changed artifact an error before anything
    runs; without it the digest is computed here and pinned in config, so the gates and the target check it.
    ``output`` says where the candidate's answers hold the score when it differs from the live version's
    (``mlrelease:model.output``); the incumbent is read as it was verified.
    """
    model: dict[str, Any] = _candidate(str(model_dir), ctx.project_dir, version, expected_sha256)
    if output is not None:
        model["output"] = output.model_dump(mode="json", exclude_none=True)
    try:
        with ctx.lock(f"promote {model['version']}"):
            return _promote(ctx, model, say)
    except LockBusy as exc:
        raise CommandFailed(str(exc)) from None


def _promote(ctx: StackContext, model: dict[str, Any], say: Say) -> PromoteReport:
    started, clock = time.time(), time.monotonic()
    before = ctx.config()
    if "model" not in before:
        raise CommandFailed(
            f"stack {ctx.name} has no mlrelease:model config: write Pulumi.{ctx.name}.yaml"
            " (Pulumi.staging.yaml is a documented example)",
            2,
        )
    if model["name"] != before["model"].get("name"):
        raise CommandFailed(
            f"{model['path']} serves model {model['name']!r}, but stack {ctx.name} serves"
            f" {before['model'].get('name')!r}: a stack releases one model",
            2,
        )
    config = {**before, "model": {**before["model"], **model}}
    config.pop("restore", None)
    try:
        load_spec(config)
    except SpecError as exc:
        raise CommandFailed(str(exc), 2) from None
    verified = ctx.verified()
    incumbent = ((verified or {}).get("live") or {}).get("version")
    candidate = {key: value for key, value in model.items() if key not in ("path", "output")}
    candidate["model_dir"] = model["path"]
    written = ctx.write_config(config)
    outcome, failure, gates, durations, promoted = "promoted", None, {}, {}, False
    try:
        say(f"preview: gates for {candidate['version']} against {incumbent or 'no incumbent (first release)'}")
        progress = EngineProgress(say)
        try:
            ctx.stack.preview(on_event=progress, on_output=lambda _line: None)
        except auto.CommandError as exc:
            failure = progress.failure() if progress.errors else str(exc)
            if "gate " not in failure:
                raise CommandFailed(failure, 2) from None
            outcome = "blocked"
            gates = {
                name: {"passed": False, "summary": summary.strip()} for name, summary in _GATE_FAILURE.findall(failure)
            }
        durations["preview_seconds"] = time.monotonic() - clock
        if outcome == "promoted":
            say("gates passed: running the canary")
            progress = EngineProgress(say)
            up_clock = time.monotonic()
            stop = threading.Event()
            follower = threading.Thread(target=progress.follow, args=(ctx.target, stop), daemon=True)
            follower.start()
            try:
                ctx.up(f"mlrelease promote {candidate['version']} (sha256 {candidate['sha256'][:12]})", progress)
            except auto.CommandError as exc:
                failure = progress.failure() if progress.errors else str(exc)
                if "canary step" in failure:
                    outcome = "rolled_back"
                elif "gate " in failure:
                    outcome = "blocked"
                else:
                    raise CommandFailed(f"the up failed: {failure}") from None
            finally:
                stop.set()
                follower.join()
            durations["up_seconds"] = time.monotonic() - up_clock
            promoted = outcome == "promoted"
            outputs = ctx.resource_outputs()
            gates = _gates(outputs)
            steps = _steps(outputs, started)
        else:
            steps = []
    finally:
        if not promoted:  # blocked, rolled back or failed: config names what is live, the file as it was
            ctx.undo_config(written, before)
    durations["total_seconds"] = time.monotonic() - clock
    return PromoteReport(
        stack=ctx.name,
        outcome=outcome,  # type: ignore[arg-type]
        candidate=candidate,
        incumbent=incumbent,
        gates=gates,
        canary=steps,
        failure=failure,
        routes=_routes(ctx.target),
        durations=durations,
    )


def move_traffic(
    target: Target, version: str, model_dir: Path | None, sha256: str | None, output: OutputSpec = DEFAULT_OUTPUT
) -> Routes:
    """All traffic to ``version`` in one call, every other version at 0: the first, instant half of a rollback.

    The previous version is normally warm: one router call (a split naming one version leaves the others at 0).
    If it is not (an unverified release attempt replaced it), it is deployed first — its digest checked — which
    costs a server start instead.
    """
    only = Routes(weights={version: 100.0}, primary=version)
    try:
        return target.set_routes(only)
    except TargetError:
        if version in target.routes().weights:
            raise  # deployed, and refused for another reason
    if model_dir is None or sha256 is None:
        raise TargetError(f"{version} is not deployed")
    target.deploy(version, model_dir, sha256, output)
    return target.set_routes(only)


def _effective(config: dict[str, Any]) -> dict[str, Any]:
    """What ``config`` means, every default spelled out (empty when it does not validate)."""
    try:
        return load_spec(config).model_dump(mode="json")
    except SpecError:
        return {}


def _as_written(recorded: dict[str, Any], written: dict[str, Any], effective: dict[str, Any]) -> dict[str, Any]:
    """A recorded config (a validated spec: every default spelled out) in the terms of the stack file.

    A key the file does not set stays unset where its recorded value is what it means today anyway, so a
    rollback's diff of ``Pulumi.<stack>.yaml`` is the values that differ, not every default.
    """
    kept: dict[str, Any] = {}
    for key, value in recorded.items():
        here, now = written.get(key), effective.get(key)
        if isinstance(value, dict) and (here is None or isinstance(here, dict)):
            inner = _as_written(value, here or {}, now if isinstance(now, dict) else {})
            if inner or key in written:
                kept[key] = inner
        elif key in written or value != now:
            kept[key] = value
    return kept


def restore_finished(marker: dict[str, Any], verified: dict[str, Any]) -> bool:
    """Does the verified checkpoint show the release a restore marker names as live (the rollback finished)?"""
    live = verified.get("live") or {}
    return (live.get("version"), live.get("sha256")) == (marker.get("version"), marker.get("sha256"))


def _plan(ctx: StackContext, reason: str) -> tuple[dict[str, Any], bool]:
    """The config to converge to (with its restore marker) and whether the stack is restored already."""
    config = ctx.config()
    verified = ctx.verified() or {}
    live = verified.get("live") or {}
    marker = config.get("restore")
    if marker:  # an earlier rollback wrote it: finish or confirm that one
        return config, restore_finished(marker, verified)
    previous, record = verified.get("previous"), verified.get("previous_release") or {}
    if not previous or not record.get("config"):
        raise CommandFailed(
            f"stack {ctx.name} has no verified previous release to roll back to"
            + (f" (live: {live.get('version')}, verified with no predecessor)" if live else " (nothing verified yet)")
            + ": nothing was changed",
            2,
        )
    restored = _as_written(record["config"], config, _effective(config))
    restored["restore"] = {
        "version": previous["version"],
        "sha256": previous["sha256"],
        "from_version": live.get("version"),
        "traffic_moved_at": None,
        "reason": reason[:500],
    }
    return restored, False


def rollback(
    ctx: StackContext,
    reason: str,
    say: Say,
    *,
    fired_at: float | None = None,
    warm: str | None = None,
    trigger: str = "operator",
) -> RollbackReport:
    """Traffic to the verified previous version, then its recorded config converged; safe to re-run.

    ``warm`` (the watcher knows it) is the previous version already serving: traffic moves to it before the
    stack's outputs and config are read, which costs engine calls; if the stack then names another target,
    traffic moves again. ``trigger`` (``watch``, ``drill``, ``operator``) labels the rollback counter.
    """
    fired_at = time.time() if fired_at is None else fired_at
    try:
        with ctx.lock("rollback"):
            return _rollback(ctx, reason, say, fired_at, warm, trigger)
    except LockBusy as exc:
        raise CommandFailed(str(exc)) from None


def _recorded_previous(ctx: StackContext) -> tuple[str, Target] | None:
    """The version a rollback restores and the target serving it, from the backend's latest checkpoint file.

    Its ``verified`` output names the previous version, and the live release's config names the target live
    traffic is on. After a finished restore (``restored_from``) the live version is the one restored, so a
    re-run moves nothing; an unfinished one (killed before its converge's checkpoint) still names the restored
    version as previous. None when the file cannot say (neither a file:// nor an s3:// backend, a bucket not
    answering, nothing verified, no predecessor): the rollback then asks the engine, as it always does
    afterwards to converge.
    """
    verified = (stack_outputs(ctx.env["PULUMI_BACKEND_URL"], PROJECT_NAME, ctx.name) or {}).get("verified")
    if not isinstance(verified, dict) or not isinstance(verified.get("config"), dict):
        return None
    named = verified.get("live") if verified.get("restored_from") else verified.get("previous")
    version = (named or {}).get("version")
    if not isinstance(version, str):
        return None
    try:
        return version, factory.for_config(ctx.project_dir, ctx.name, verified["config"])
    except TargetError:
        return None


def _rollback(
    ctx: StackContext, reason: str, say: Say, fired_at: float, warm: str | None, trigger: str
) -> RollbackReport:
    clock = time.monotonic()
    moved: str | None = None
    traffic_seconds = moved_at = None
    # First, before the engine: all traffic onto the restored version if it is serving already (one router
    # call). The watcher knows that version; the CLI reads it from the backend's files.
    first = (warm, ctx.target) if warm is not None else _recorded_previous(ctx)
    if first is not None:
        with contextlib.suppress(TargetError):
            move_traffic(first[1], first[0], None, None)
            moved, moved_at, traffic_seconds = first[0], time.time(), time.time() - fired_at
            say(f"traffic: 100% on {moved} after {traffic_seconds:.2f}s, before any engine call")
    config, done = _plan(ctx, reason)
    marker = config["restore"]
    version = marker["version"]
    if moved != version:
        try:
            model_dir = ModelSpec(**config["model"]).model_dir(ctx.project_dir)
            output = OutputSpec(**config["model"].get("output") or {})
            move_traffic(ctx.target, version, model_dir, marker["sha256"], output)
            moved_at, traffic_seconds = time.time(), time.time() - fired_at
        except (TargetError, ValueError) as exc:  # ValueError: the recorded model cannot be fetched or checked
            traffic_seconds = None
            say(f"traffic could not move first ({exc}); the converge moves it")
    if traffic_seconds is not None:
        if moved != version:
            say(f"traffic: 100% on {version} after {traffic_seconds:.2f}s")
        if marker.get("traffic_moved_at") is None:
            marker["traffic_moved_at"] = moved_at
    if done:
        say(f"stack {ctx.name} is already rolled back to {version}: confirming with an up")
    else:
        say(f"converging stack {ctx.name} to the recorded config of {version}")
        # Counted once per rollback: a re-run that finds it done (or finishes it after a crash) is not another.
        ReleaseMetrics(factory.run_dir(ctx.project_dir, ctx.name)).rollback(trigger)
    ctx.write_config(config)
    converge = time.monotonic()
    progress = EngineProgress(say)
    try:
        message = f"mlrelease rollback to {version} from {marker.get('from_version')}: {marker['reason']}"
        ctx.up(message[:900], progress)
    except auto.CommandError as exc:
        raise CommandFailed(
            f"the rollback's up failed (traffic is on {version} if it moved): "
            + (progress.failure() if progress.errors else str(exc))
            + f"; fix it and run `mlrelease rollback --stack {ctx.name}` again"
        ) from None
    converge_seconds = time.monotonic() - converge
    live = (ctx.verified() or {}).get("live") or {}
    if live.get("version") != version:
        raise CommandFailed(f"the rollback converged but the verified live version is {live.get('version')}")
    return RollbackReport(
        stack=ctx.name,
        outcome="already_rolled_back" if done else "rolled_back",
        restored={"version": version, "sha256": marker["sha256"]},
        from_version=marker.get("from_version"),
        reason=marker["reason"],
        traffic_seconds=traffic_seconds,
        converge_seconds=converge_seconds,
        total_seconds=time.monotonic() - clock,
        routes=_routes(ctx.target) or {},
    )
