"""``mlrelease watch``: reads the live version's telemetry and fires the rollback by itself on a breach.

Every ``interval_seconds`` it takes three signals over the last ``window_seconds`` (``mlrelease:watch``):
prediction divergence of the live version against the warm previous version on the same inputs (the router's
shadow pairs), the live version's client-facing error rate and p99 latency (Prometheus). ``verification.health``
judges them; a significant breach, or no usable telemetry for ``missing_seconds``, fires ``rollback`` with the
breach as its reason. Missing telemetry is never health.

It never interleaves with a promote or a rollback: while another operation holds the stack's release lock it
pauses (a canary judges itself), and when the lock is released it re-reads the stack (the live version may
have changed) and starts its windows afresh. It takes the lock itself only to fire.

Its state (signals, live version, last breach) is written to ``.mlrelease/watch/<stack>.json`` on every look,
which is what ``mlrelease status`` shows.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from automation import live_drift
from automation.errors import CommandFailed
from automation.release import RollbackReport, restore_finished, rollback
from automation.stack import Say, StackContext
from components.spec import ReleaseSpec, SpecError, load_spec
from components.targets import factory
from components.targets.base import PairCursor, TargetError
from serving.release_metrics import ReleaseMetrics
from verification.health import (
    HealthVerdict,
    SignalResult,
    assess,
    divergence_signal,
    error_rate_signal,
    latency_signal,
    missing_telemetry_signal,
)

WATCH_DIR = Path(".mlrelease") / "watch"
WatchPhase = Literal["watching", "paused", "fired", "stopped", "failed"]


class WatchState(BaseModel):
    """What the watcher last saw; written on every look for ``mlrelease status``."""

    stack: str
    pid: int
    phase: WatchPhase
    started_at: float
    updated_at: float
    live: str | None
    previous: str | None
    verdict: HealthVerdict | None
    last_data_at: float | None
    fired_at: float | None = None
    breach: str | None = None
    rollback: RollbackReport | None = None
    error: str | None = None


def state_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / WATCH_DIR / f"{stack}.json"


def read_state(project_dir: Path, stack: str) -> WatchState | None:
    try:
        return WatchState.model_validate_json(state_path(project_dir, stack).read_bytes())
    except (FileNotFoundError, ValueError):
        return None


class Watcher:
    """The watch loop of one stack; ``run`` returns after a rollback (or a deadline, or ``stop``)."""

    def __init__(self, ctx: StackContext, say: Say) -> None:
        self.ctx, self.say = ctx, say
        self.spec = self._spec()
        self.state = WatchState(
            stack=ctx.name,
            pid=os.getpid(),
            phase="watching",
            started_at=time.time(),
            updated_at=time.time(),
            live=None,
            previous=None,
            verdict=None,
            last_data_at=None,
        )
        self.fired = threading.Event()
        self.trigger = "watch"  # what the rollbacks it fires are counted as (a drill's watcher says "drill")
        self.metrics = ReleaseMetrics(factory.run_dir(ctx.project_dir, ctx.name))
        self.live_drift_at = 0.0
        self.live_drift_thread = threading.Thread()
        self._fresh(time.time())

    def _spec(self) -> ReleaseSpec:
        try:
            return load_spec(self.ctx.config())
        except SpecError as exc:
            raise CommandFailed(str(exc), 2) from None

    def _fresh(self, now: float) -> None:
        """Start every window afresh (at start and after another operation changed the stack)."""
        self.window_started = now
        self.last_data_at: float | None = None
        self.cursor: PairCursor | None = None
        self.pairs: deque[tuple[float, float, float]] = deque()
        verified = self.ctx.verified() or {}
        self.verified_previous = (verified.get("previous") or {}).get("version")
        # A restore marker the verified live version does not match: a rollback (ours, killed, or a CLI one) was
        # interrupted after it moved traffic; finishing it comes before judging anything.
        marker = self.ctx.config().get("restore")
        self.interrupted = marker if isinstance(marker, dict) and not restore_finished(marker, verified) else None

    def _check_live_drift(self, live: str, now: float) -> None:
        """Every ``live_drift.INTERVAL_S``, the live inputs' drift, in a thread: it reads parquet and must not
        delay a look (the drill measures detection in seconds)."""
        if now - self.live_drift_at < live_drift.INTERVAL_S or self.live_drift_thread.is_alive():
            return
        self.live_drift_at = now
        log_dir = factory.run_dir(self.ctx.project_dir, self.ctx.name) / "log"

        def check() -> None:
            try:
                report = live_drift.live_drift(self.spec, Path(self.ctx.project_dir), log_dir, live, now)
            except live_drift.LiveDriftUnavailable:
                return  # nothing to export yet; the panel says "no data"
            self.metrics.live_drift(report)

        self.live_drift_thread = threading.Thread(target=check, name="live-drift", daemon=True)
        self.live_drift_thread.start()

    def _write(self) -> None:
        path = state_path(self.ctx.project_dir, self.ctx.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.state.model_dump_json(indent=2))
        os.replace(tmp, path)
        signals = self.state.verdict.signals if self.state.verdict else []
        self.metrics.watch(self.state.phase, [s.model_dump(mode="json") for s in signals], self.state.updated_at)

    # -- one look ----------------------------------------------------------------------------------

    def _divergence(self, live: str, previous: str | None, now: float) -> SignalResult:
        watch = self.spec.watch
        if previous is not None:
            page = self.ctx.target.pairs(self.cursor, since_ts=self.window_started, limit=5000)
            self.cursor = page.cursor
            for pair in page.pairs:
                outputs = {pair.incumbent: pair.incumbent_output, pair.candidate: pair.candidate_output}
                live_out, prev_out = outputs.get(live), outputs.get(previous)
                if live_out and prev_out and len(live_out) == len(prev_out):
                    self.pairs.extend((pair.ts, a, b) for a, b in zip(live_out, prev_out, strict=True))
        while self.pairs and self.pairs[0][0] < now - watch.window_seconds:
            self.pairs.popleft()
        return divergence_signal(
            [p[1] for p in self.pairs],
            [p[2] for p in self.pairs],
            decision_threshold=self.spec.canary.comparison.decision_threshold,
            max_disagreement=watch.max_disagreement,
            confidence=watch.confidence,
            min_pairs=watch.min_samples,
        )

    def look(self) -> HealthVerdict:
        """Read every signal once, judge them, record the state; fire the rollback on a breach."""
        now, watch = time.time(), self.spec.watch
        signals: list[SignalResult] = []
        live = previous = None
        try:
            routes = self.ctx.target.routes()
            live = routes.primary
            previous = self.verified_previous if self.verified_previous in routes.weights else None
            stats = self.ctx.target.telemetry(live, now - watch.window_seconds, now)
            requests = stats.requests
            signals += [
                error_rate_signal(
                    stats.errors,
                    requests,
                    max_error_rate=watch.max_error_rate,
                    confidence=watch.confidence,
                    min_requests=watch.min_samples,
                ),
                latency_signal(stats.p99_ms, requests, max_p99_ms=watch.p99_ms, min_requests=watch.min_samples),
                self._divergence(live, previous, now),
            ]
        except TargetError as exc:
            self.say(f"no telemetry: {exc}")
        if any(s.state != "insufficient" for s in signals):
            self.last_data_at = now
        signals.append(
            missing_telemetry_signal(self.last_data_at, now, self.window_started, window_seconds=watch.missing_seconds)
        )
        verdict = assess(signals)
        self.state = self.state.model_copy(
            update={
                "phase": "watching",
                "updated_at": now,
                "live": live,
                "previous": previous,
                "verdict": verdict,
                "last_data_at": self.last_data_at,
            }
        )
        self._write()
        if live is not None:
            self._check_live_drift(live, now)
        if verdict.breached:
            self.fire(verdict)
        return verdict

    def fire(self, verdict: HealthVerdict) -> None:
        """Roll back now; ``fired_at`` is the decision's time (a look's reads take up to a scrape interval)."""
        breach = "; ".join(s.explanation for s in verdict.breached)
        self.say(f"BREACH on {self.state.live}: {breach}: rolling back")
        self._roll_back(f"watch: {breach}", breach, self.state.previous)

    def finish_interrupted(self, marker: dict[str, Any]) -> None:
        """Finish a rollback that was killed after it moved traffic: the same restore, converged once (its
        marker names the version, so no second rollback to an older one can follow from it)."""
        self.say(f"an interrupted rollback to {marker.get('version')} from {marker.get('from_version')}: finishing it")
        self._roll_back(
            str(marker.get("reason") or "watch"), f"finished an interrupted rollback: {marker.get('reason')}", None
        )

    def _roll_back(self, reason: str, breach: str, warm: str | None) -> None:
        now = time.time()
        self.state = self.state.model_copy(update={"phase": "fired", "fired_at": now, "breach": breach})
        self._write()
        try:
            report = rollback(self.ctx, reason, self.say, fired_at=now, warm=warm, trigger=self.trigger)
        except CommandFailed as exc:
            self.state = self.state.model_copy(update={"phase": "failed", "error": str(exc)})
            self._write()
            self.say(f"ROLLBACK FAILED: {exc}")
            raise
        self.state = self.state.model_copy(update={"rollback": report})
        self._write()
        self.fired.set()

    # -- the loop ----------------------------------------------------------------------------------

    def run(
        self, *, stop: threading.Event | None = None, max_seconds: float | None = None, after_rollback: bool = True
    ) -> WatchState:
        """Look every interval until a rollback fired (``after_rollback``), ``stop`` is set or time is up."""
        stop = stop or threading.Event()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        paused_by: dict[str, Any] | None = None
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                tick = time.monotonic()
                busy = self.ctx.holder()
                if busy:
                    if paused_by is None:
                        self.say(f"paused: {busy.get('operation')} (pid {busy.get('pid')}) holds the stack")
                        self.state = self.state.model_copy(update={"phase": "paused", "updated_at": time.time()})
                        self._write()
                    paused_by = busy
                else:
                    if paused_by is not None:  # the stack may serve another version now: start afresh
                        paused_by = None
                        self.spec = self._spec()
                        self._fresh(time.time())
                        self.say("resumed")
                    if self.interrupted is not None:
                        self.finish_interrupted(self.interrupted)
                    else:
                        self.look()
                    if self.fired.is_set():
                        if after_rollback:
                            break
                        self.fired.clear()
                        self.spec = self._spec()
                        self._fresh(time.time())
                stop.wait(max(0.0, self.spec.watch.interval_seconds - (time.monotonic() - tick)))
        finally:
            if self.state.phase not in ("fired", "failed"):
                self.state = self.state.model_copy(update={"phase": "stopped", "updated_at": time.time()})
                self._write()
        return self.state


def summary(state: WatchState) -> dict[str, Any]:
    """The watcher state as ``status`` shows it (and whether its process still runs)."""
    try:
        os.kill(state.pid, 0)
        running = state.phase in ("watching", "paused")
    except ProcessLookupError:
        running = False
    except PermissionError:
        running = True
    return {**json.loads(state.model_dump_json()), "running": running}
