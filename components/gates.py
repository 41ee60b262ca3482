"""The gate runner: the four promotion gates executed against the real serving runtime, with evidence.

Called from a dynamic provider's ``check``, so it runs on every preview and every up. It imports nothing
from Pulumi, leaves nothing running, and answers in one of two ways: ``GateEvidence`` (a failing gate is a
verdict with ``passed == False`` and ``failures()``, not an exception) or ``GateInputError`` (bad input,
one line naming the problem and the fix). Every gate always runs, so a blocked release shows all of its
problems at once.

Results are cached on disk by a key over everything the verdict depends on (artifact and settings
digests, data digests, thresholds, environment, ``GATE_CODE_VERSION``), so the up that follows a preview
does not pay for the gates twice. Inputs are still checked on a cache hit (a tampered artifact with an
unchanged configured digest must not pass on an old verdict). A cached failing verdict is reused too:
same inputs, same verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from components.gate_evidence import GateEvidence, GateResult
from components.gate_inputs import (
    DriftFiles,
    DriftLog,
    GateInputError,
    GateInputs,
    ModelRef,
    PreparedInputs,
    prepare,
)
from components.gate_serving import (
    LoadMeasurement,
    ServingFailure,
    measure_load,
    score,
    single_row_bodies,
    temporary_servers,
)
from components.spec import DriftGate, EvaluationGate, LatencyGate, MemoryGate
from serving.modelserver import ModelServerHandle
from serving.v2 import OutputSpec
from verification.drift import DatasetDriftReport, FeatureDrift, dataset_drift
from verification.errors import VerificationError
from verification.evaluation import EvaluationReport, evaluate_absolute, evaluate_non_inferiority
from verification.performance import (
    RATIO_QUANTILES,
    LatencyComparisonReport,
    LatencyRatioReport,
    LatencyReport,
    compare_latency,
    latency_gate,
    latency_ratio_gate,
    memory_gate,
    quantile_label,
)
from verification.reports import Report, fmt

# Bump whenever a change here or in verification/ can change a verdict: it invalidates every cache entry.
GATE_CODE_VERSION = "gates-2"
MIB = 1024 * 1024

__all__ = [
    "GATE_CODE_VERSION",
    "DriftFiles",
    "DriftLog",
    "GateEvidence",
    "GateInputError",
    "GateInputs",
    "GateResult",
    "ModelRef",
    "cache_key",
    "run_gates",
]


def run_gates(inputs: GateInputs, *, work_dir: Path, cache_dir: Path) -> GateEvidence:
    """Run (or reuse) all four gates for ``inputs``; temporary servers live under ``work_dir``."""
    started = time.monotonic()
    started_at = datetime.now(UTC)
    prepared = prepare(inputs)
    key = cache_key(inputs, prepared)
    cached = _read_cache(Path(cache_dir), key)
    if cached is not None:
        return cached
    prepare_s = time.monotonic() - started
    gates, durations = _run(inputs, prepared, Path(work_dir))
    evidence = GateEvidence(
        gate_code_version=GATE_CODE_VERSION,
        cache_key=key,
        cached=False,
        passed=all(g.passed for g in gates.values()),
        environment=inputs.environment,
        started_at=started_at,
        candidate=prepared.candidate,
        incumbent=prepared.incumbent,
        data=prepared.data,
        gates=gates,
        durations_s={"prepare": prepare_s, **durations, "total": time.monotonic() - started},
    )
    _write_cache(Path(cache_dir), evidence)
    return evidence


def cache_key(inputs: GateInputs, prepared: PreparedInputs) -> str:
    """sha256 over everything a verdict depends on (window bounds excluded: the rows' digests count)."""
    data = prepared.data
    material = {
        "code": GATE_CODE_VERSION,
        "environment": inputs.environment,
        "candidate": prepared.candidate.model_dump(mode="json", exclude={"model_dir", "source"}),
        "incumbent": prepared.incumbent.model_dump(mode="json", exclude={"model_dir", "source"})
        if prepared.incumbent
        else None,
        "holdout_sha256": data.holdout_sha256,
        "label": data.label,
        "schema_sha256": data.schema_sha256,
        "drift_reference_sha256": data.drift_reference.sha256,
        "drift_current_sha256": data.drift_current.sha256,
        "gates": inputs.gates.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _read_cache(cache_dir: Path, key: str) -> GateEvidence | None:
    path = cache_dir / f"{key}.json"
    try:
        evidence = GateEvidence.model_validate_json(path.read_bytes())
    except (FileNotFoundError, ValidationError):
        return None  # absent, or written by an incompatible version: compute afresh
    return evidence.model_copy(update={"cached": True})


def _write_cache(cache_dir: Path, evidence: GateEvidence) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{evidence.cache_key}.{os.getpid()}.tmp"
    tmp.write_text(evidence.model_dump_json(indent=2))
    os.replace(tmp, cache_dir / f"{evidence.cache_key}.json")


def _run(inputs: GateInputs, prepared: PreparedInputs, work_dir: Path) -> tuple[dict, dict[str, float]]:
    """Drift first (no servers), then serve: score on both, then load both interleaved (the candidate's memory)."""
    spec = inputs.gates
    drift = _drift_gate(spec.drift, prepared)
    models = {"candidate": inputs.candidate}
    if inputs.incumbent is not None:
        models["incumbent"] = inputs.incumbent
    t0 = time.monotonic()
    with temporary_servers(models, work_dir) as servers:
        t1 = time.monotonic()
        incumbent_scores, scored, retries = _score_holdout(servers, prepared)
        t2 = time.monotonic()

        def bodies(output: OutputSpec) -> list[bytes]:
            return single_row_bodies(prepared.holdout, spec.latency.requests, prepared.schema.input.name, output)

        load = measure_load(
            servers["candidate"],
            bodies(prepared.candidate.output),
            rate=spec.latency.rate_rps,
            warmup=spec.latency.warmup_requests,
            requests=spec.latency.requests,
            incumbent=(servers["incumbent"], bodies(prepared.incumbent.output)) if prepared.incumbent else None,
        )
        t3 = time.monotonic()
    t4 = time.monotonic()
    gates = {
        "evaluation": _evaluation_gate(spec.evaluation, prepared, scored, incumbent_scores, retries, t2 - t1),
        "latency": _latency_gate(spec.latency, load, t3 - t2),
        "memory": _memory_gate(spec.memory, load, t3 - t2),
        "drift": drift,
    }
    return gates, {"servers_start": t1 - t0, "scoring": t2 - t1, "load": t3 - t2, "servers_stop": t4 - t3}


def _score_holdout(
    servers: dict[str, ModelServerHandle], prepared: PreparedInputs
) -> tuple[np.ndarray | None, np.ndarray | ServingFailure, int]:
    """Held-out scores of the incumbent and the candidate (the incumbent stays up for the latency run).

    An incumbent that cannot score is an input problem (the live version is broken); a candidate that
    cannot is a failed evaluation gate.
    """
    input_name = prepared.schema.input.name
    incumbent_scores = None
    if prepared.incumbent is not None:
        try:
            output = prepared.incumbent.output
            incumbent_scores, _ = score(servers["incumbent"], prepared.holdout, input_name=input_name, output=output)
        except ServingFailure as exc:
            raise GateInputError(f"the incumbent could not score the held-out set: {exc}") from None
    try:
        candidate_scores, retries = score(
            servers["candidate"], prepared.holdout, input_name=input_name, output=prepared.candidate.output
        )
    except ServingFailure as exc:
        return incumbent_scores, exc, 0
    return incumbent_scores, candidate_scores, retries


def _result(
    gate: str, report: Report, summary: str, thresholds: dict, sizes: dict, observed: dict, duration: float
) -> GateResult:
    return GateResult(
        gate=gate,  # type: ignore[arg-type]
        passed=report.passed,
        summary=summary,
        explanation=report.explanation,
        report=report.model_dump(mode="json"),
        thresholds=thresholds,
        sample_sizes=sizes,
        observed=observed,
        duration_s=duration,
    )


# ------------------------------------------------------------------------------------------ evaluation


def _evaluation_gate(
    spec: EvaluationGate,
    prepared: PreparedInputs,
    scored: np.ndarray | ServingFailure,
    incumbent_scores: np.ndarray | None,
    retries: int,
    scoring_s: float,
) -> GateResult:
    started = time.monotonic()
    labels = prepared.labels
    thresholds = spec.model_dump(mode="json")
    sizes = {"rows": int(labels.shape[0]), "positives": int(labels.sum()), "retried_batches": retries}

    def unusable(check: str, problem: str) -> GateResult:
        report = Report(check=check, passed=False, explanation=f"evaluation: {problem} -> FAIL.")
        return _result("evaluation", report, problem, thresholds, sizes, {}, scoring_s + time.monotonic() - started)

    if isinstance(scored, ServingFailure):
        return unusable("evaluation.serving", f"the candidate could not score the held-out set: {scored}")
    options = {"metric": spec.metric, "floor": spec.floor, "n_boot": spec.n_boot, "confidence": spec.confidence}
    try:
        if incumbent_scores is None:
            report = evaluate_absolute(labels, scored, **options)
        else:
            report = evaluate_non_inferiority(labels, incumbent_scores, scored, tolerance=spec.tolerance, **options)
    except VerificationError as exc:  # the labels were checked: what is unusable is the served scores
        return unusable("evaluation.scores", f"the candidate's served scores are unusable: {exc}")
    interval = report.difference_interval
    observed = {
        "candidate": report.candidate,
        "incumbent": report.incumbent,
        "difference": report.difference,
        "difference_lower": interval[0] if interval else None,
        "difference_upper": interval[1] if interval else None,
    }
    return _result(
        "evaluation",
        report,
        _evaluation_summary(report),
        thresholds,
        sizes,
        observed,
        scoring_s + time.monotonic() - started,
    )


def _evaluation_summary(r: EvaluationReport) -> str:
    """The decisive comparisons (only the failing ones when the gate failed)."""
    on = f"on {r.n_rows} rows"
    if not r.enough_data:
        return f"too few rows of the rarer class {on}: about {r.rows_needed} rows are needed"
    higher = r.higher_is_better
    checks: list[tuple[bool, str]] = []
    if r.non_inferior is not None and r.difference_interval is not None and r.tolerance is not None:
        end, bound, limit = (
            ("lower", r.difference_interval[0], -r.tolerance)
            if higher
            else ("upper", r.difference_interval[1], r.tolerance)
        )
        checks.append(
            (
                r.non_inferior,
                (
                    f"{r.metric} candidate - incumbent {end} bound {fmt(bound)} {_side(r.non_inferior, higher)}"
                    f" {fmt(limit)} (tolerance){_by(r.non_inferior, bound - limit)} {on}"
                    f" (candidate {fmt(r.candidate)}, incumbent {fmt(r.incumbent)})"
                ),
            )
        )
    if r.floor is not None:
        checks.append(
            (
                r.above_floor,
                (
                    f"{r.metric} {fmt(r.candidate)} {_side(r.above_floor, higher)} floor {fmt(r.floor)}"
                    f"{_by(r.above_floor, r.candidate - r.floor)} {on}"
                ),
            )
        )
    shown = [text for ok, text in checks if not ok] or [text for _, text in checks]
    return "; ".join(shown)


def _side(ok: bool, higher_is_better: bool) -> str:
    return {(True, True): ">=", (True, False): "<=", (False, True): "<", (False, False): ">"}[(ok, higher_is_better)]


def _by(ok: bool, gap: float) -> str:
    return "" if ok else f" (by {fmt(abs(gap))})"


# ------------------------------------------------------------------------------------ latency, memory


def _latency_gate(spec: LatencyGate, load: LoadMeasurement, duration: float) -> GateResult:
    """The candidate's absolute thresholds; with an incumbent, also the ratio of the two from the same run."""
    thresholds = spec.model_dump(mode="json")
    run = load.candidate
    sizes = {
        "requests": spec.requests,
        "succeeded": len(run.latencies_ms),
        "errors": run.errors,
        "warmup_requests": spec.warmup_requests,
    }
    pairs = load.pairs_ms()
    if load.incumbent is not None:
        sizes |= {
            "incumbent_succeeded": len(load.incumbent.latencies_ms),
            "incumbent_errors": load.incumbent.errors,
            "pairs": len(pairs[0]),
        }
    if not run.latencies_ms:
        report = Report(
            check="performance.latency",
            passed=False,
            explanation=f"latency gate: none of {spec.requests} requests succeeded ({run.first_error}) -> FAIL.",
        )
        return _result(
            "latency",
            report,
            f"none of {spec.requests} requests succeeded: {run.first_error}",
            thresholds,
            sizes,
            {},
            duration,
        )
    options = {"p99_max_ms": spec.p99_ms, "p50_max_ms": spec.p50_ms, "confidence": spec.confidence}
    candidate = latency_gate(run.latencies_ms, **options)
    observed: dict[str, float | None] = {"offered_rps": run.offered_rps, "run_s": run.duration_s}
    observed |= _quantile_figures("", candidate)
    if load.incumbent is None:
        first = " No incumbent to compare with (first release): absolute thresholds only."
        report: Report = candidate.model_copy(update={"explanation": candidate.explanation + first})
        summary = _latency_summary(candidate) + "; no incumbent to compare with (first release)"
        observed |= {f"incumbent_{key}": None for key in _quantile_figures("", candidate)}
        observed |= {f"{quantile_label(q)}_ratio{end}": None for q in RATIO_QUANTILES for end in ("", "_upper")}
    else:
        if not load.incumbent.latencies_ms:
            raise GateInputError(
                f"the incumbent answered none of {spec.requests} latency requests ({load.incumbent.first_error}):"
                " the live version must serve before a candidate can be compared with it"
            )
        incumbent = latency_gate(load.incumbent.latencies_ms, **options)
        ratio = latency_ratio_gate(*pairs, max_ratio=spec.max_ratio, confidence=spec.confidence)
        report = compare_latency(candidate, incumbent, ratio)
        summary = _compared_summary(report)
        observed |= {"incumbent_offered_rps": load.incumbent.offered_rps}
        observed |= _quantile_figures("incumbent_", incumbent)
        for label, q in ratio.ratios.items():
            observed[f"{label}_ratio"] = q.estimate
            observed[f"{label}_ratio_upper"] = q.upper
    failures = [
        f"{timed.errors} of {spec.requests} requests to the {role} failed and are not timed"
        f" (first: {timed.first_error})"
        for role, timed in (("candidate", run), ("incumbent", load.incumbent))
        if timed is not None and timed.errors
    ]
    if failures:
        note = " " + "; ".join(failures) + "; error rates are judged in the canary."
        report = report.model_copy(update={"explanation": report.explanation + note})
    return _result("latency", report, summary, thresholds, sizes, observed, duration)


def _quantile_figures(prefix: str, r: LatencyReport) -> dict[str, float | None]:
    figures: dict[str, float | None] = {}
    for label, q in r.quantiles.items():
        figures[f"{prefix}{label}_ms"] = q.estimate
        figures[f"{prefix}{label}_upper_ms"] = q.upper
    return figures


def _latency_summary(r: LatencyReport) -> str:
    limits = {c.name.split()[0]: c for c in r.criteria}
    failing = [c for c in r.criteria if not c.passed]
    lines = []
    for label, criterion in limits.items():
        if failing and criterion.passed:
            continue
        q = r.quantiles[label]
        if q.upper is None:
            lines.append(f"{label}: {r.n} requests give no {r.confidence:.0%} upper bound (need >= {q.n_required})")
            continue
        gap = q.upper - criterion.threshold
        side, by = (">", f" (by {gap:.1f} ms)") if gap > 0 else ("<=", "")
        lines.append(f"{label} upper bound {q.upper:.1f} ms {side} threshold {criterion.threshold:g} ms{by}")
    return ", ".join(lines) + f" on {r.n} requests"


def _compared_summary(r: LatencyComparisonReport) -> str:
    """What failed (the candidate's thresholds with the incumbent's figures beside them, the ratios); all if passed."""
    parts = []
    if r.passed or not r.candidate.passed:
        parts.append(_latency_summary(r.candidate) + _incumbent_context(r))
    if r.passed or not r.ratio.passed:
        parts.append(_ratio_summary(r.ratio))
    return "; ".join(parts)


def _incumbent_context(r: LatencyComparisonReport) -> str:
    """The incumbent's figure for each threshold the candidate misses, and what it means when it misses too."""
    incumbent = {c.name.split()[0]: c for c in r.incumbent.criteria}
    notes = []
    for criterion in r.candidate.criteria:
        label = criterion.name.split()[0]
        theirs = incumbent[label]
        if criterion.passed or theirs.bound is None:
            continue
        where = "also over" if not theirs.passed else "within it"
        notes.append(f"the incumbent's {label} upper bound in the same run is {theirs.bound:.1f} ms, {where}")
    if not notes:
        return ""
    text = "; " + ", ".join(notes)
    over = r.incumbent_also_over
    if over:
        which = "the threshold" if len(over) == 1 else f"the {' and '.join(over)} thresholds"
        if r.ratio.passed:
            bounds = ", ".join(f"{label} ratio upper bound {r.ratio.ratios[label].upper:.2f}" for label in over)
            verdict = f"no slower than the incumbent ({bounds} <= {r.ratio.max_ratio:g})"
        elif all(c.bound is not None for c in r.ratio.criteria if not c.passed):
            verdict = "slower than the incumbent as well"
        else:
            verdict = "not shown to be as fast as the incumbent (too few pairs for a ratio bound)"
        text += f": this runner is too slow for {which}, and the candidate is {verdict}"
    return text


def _ratio_summary(r: LatencyRatioReport) -> str:
    """Each ratio shown (the failing ones when it failed): bound against the limit, by how much, both figures."""
    shown = [c for c in r.criteria if not c.passed] or r.criteria
    parts = []
    for criterion in shown:
        label = criterion.name.split()[0]
        q = r.ratios[label]
        if q.upper is None or q.candidate is None or q.incumbent is None:
            parts.append(f"{label} ratio: too few pairs for a {r.confidence:.0%} bound (need >= {q.n_required})")
            continue
        gap = q.upper - r.max_ratio
        side, by = (">", f" (by {gap:.2f})") if gap > 0 else ("<=", "")
        parts.append(
            f"{label} ratio candidate/incumbent upper bound {q.upper:.2f} {side} max ratio {r.max_ratio:g}{by}"
            f" (candidate {label} {q.candidate:.1f} ms, incumbent {label} {q.incumbent:.1f} ms)"
        )
    return ", ".join(parts) + f" on {r.n_pairs} interleaved request pairs"


def _memory_gate(spec: MemoryGate, load: LoadMeasurement, duration: float) -> GateResult:
    report = memory_gate(load.peak_rss, load.steady_rss, max_bytes=int(spec.max_mb * MIB))
    parts = []
    for criterion in report.criteria:
        if report.passed or not criterion.passed:
            name = criterion.name.split(" (")[0]
            gap = (criterion.observed or 0.0) - criterion.threshold
            side, by = (">", f" (by {gap:.1f} MiB)") if gap > 0 else ("<=", "")
            parts.append(f"{name} {criterion.observed:.1f} MiB {side} threshold {criterion.threshold:g} MiB{by}")
    summary = ", ".join(parts) + f" ({load.rss_samples} samples of the serving process tree)"
    observed = {"peak_mb": load.peak_rss / MIB, "steady_mb": load.steady_rss / MIB}
    return _result(
        "memory", report, summary, spec.model_dump(mode="json"), {"rss_samples": load.rss_samples}, observed, duration
    )


# --------------------------------------------------------------------------------------------- drift


def _drift_gate(spec: DriftGate, prepared: PreparedInputs) -> GateResult:
    started = time.monotonic()
    reference, current = prepared.drift_reference, prepared.drift_current
    try:
        report = dataset_drift(
            reference,
            current,
            correction=spec.correction,
            alpha=spec.alpha,
            psi_threshold=spec.psi_threshold,
            categorical=prepared.schema.categorical,
        )
    except VerificationError as exc:
        raise GateInputError(f"drift windows cannot be compared: {exc}") from None
    sizes = {
        "reference_rows": len(reference),
        "current_rows": len(current),
        "features": report.n_features,
        "tests": report.n_tests,
    }
    psis = [f.psi for f in report.features.values() if f.psi is not None]
    observed = {"max_psi": max(psis) if psis else None}
    return _result(
        "drift",
        report,
        _drift_summary(report, len(reference), len(current)),
        spec.model_dump(mode="json"),
        sizes,
        observed,
        time.monotonic() - started,
    )


def _drift_summary(r: DatasetDriftReport, n_ref: int, n_cur: int) -> str:
    on = f"on {n_ref} reference / {n_cur} current rows"
    if r.passed:
        worst = max(r.features.values(), key=lambda f: f.psi if f.psi is not None else -1.0)
        largest = f"largest PSI {fmt(worst.psi)} on {worst.feature}, threshold {fmt(r.psi_threshold)}"
        return f"no feature drifted ({largest}) {on}"
    drifted = [r.features[name] for name in r.drifted_features]
    listed = ", ".join(f"{f.feature} ({_drift_reason(f, r.psi_threshold)})" for f in drifted[:5])
    more = f" and {len(drifted) - 5} more" if len(drifted) > 5 else ""
    return f"{len(drifted)} of {r.n_features} features drifted: {listed}{more} {on}"


def _drift_reason(f: FeatureDrift, psi_threshold: float) -> str:
    if f.psi is not None and f.psi > psi_threshold:
        return f"PSI {fmt(f.psi)} > {fmt(psi_threshold)}, adj. p {fmt(f.p_adjusted)}"
    before = f.missing_reference / max(f.n_reference, 1)
    after = f.missing_current / max(f.n_current, 1)
    return f"missing rate {before:.1%} -> {after:.1%}, adj. p {fmt(f.missing_p_adjusted)}"
