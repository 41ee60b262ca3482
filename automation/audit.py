"""``mlrelease audit``: which model(s), data and config were live on a stack at time T, read from its history.

Stack history is the audit trail. Pulumi's DIY backends (``file://`` and ``s3://``) keep, per update (failed ones
too), a history record and the full checkpoint it left under ``.pulumi/history/<project>/<stack>/``, named by the
time they were saved. So the updates around T are found from one listing (a directory's, or a bucket's at 1,000
names a page) and a binary search on those names, and only the few files that answer T are read: a stack with
1,000 updates is answered in milliseconds, where reading every record (as ``pulumi stack history`` does) grows
with the history.

Traffic during an update comes from the timestamps of its canary step verdicts. What state cannot show — a
failing step keeps no verdict, older verdicts carry no timestamps — is reconstructed or left unknown, and the
report's ``note`` says which.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, Field

from automation.backend_files import PROJECT_NAME, StackHistory, decode, stack_history
from components.spec import NAMESPACE, CanarySpec

# The ModelDeployment's name in __main__.py: its resources are release-gates, release-versions, ...
DEPLOYMENT = "release"
# Operations that change what serves; refresh, import, rename, ... never move traffic.
STATE_KINDS = frozenset({"update", "destroy"})

State = Literal["settled", "update_in_progress", "before_first_release", "destroyed"]


class AuditError(Exception):
    """The question cannot be answered as asked; the message is one line naming the problem and the fix."""


class LiveModel(BaseModel):
    """One model version in the traffic split; 0 % means deployed and warm, receiving no client traffic."""

    version: str
    sha256: str | None = Field(description="artifact digest as recorded in state; None if no record names it")
    traffic_percent: float


class UpdateRecord(BaseModel):
    """One entry of the stack's history, as ``pulumi stack history`` shows it."""

    kind: str
    result: str
    start_time: datetime
    end_time: datetime
    message: str
    environment: dict[str, str]
    version: int


class VerifiedRelease(BaseModel):
    """The stack's last verified release at T: what a rollback would have restored."""

    live: str
    previous: str | None
    verified_at: datetime
    config_digest: str | None


class AuditReport(BaseModel):
    """What served on a stack at one moment, with the records that explain it."""

    stack: str
    at: datetime
    state: State
    models: list[LiveModel] = Field(description="the traffic split at T, largest share first")
    config: dict[str, Any] = Field(description="mlrelease:* config (prefix stripped) of the update that made it so")
    data_digests: dict[str, Any] | None = Field(description="data digests of the verified release at T")
    gate_evidence: dict[str, Any] | None = Field(description="gate evidence recorded by the update that made it so")
    verified: VerifiedRelease | None
    update: UpdateRecord | None = Field(description="the update whose effect was live at T")
    in_progress: UpdateRecord | None = Field(default=None, description="the update running at T, if one was")
    note: str | None = Field(default=None, description="set when the answer is reconstructed or partly unknown")


def parse_time(text: str) -> datetime:
    """``--at`` as an aware datetime: ISO 8601, ``Z`` allowed; a time without an offset is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditError(f"--at {text!r} is not an ISO 8601 time: use e.g. 2026-11-26T14:30:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def history_dir(backend_url: str, project: str, stack: str) -> StackHistory:
    """``stack``'s per-update files in a ``file://`` or ``s3://`` backend (nothing is listed yet)."""
    history = stack_history(backend_url, project, stack)
    if history is None:
        raise AuditError(
            f"audit reads per-update checkpoints from a file:// or s3:// backend; {backend_url} is neither: export"
            " the stack's history to one of them and pass its URL as PULUMI_BACKEND_URL"
        )
    return history


