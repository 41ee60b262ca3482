"""The release's own signals as Prometheus metrics, written for node_exporter's textfile collector.

Gate checks, canary steps, the checkpoint, ``rollback`` and ``drill`` run in processes that end within seconds;
nothing could scrape them. Each writes its metrics with ``prometheus_client.write_to_textfile`` (a temporary file,
then an atomic rename, so a scrape never reads half a file) into ``<run_dir>/textfile/<writer>.prom``, which the
stack's supervised node_exporter serves (``serving.monitoring``) beside the host's metrics. Counters must outlive
the process that bumps them: their values are kept in ``counters.json`` beside the files, changed under ``flock``.
Names and labels are the contract in ``serving/METRICS.md``.

Exporting is never on a release's critical path: a metric that cannot be written is reported on stderr and the
release goes on (the decision was made from the numbers, not from their export).
"""

from __future__ import annotations

import fcntl
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serving.monitoring import textfile_dir

COUNTERS_FILE = "counters.json"
LAST_ROLLBACK = "mlrelease_rollback_last_timestamp_seconds"
WATCH_PHASES = ("watching", "paused", "fired", "stopped", "failed")
OUTCOMES = ("promoted", "blocked", "rolled_back")
TRIGGERS = ("watch", "drill", "operator")


def _number(value: Any) -> float | None:
    """A finite float, or None for what is not a number (missing, NaN, a string such as "Infinity")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _slug(name: str) -> str:
    """A label value from a criterion's name: ``p99 latency (upper bound)`` -> ``p99_latency``."""
    return re.sub(r"[^a-z0-9]+", "_", name.split(" (")[0].lower()).strip("_")


class _Counters:
    """Counter totals that survive processes: a collector reading ``counters.json`` at write time.

    Beside the rollback counter, the time of each trigger's last rollback: a counter's rise is only seen at the
    next sample of a range query, so the timeline would place the event a step late and at a different time on
    every refresh; the stamp is the moment itself.
    """

    def __init__(self, values: Mapping[str, Any], stack: str) -> None:
        self.values, self.stack = values, stack

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        last = GaugeMetricFamily(LAST_ROLLBACK, "When each trigger's last rollback fired.", labels=["stack", "trigger"])
        for trigger, at in sorted(self.values.get("last", {}).get("mlrelease_rollbacks", {}).items()):
            last.add_metric([self.stack, trigger], at)
        yield last
        for name, label, known, doc in (
            ("mlrelease_releases", "outcome", OUTCOMES, "Releases by outcome: promoted, blocked, rolled_back."),
            ("mlrelease_rollbacks", "trigger", TRIGGERS, "Rollbacks to the verified checkpoint by trigger."),
        ):
            family = CounterMetricFamily(name, doc, labels=["stack", label])
            # Every known value from the first write, at 0: increase() sees no rise in a series born at 1.
            totals = {value: 0.0 for value in known} | self.values.get(name, {})
            for value, total in sorted(totals.items()):
                family.add_metric([self.stack, value], total)
            yield family


