"""The release timeline: stack history (each update) merged with the release metrics' event timestamps.

History says what the engine did (kind, result, message, start and end of every update, failed ones too);
the textfile metrics say what the release decided inside and between updates (gate runs, canary verdicts, a
rollback fired by the watcher or a drill), with the times the writers stamped. A rollback is its own lane and
outcome, so the page can draw it as a marker that cannot be mistaken for an ordinary update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from automation.audit import AuditError, history_dir, list_names, no_history
from automation.backend_files import decode

Lane = Literal["update", "gates", "canary", "release", "rollback", "drill"]
Outcome = Literal["ok", "failed", "rollback", "info"]
ROLLBACK_MESSAGE = "mlrelease rollback"  # automation/release.py's message of a rollback's converge update


class Event(BaseModel):
    """One thing that happened to the release, at unix time ``at`` (``end`` for events with a duration)."""

    at: float
    end: float | None = None
    lane: Lane
    outcome: Outcome
    label: str


def history_events(backend_url: str, project: str, stack: str, *, newest: int = 200) -> list[Event]:
    """The stack's last ``newest`` updates as events, from the backend's history records.

    Raises AuditError (one line naming the fix) when the backend is neither ``file://`` nor ``s3://``, does not
    answer, or holds no update of the stack. Records are named ``<stack>-<unix nanos>.history.json[.gz]``, so
    the newest are found from one listing.
    """
    history = history_dir(backend_url, project, stack)
    prefix, found = f"{stack}-", []
    for name in list_names(history):
        nanos = name.partition(".history.json")[0].removeprefix(prefix)
        # .attrs sidecars aside, and not another stack whose name starts with this one's and a dash
        if name.startswith(prefix) and name.endswith((".history.json", ".history.json.gz")) and nanos.isdigit():
            found.append((int(nanos), name))
    if not found:
        raise AuditError(no_history(stack, backend_url))
    events = []
    for _nanos, name in sorted(found)[-newest:]:
        try:
            record = decode(name, history.read(name))
        except (OSError, ValueError):
            continue  # a record being written; the next poll reads it
        events.append(_update_event(record))
    return events


def _update_event(record: Mapping[str, Any]) -> Event:
    message, kind, result = record.get("message") or "", record.get("kind", "update"), record.get("result", "")
    rollback = message.startswith(ROLLBACK_MESSAGE)
    return Event(
        at=float(record.get("startTime", 0)),
        end=float(record.get("endTime", 0)) or None,
        lane="rollback" if rollback else "update",
        outcome="rollback" if rollback else "ok" if result == "succeeded" else "failed" if result else "info",
        label=f"{kind} {result or 'in progress'}" + (f": {message}" if message else ""),
    )


# The release metrics the timeline reads (serving/METRICS.md), by role: when, and what was decided then.
TIMELINE_QUERIES: dict[str, str] = {
    "gates_at": 'mlrelease_gate_last_run_timestamp_seconds{stack="$stack"}',
    "gates_passed": 'min by (stack, candidate) (mlrelease_gate_passed{stack="$stack"})',
    "canary_at": 'mlrelease_canary_step_timestamp_seconds{stack="$stack"}',
    "canary_verdict": 'mlrelease_canary_verdict{stack="$stack"}',
    "canary_step": 'max by (stack, candidate) (mlrelease_canary_step{stack="$stack"})',
    "canary_weight": 'mlrelease_canary_weight_percent{stack="$stack"}',
    "verified_at": 'mlrelease_release_verified_timestamp_seconds{stack="$stack"}',
    "live": 'mlrelease_release_info{stack="$stack",role="live"}',
    "rollback_at": 'mlrelease_rollback_last_timestamp_seconds{stack="$stack"}',
    "drill_at": 'mlrelease_drill_timestamp_seconds{stack="$stack"}',
    "drill_passed": 'mlrelease_drill_passed{stack="$stack"}',
}

Series = Mapping[str, Any]  # one series of a Prometheus range result: {"metric": {...}, "values": [[t, "v"], ...]}


def _labels(series: Series) -> dict[str, str]:
    return {k: v for k, v in series["metric"].items() if k != "__name__"}


def _at(companions: Sequence[Series], labels: Mapping[str, str], t: float) -> float | None:
    """The value at point time ``t`` of the companion series whose labels are a subset of ``labels``."""
    for series in companions:
        if _labels(series).items() <= labels.items():
            for point_t, value in series["values"]:
                if float(point_t) == t:
                    return float(value)
    return None


def _stamps(series: Series) -> list[tuple[float, float]]:
    """Each distinct timestamp value of a ``*_timestamp_seconds`` gauge, with the point time it first appeared."""
    seen, out = set(), []
    for point_t, value in series["values"]:
        if value not in seen:
            seen.add(value)
            out.append((float(value), float(point_t)))
    return out


def metric_events(results: Mapping[str, Sequence[Series]]) -> list[Event]:
    """Events from range results of ``TIMELINE_QUERIES`` (keyed as there), all taken with the same start and step.

    A stamp's decision (passed, verdict, step) is read at the point where the stamp first appeared. An event is
    placed at its stamp, not at the point where it was seen, so it stays put as the window slides.
    """
    events: list[Event] = []
    for series in results.get("gates_at", []):
        labels = _labels(series)
        for stamp, seen in _stamps(series):
            passed = _at(results.get("gates_passed", []), labels, seen)
            outcome: Outcome = "info" if passed is None else "ok" if passed >= 1 else "failed"
            verdict = {"ok": "passed", "failed": "blocked", "info": "ran"}[outcome]
            events.append(
                Event(at=stamp, lane="gates", outcome=outcome, label=f"gates {verdict}: {labels.get('candidate')}")
            )
    for series in results.get("canary_at", []):
        labels = _labels(series)
        for stamp, seen in _stamps(series):
            verdict = _at(results.get("canary_verdict", []), labels, seen)
            step = _at(results.get("canary_step", []), labels, seen)
            weight = _at(results.get("canary_weight", []), labels, seen)
            outcome = "info" if verdict is None else "ok" if verdict >= 1 else "failed"
            what = {"ok": "passed", "failed": "FAILED, traffic back on the incumbent", "info": "judged"}[outcome]
            where = f"step {step:g}" if step is not None else "step"
            share = f" ({weight:g}%)" if weight is not None else ""
            events.append(
                Event(
                    at=stamp, lane="canary", outcome=outcome, label=f"{where}{share} {labels.get('candidate')}: {what}"
                )
            )
    for series in results.get("verified_at", []):
        for stamp, seen in _stamps(series):
            live = [s for s in results.get("live", []) if any(float(t) == seen for t, _ in s["values"])]
            version = live[0]["metric"].get("version") if live else "?"
            events.append(Event(at=stamp, lane="release", outcome="ok", label=f"verified: {version} live"))
    for series in results.get("rollback_at", []):
        trigger = _labels(series).get("trigger", "?")
        for stamp, _seen in _stamps(series):
            events.append(Event(at=stamp, lane="rollback", outcome="rollback", label=f"ROLLBACK ({trigger})"))
    for series in results.get("drill_at", []):
        labels = _labels(series)
        for stamp, seen in _stamps(series):
            passed = _at(results.get("drill_passed", []), labels, seen)
            outcome = "info" if passed is None else "ok" if passed >= 1 else "failed"
            verdict = {"ok": "recovered in budget", "failed": "FAILED its budget", "info": "started"}[outcome]
            events.append(
                Event(at=stamp, lane="drill", outcome=outcome, label=f"drill {labels.get('fault')}: {verdict}")
            )
    return events