def audit(backend_url: str, stack: str, at: datetime, *, project: str = PROJECT_NAME) -> AuditReport:
    """What served on ``stack`` at ``at`` (timezone-aware), from the backend's per-update records."""
    if at.utcoffset() is None:
        raise AuditError(f"audit time {at.isoformat()} has no timezone: give an offset or Z (parse_time adds UTC)")
    updates = _around(history_dir(backend_url, project, stack), stack, at.timestamp())
    if not updates:
        raise AuditError(no_history(stack, backend_url))
    t = at.timestamp()
    # Saved at (or just after) each update's end: everything before `ended` had ended by T. The save stamp is
    # a little later than the recorded endTime, so look one or two files further.
    ended = bisect.bisect_right(updates, int(t * 1e9), key=lambda u: u.nanos)
    while ended < len(updates) and updates[ended].end <= t:
        ended += 1
    behind = (u for u in reversed(updates[:ended]) if u.kind in STATE_KINDS)
    last, earlier = next(behind, None), next(behind, None)
    after = earlier.end if earlier else float("-inf")
    pending = updates[ended] if ended < len(updates) and updates[ended].kind in STATE_KINDS else None

    if pending and pending.start <= t:
        live = _during(last, after, pending, t, stack)
    elif pending and pending.moved(last.end if last else float("-inf"), t):
        live = _restored(pending, "update_in_progress", f"; its converge update started at {_iso(pending.start)}")
    elif last:
        live = _settled(last, after, stack)
    else:
        live = _Live("before_first_release", {}, None, f"stack {stack} had no release before {_iso(updates[0].start)}")
    return _report(stack, at, t, live, [u for u in (live.made_by, pending, last) if u])


def list_names(files: StackHistory, start_after: str | None = None) -> list[str]:
    """The history's file names (after ``start_after``), or AuditError naming a store that did not answer."""
    try:
        return list(files.names(start_after))
    except OSError as exc:
        raise AuditError(f"{exc}: check the backend's endpoint and credentials (AWS_* for s3://)") from None


def no_history(stack: str, backend_url: str) -> str:
    return f"no history for stack {stack} in {backend_url}: check --stack and PULUMI_BACKEND_URL"


def _read_json(history: StackHistory, name: str) -> Any:
    try:
        return decode(name, history.read(name))
    except (OSError, ValueError) as exc:
        where = history.where(name)
        raise AuditError(f"cannot read {where}: {exc}: is the backend complete and readable?") from None


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: Any) -> Any:
    """Config values are strings; objects are JSON in them, plain strings (``staging``) are not."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


class _Update:
    """One update of the stack's history; its two files are read only when first asked for."""

    def __init__(self, files: StackHistory, nanos: int, stem: str, gz: str) -> None:
        # Only names here: a listing makes one of these per update, and only the few asked for are read.
        self.nanos, self._files, self._stem, self._gz = nanos, files, stem, gz

    @cached_property
    def history(self) -> dict[str, Any]:
        return _read_json(self._files, f"{self._stem}.history.json{self._gz}")

    @cached_property
    def resources(self) -> dict[str, dict[str, Any]]:
        """The checkpoint's resources by name (the URN's last part); a destroyed stack has none."""
        document = _read_json(self._files, f"{self._stem}.checkpoint.json{self._gz}")
        latest = document.get("checkpoint", {}).get("latest") or {}
        return {r["urn"].rsplit("::", 1)[-1]: r for r in latest.get("resources") or []}

    @property
    def kind(self) -> str:
        return self.history["kind"]

    @property
    def start(self) -> float:
        return float(self.history["startTime"])

    @property
    def end(self) -> float:
        return float(self.history["endTime"])

    @property
    def succeeded(self) -> bool:
        return self.history.get("result") == "succeeded"

    @cached_property
    def config(self) -> dict[str, Any]:
        prefix = f"{NAMESPACE}:"
        items = self.history.get("config", {}).items()
        return {key.removeprefix(prefix): _parse(value) for key, value in items if key.startswith(prefix)}

    @property
    def restore(self) -> dict[str, Any]:
        """``mlrelease:restore``, set by a rollback whose traffic moved before this converge update."""
        restore = self.config.get("restore")
        return restore if isinstance(restore, dict) else {}

    def moved(self, after: float, t: float) -> bool:
        """Did this update's rollback move traffic in (after, t]? ``after`` is the end of the update before it:
        the restore stays in config until the next promotion, so later updates carry it too, long after."""
        moved_at = self.restore.get("traffic_moved_at")
        return moved_at is not None and after < float(moved_at) <= t

    def outputs(self, resource: str) -> dict[str, Any]:
        return self.resources.get(f"{DEPLOYMENT}-{resource}", {}).get("outputs") or {}

    def modified(self, resource: str) -> float | None:
        """When the engine last changed a resource (the checkpoint's own stamp, kept since Pulumi 3.6x)."""
        stamp = self.resources.get(f"{DEPLOYMENT}-{resource}", {}).get("modified")
        return datetime.fromisoformat(stamp).timestamp() if stamp else None

    @cached_property
    def steps(self) -> dict[int, dict[str, Any]]:
        """Stored canary step verdicts by step index, in step order, whichever update wrote them."""
        prefix, found = f"{DEPLOYMENT}-canary-", {}
        for name, resource in self.resources.items():
            verdict = (resource.get("outputs") or {}).get("verdict")
            if name.startswith(prefix) and name[len(prefix) :].isdigit() and verdict:
                found[int(name[len(prefix) :])] = verdict
        return dict(sorted(found.items()))

    def own_verdicts(self) -> list[dict[str, Any]] | None:
        """The verdicts this update wrote, in step order; None when that cannot be told.

        Verdicts saved before steps were timed have no started_at. The engine's ``modified`` stamp still tells
        whether this update wrote one, but not when its step started: an untimed verdict this update wrote (or
        one without a stamp) leaves its traffic unknown, while untimed ones from earlier updates do not matter.
        """
        own = []
        for index, verdict in self.steps.items():
            started = verdict.get("started_at")
            if started is None:
                written = self.modified(f"canary-{index}")
                if written is None or written >= self.start:
                    return None
            elif started >= self.start:
                own.append(verdict)
        return own

    def record(self) -> UpdateRecord:
        h = self.history
        return UpdateRecord(
            kind=self.kind,
            result=h.get("result", ""),
            start_time=datetime.fromtimestamp(self.start, UTC),
            end_time=datetime.fromtimestamp(self.end, UTC),
            message=h.get("message", ""),
            environment=h.get("environment") or {},
            version=h.get("version", 0),
        )