class ReleaseMetrics:
    """The textfile metrics of one stack, addressed by its run directory (whose name is the stack's)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.dir = textfile_dir(Path(run_dir))
        self.stack = Path(run_dir).name

    # -- writing -----------------------------------------------------------------------------------

    def _write(self, writer: str, registry: CollectorRegistry) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(self.dir / f"{writer}.prom"), registry)
        except OSError as exc:
            print(f"mlrelease: the {writer} metrics could not be written to {self.dir}: {exc}", file=sys.stderr)

    @contextmanager
    def _counters(self) -> Iterator[dict[str, Any]]:
        """The persisted counters, locked while the caller changes them; the counters file is rewritten after."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / COUNTERS_FILE
        with open(self.dir / ".counters.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                values = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                values = {}
            yield values
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(values, indent=2, sort_keys=True))
            tmp.replace(path)
            registry = CollectorRegistry()
            registry.register(_Counters(values, self.stack))
            self._write("counters", registry)

    def publish_counters(self) -> None:
        """Serve the counters as they stand (every known outcome and trigger at 0 on a new stack), so the first
        rollback is a rise from 0 that ``increase()`` sees."""
        try:
            with self._counters():
                pass
        except OSError as exc:
            print(f"mlrelease: the counters could not be written to {self.dir}: {exc}", file=sys.stderr)

    def _count(self, name: str, label: str, once: str | None = None) -> None:
        try:
            with self._counters() as values:
                if once is not None:
                    seen = values.setdefault("counted", [])
                    if once in seen:
                        return
                    seen.append(once)
                    del seen[:-200]  # a bounded memory of what was counted once
                totals = values.setdefault(name, {})
                totals[label] = totals.get(label, 0) + 1
                values.setdefault("last", {}).setdefault(name, {})[label] = time.time()
        except OSError as exc:
            print(f"mlrelease: the {name} counter could not be written to {self.dir}: {exc}", file=sys.stderr)

    # -- what each writer records ------------------------------------------------------------------

    def gates(self, evidence: Mapping[str, Any]) -> None:
        """Every gate's pass/fail with its numbers against their limits; drift per feature (source ``gate``)."""
        candidate = str((evidence.get("candidate") or {}).get("version", "unknown"))
        registry = CollectorRegistry()
        labels = ["stack", "gate", "candidate"]
        passed = Gauge(
            "mlrelease_gate_passed", "1 if the gate passed its last run, 0 if it blocked.", labels, registry=registry
        )
        observed = Gauge(
            "mlrelease_gate_observed", "The number the gate judged.", [*labels, "measure"], registry=registry
        )
        threshold = Gauge(
            "mlrelease_gate_threshold", "The limit the gate judged it against.", [*labels, "measure"], registry=registry
        )
        for name, gate in (evidence.get("gates") or {}).items():
            passed.labels(self.stack, name, candidate).set(1 if gate.get("passed") else 0)
            for measure, value, limit in _gate_measures(name, gate):
                if value is not None:
                    observed.labels(self.stack, name, candidate, measure).set(value)
                if limit is not None:
                    threshold.labels(self.stack, name, candidate, measure).set(limit)
        started = evidence.get("started_at")
        stamp = Gauge(
            "mlrelease_gate_last_run_timestamp_seconds",
            "When the gates last ran.",
            ["stack", "candidate"],
            registry=registry,
        )
        stamp.labels(self.stack, candidate).set(_unix(started))
        drift = (evidence.get("gates") or {}).get("drift")
        if drift:
            _drift_gauges(registry, self.stack, "gate", drift.get("report") or {})
        self._write("gates", registry)
        if not evidence.get("passed"):
            self._count("mlrelease_releases", "blocked", once=f"blocked:{evidence.get('cache_key')}")

    def live_drift(self, report: Mapping[str, Any]) -> None:
        """Drift per feature of the live traffic (the inference log) against the reference (source ``live``)."""
        registry = CollectorRegistry()
        _drift_gauges(registry, self.stack, "live", report)
        self._write("drift-live", registry)

    def canary(self, verdict: Mapping[str, Any]) -> None:
        """The last judged step: its weight, pairs, each check against its limit, the verdict."""
        registry = CollectorRegistry()
        candidate, incumbent = str(verdict.get("candidate")), str(verdict.get("incumbent"))
        Gauge(
            "mlrelease_canary_step",
            "Index of the last canary step judged.",
            ["stack", "candidate", "incumbent"],
            registry=registry,
        ).labels(self.stack, candidate, incumbent).set(verdict.get("step") or 0)
        for name, doc, value in (
            ("mlrelease_canary_weight_percent", "The candidate's weight at that step.", verdict.get("weight")),
            ("mlrelease_canary_pairs", "Shadow pairs the step compared.", verdict.get("pairs")),
            ("mlrelease_canary_verdict", "1 the step passed, 0 it failed.", 1 if verdict.get("passed") else 0),
            ("mlrelease_canary_step_timestamp_seconds", "When the verdict was reached.", verdict.get("ended_at")),
        ):
            gauge = Gauge(name, doc, ["stack", "candidate"], registry=registry)
            if _number(value) is not None:
                gauge.labels(self.stack, candidate).set(float(value))
        labels = ["stack", "candidate", "check"]
        observed = Gauge("mlrelease_canary_check_observed", "Each check's observed value.", labels, registry=registry)
        limit = Gauge("mlrelease_canary_check_threshold", "Each check's limit.", labels, registry=registry)
        passed = Gauge("mlrelease_canary_check_passed", "1 the check passed, 0 it failed.", labels, registry=registry)
        for check in verdict.get("checks") or []:
            name = str(check.get("name"))
            passed.labels(self.stack, candidate, name).set(1 if check.get("passed") else 0)
            if _number(check.get("observed")) is not None:
                observed.labels(self.stack, candidate, name).set(check["observed"])
            if _number(check.get("threshold")) is not None:
                limit.labels(self.stack, candidate, name).set(check["threshold"])
        self._write("canary", registry)
        if not verdict.get("passed"):
            self._count("mlrelease_releases", "rolled_back")

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        """The verified live and previous versions (``_info``), and a promoted release."""
        registry = CollectorRegistry()
        info = Gauge(
            "mlrelease_release_info",
            "The verified live and warm previous versions.",
            ["stack", "role", "version", "sha256"],
            registry=registry,
        )
        for role in ("live", "previous"):
            model = record.get(role) or {}
            if model.get("version"):
                info.labels(self.stack, role, str(model["version"]), str(model.get("sha256", ""))).set(1)
        Gauge(
            "mlrelease_release_verified_timestamp_seconds",
            "When the live version was verified.",
            ["stack"],
            registry=registry,
        ).labels(self.stack).set(_number(record.get("verified_at")) or 0)
        self._write("release", registry)
        if not record.get("restored_from"):
            self._count("mlrelease_releases", "promoted")

    def rollback(self, trigger: str) -> None:
        """A rollback to the verified checkpoint, by what fired it (``watch``, ``drill``, ``operator``)."""
        self._count("mlrelease_rollbacks", trigger)

    def watch(self, phase: str, signals: Iterable[Mapping[str, Any]], checked_at: float) -> None:
        """The watcher's phase and every signal's last value against its limit."""
        registry = CollectorRegistry()
        gauges = {
            key: Gauge(f"mlrelease_watch_signal_{key}", doc, ["stack", "signal"], registry=registry)
            for key, doc in (
                ("value", "The watcher's last observed value of the signal."),
                ("limit", "The signal's threshold."),
                ("breached", "1 when the signal breached its limit."),
                ("samples", "Samples behind the value."),
            )
        }
        for signal in signals:
            name = str(signal.get("signal"))
            if _number(signal.get("observed")) is not None:
                gauges["value"].labels(self.stack, name).set(signal["observed"])
            if _number(signal.get("threshold")) is not None:
                gauges["limit"].labels(self.stack, name).set(signal["threshold"])
            gauges["breached"].labels(self.stack, name).set(1 if signal.get("state") == "breached" else 0)
            gauges["samples"].labels(self.stack, name).set(signal.get("samples") or 0)
        phases = Gauge(
            "mlrelease_watch_phase", "1 for the watcher's current phase.", ["stack", "phase"], registry=registry
        )
        for name in WATCH_PHASES:
            phases.labels(self.stack, name).set(1 if name == phase else 0)
        Gauge(
            "mlrelease_watch_last_check_timestamp_seconds",
            "When the watcher last looked.",
            ["stack"],
            registry=registry,
        ).labels(self.stack).set(checked_at)
        self._write("watch", registry)

    def drill(self, report: Mapping[str, Any]) -> None:
        """The last drill: detection and recovery against the budget."""
        registry = CollectorRegistry()
        fault = str(report.get("fault"))
        for name, doc, value in (
            ("mlrelease_drill_detection_seconds", "Fault start to rollback fired.", report.get("detection_seconds")),
            (
                "mlrelease_drill_recovery_seconds",
                "Fault start to traffic on the verified version.",
                report.get("recovery_seconds"),
            ),
            ("mlrelease_drill_budget_seconds", "The recovery budget.", report.get("budget_seconds")),
            (
                "mlrelease_drill_passed",
                "1 recovered within budget, 0 failed.",
                1 if report.get("outcome") == "recovered" else 0,
            ),
            ("mlrelease_drill_timestamp_seconds", "When the last drill started.", _unix(report.get("started_at"))),
        ):
            gauge = Gauge(name, doc, ["stack", "fault"], registry=registry)
            if _number(value) is not None:
                gauge.labels(self.stack, fault).set(float(value))
        self._write("drill", registry)