# How far before T a listing starts, widened until it holds the two state-changing updates the answer needs
# (None: from the first update). Names sort by their save time, so a bucket lists from there, a page at a time.
LOOKBACK_S = (86_400.0, 30 * 86_400.0, 365 * 86_400.0, None)
AFTER_T = 3  # updates saved after T that the answer may need (the one running at T is saved after it)


def _around(files: StackHistory, stack: str, t: float) -> list[_Update]:
    """The updates of ``stack`` that can decide what was live at ``t``, in save order: from the second
    state-changing update before ``t`` (or the first update) to a few saved after it. What is read does not grow
    with the history: one listing from a start key near ``t`` and the few records walked back from it."""
    cut = int(t * 1e9)
    for lookback in LOOKBACK_S:
        start = None if lookback is None else f"{stack}-{max(0, cut - int(lookback * 1e9)):019d}"
        updates = _updates(files, stack, start, stop=cut)
        state_changing = (u for u in reversed(updates) if u.nanos <= cut and u.kind in STATE_KINDS)
        if lookback is None or (next(state_changing, None) and next(state_changing, None)):
            return updates
    raise AssertionError("unreachable: the last lookback lists from the first update")


def _updates(files: StackHistory, stack: str, start_after: str | None = None, stop: int | None = None) -> list:
    """The updates of ``stack`` in save order, listed from ``start_after`` up to ``AFTER_T`` saved after ``stop``
    (all of them without it); ``.attrs`` sidecars are skipped."""
    prefix, found, past = f"{stack}-", [], 0
    try:
        for name in files.names(start_after):
            if not (name.startswith(prefix) and name.endswith((".history.json", ".history.json.gz"))):
                continue
            stem, _, gz = name.partition(".history.json")
            nanos = stem[len(prefix) :]
            if nanos.isdigit():  # not another stack whose name starts with this one's and a dash
                found.append((int(nanos), stem, gz))
                past += stop is not None and int(nanos) > stop
                if stop is not None and past >= AFTER_T:
                    break
    except OSError as exc:
        raise AuditError(f"{exc}: check the backend's endpoint and credentials (AWS_* for s3://)") from None
    return [_Update(files, *entry) for entry in sorted(found)]


@dataclass(frozen=True)
class _Live:
    """The traffic split at T, the update whose effect it is, and what the report must say about it."""

    state: State
    weights: dict[str, float]
    made_by: _Update | None
    note: str | None = None
    in_progress: _Update | None = None


def _routes(verdict: dict[str, Any]) -> dict[str, float]:
    """The split a passed step left, as the router reported it when the step passed."""
    return {version: float(share) for version, share in verdict["routes"]["weights"].items()}


def _restored(update: _Update, state: State, tail: str = "") -> _Live:
    """A rollback moved all traffic to the restored version before its converge update changed state."""
    restore = update.restore
    version, origin = restore["version"], restore.get("from_version")
    weights = {version: 100.0, **({origin: 0.0} if origin and origin != version else {})}
    note = f"rollback from {origin or 'the live version'} to {version}: all traffic moved at"
    return _Live(state, weights, update, f"{note} {_iso(float(restore['traffic_moved_at']))}{tail}")


def _settled(update: _Update, after: float, stack: str) -> _Live:
    """The state an update left once it ended (a failed gate changes nothing, a failing step reverts).

    ``after`` is when the update before it ended.
    """
    ended = _iso(update.end)
    if update.kind == "destroy":
        note = f"stack {stack} was destroyed by the update that ended at {ended}; nothing was serving"
        if not update.succeeded:
            note += " (the destroy failed, so some servers may have kept running)"
        return _Live("destroyed", {}, update, note)
    own = update.own_verdicts() or []
    last = list(update.steps.values())[-1] if update.steps else None
    if update.moved(after, update.end) and not own:
        outcome = "converged" if update.succeeded else "failed to converge (traffic stayed moved)"
        return _restored(update, "settled", f"; its update {outcome} at {ended}")
    if last and (update.succeeded or (own and own[-1] == last)):  # a failure after the last step keeps its split
        return _Live("settled", _routes(last), update)
    live = update.outputs("checkpoint").get("live")
    if not live:
        return _Live("before_first_release", {}, update, f"stack {stack} had no verified release after {ended}")
    weights = {live["version"]: 100.0}
    candidate = update.outputs("versions").get("candidate")
    if candidate and candidate["version"] != live["version"]:
        weights[candidate["version"]] = 0.0
    tried = update.config.get("model", {}).get("version", "its candidate")
    note = f"the update that ended at {ended} failed, so {tried} took no traffic after it"
    return _Live("settled", weights, update, f"{note}: the verified {live['version']} served all of it")


def _during(before: _Update | None, after: float, update: _Update, t: float, stack: str) -> _Live:
    """T inside ``update``: the state before it (or the rollback's moved traffic), then the steps it ran by T.

    ``after`` is when the update before ``before`` ended.
    """
    started = f"the {update.kind} that started at {_iso(update.start)}"
    if update.moved(before.end if before else float("-inf"), t):
        base = _restored(update, "update_in_progress", f"; {started} was converging state")
    else:
        prior = _settled(before, after, stack) if before else _Live("before_first_release", {}, None)
        note = f"{started} had not moved traffic by then: as the update before it left it"
        base = _Live("update_in_progress", prior.weights, prior.made_by, note)
    base = replace(base, in_progress=update)
    if update.kind == "destroy":
        return base
    own = update.own_verdicts()
    if own is None:
        return replace(
            base, note=f"{started} kept no step timestamps, so traffic during it is unknown (shown as before)"
        )
    failing = None if update.restore else _failing_step(update, own, t)
    moved = [v for v in own if v["started_at"] <= t]
    if failing or not moved:
        return failing or base
    step = moved[-1]
    note = f"{started} was at canary step {step['step']} ({step['weight']:g}% to {step['candidate']}) since"
    return _Live("update_in_progress", _routes(step), update, f"{note} {_iso(step['started_at'])}", update)