def _unix(value: Any) -> float:
    """Unix seconds from a datetime, an ISO string or a number (0 when there is none)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return 0.0
    return _number(value) or 0.0


def _criteria(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every ``Criterion`` (name, observed, threshold) inside a gate's report, depth first."""
    if isinstance(node, Mapping):
        if {"name", "observed", "threshold", "comparator"} <= node.keys():
            yield node
        for value in node.values():
            yield from _criteria(value)
    elif isinstance(node, list):
        for value in node:
            yield from _criteria(value)


def _gate_measures(name: str, gate: Mapping[str, Any]) -> Iterator[tuple[str, float | None, float | None]]:
    """(measure, the decisive number, its limit) for one gate's evidence."""
    report, thresholds, observed = gate.get("report") or {}, gate.get("thresholds") or {}, gate.get("observed") or {}
    if name == "evaluation":
        metric = str(report.get("metric", "metric"))
        tolerance = _number(report.get("tolerance"))
        if _number(observed.get("difference_lower")) is not None or tolerance is not None:
            yield "difference_lower", _number(observed.get("difference_lower")), -tolerance if tolerance else None
        yield metric, _number(observed.get("candidate")), _number(report.get("floor"))
    elif name == "drift":
        yield "max_psi", _number(observed.get("max_psi")), _number(thresholds.get("psi_threshold"))
    else:
        for criterion in _criteria(report):
            value = criterion.get("bound") if criterion.get("uses_bound", True) else criterion.get("observed")
            yield _slug(str(criterion["name"])), _number(value), _number(criterion.get("threshold"))


def _drift_gauges(registry: CollectorRegistry, stack: str, source: str, report: Mapping[str, Any]) -> None:
    labels = ["stack", "feature", "source"]
    psi = Gauge("mlrelease_drift_psi", "PSI of the feature against the reference.", labels, registry=registry)
    p_adj = Gauge(
        "mlrelease_drift_p_value_adjusted",
        "The feature's p-value after multiple-testing correction.",
        labels,
        registry=registry,
    )
    for feature, drift in (report.get("features") or {}).items():
        if _number(drift.get("psi")) is not None:
            psi.labels(stack, feature, source).set(drift["psi"])
        if _number(drift.get("p_adjusted")) is not None:
            p_adj.labels(stack, feature, source).set(drift["p_adjusted"])
    limit = Gauge("mlrelease_drift_psi_threshold", "The PSI limit per feature.", ["stack", "source"], registry=registry)
    if _number(report.get("psi_threshold")) is not None:
        limit.labels(stack, source).set(report["psi_threshold"])