def _failing_step(update: _Update, own: list[dict[str, Any]], t: float) -> _Live | None:
    """The step that failed ``update``, if it was running at T: its verdict is lost, its weight is not.

    It ran from the end of the update's last stored step (or, with none, from when this update deployed the
    candidate) to the update's end, at the next weight of the configured steps. A retry of a candidate an
    earlier failed attempt deployed changes nothing before its first step, so its step is taken from the
    update's start: an error of at most the retry's gate check, said in the note. An update that shows none of
    these never reached its canary as far as state can tell (a gate stopped it), so nothing is reconstructed.
    """
    if update.succeeded:
        return None
    deployed = update.modified("versions")
    candidate = update.outputs("versions").get("candidate") or {}
    incumbent = update.outputs("checkpoint").get("live")
    tried = update.config.get("model", {}).get("version")
    retried = not own and candidate.get("version") == tried and tried != (incumbent or {}).get("version")
    since_note = ""
    if own:
        since = own[-1]["ended_at"]
    elif deployed and deployed >= update.start:
        since = deployed
    elif retried:  # an earlier attempt deployed the candidate: this update changed nothing before its step
        since = update.start
        since_note = "; its start is not kept either (an earlier attempt deployed the candidate), so it is taken"
        since_note += " from the update's start"
    else:
        return None
    passed = own[-1]["weight"] if own else 0
    steps = (update.config.get("canary") or {}).get("steps") or CanarySpec().steps
    weight = next((w for w in steps if w > passed), None)
    if t < since or weight is None or not incumbent:
        return None
    note = (
        f"canary step {len(own) + 1} ({weight:g}% to {candidate['version']}) of the update that started at"
        f" {_iso(update.start)} was running and failed; reconstructed: the failing step's verdict is not kept in"
        f" state; the revert is taken at the update's end ({_iso(update.end)}){since_note}"
    )
    weights = {candidate["version"]: float(weight), incumbent["version"]: 100.0 - weight}
    return _Live("update_in_progress", weights, update, note, update)


def _digests(updates: list[_Update]) -> dict[str, str]:
    """version -> artifact sha256 from every record of the updates that name a model (first one wins)."""
    found: dict[str, str] = {}
    for update in updates:
        versions, checkpoint, gates = (update.outputs(r) for r in ("versions", "checkpoint", "gates"))
        refs = [versions.get(k) for k in ("candidate", "warm", "standby")] + [
            *(versions.get("deployed") or {}).values()
        ]
        refs += [checkpoint.get("live"), checkpoint.get("previous"), gates.get("candidate"), gates.get("incumbent")]
        refs += [update.restore, update.config.get("model")]
        for ref in refs:
            if isinstance(ref, dict) and ref.get("version") and ref.get("sha256"):
                found.setdefault(ref["version"], ref["sha256"])
    return found


def _report(stack: str, at: datetime, t: float, live: _Live, related: list[_Update]) -> AuditReport:
    digests = _digests(related)
    models = [
        LiveModel(version=version, sha256=digests.get(version), traffic_percent=share)
        for version, share in sorted(live.weights.items(), key=lambda item: (-item[1], item[0]))
    ]
    # The verified release at T: the deciding update's checkpoint if it was stamped by T (a release verifies
    # at its very end), else the one before it. A destroyed stack has none.
    stamped = (u.outputs("checkpoint") for u in related)
    checkpoint = next(
        (c for c in stamped if c.get("live") and c.get("verified_at") is not None and c["verified_at"] <= t), None
    )
    if live.state == "destroyed":
        checkpoint = None
    verified = (
        VerifiedRelease(
            live=checkpoint["live"]["version"],
            previous=(checkpoint.get("previous") or {}).get("version"),
            verified_at=datetime.fromtimestamp(float(checkpoint["verified_at"]), UTC),
            config_digest=checkpoint.get("config_digest"),
        )
        if checkpoint
        else None
    )
    made_by = live.made_by
    return AuditReport(
        stack=stack,
        at=at.astimezone(UTC),
        state=live.state,
        models=models,
        config=made_by.config if made_by else {},
        data_digests=checkpoint.get("data_digests") if checkpoint else None,
        gate_evidence=made_by.outputs("gates").get("evidence") if made_by else None,
        verified=verified,
        update=made_by.record() if made_by else None,
        in_progress=live.in_progress.record() if live.in_progress else None,
        note=live.note,
    )
