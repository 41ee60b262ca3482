"""One canary step: move weight, bake, compare both versions on the same inputs, judge, or revert.

A step is what a canary-step resource's create/update runs. It sets the split (candidate ``weight`` %,
the incumbent the rest), then reads the router's shadow pairs as they arrive and feeds them to a
sequential comparison, so a candidate that clearly decides differently fails after as few pairs as the
evidence allows instead of after a fixed horizon. A step can only pass when it has baked at least
``bake_seconds``, has ``min_pairs`` aligned prediction pairs (and as many as the fixed-horizon prediction
comparison needs to bound its p99 score difference), the sequential test says "pass", and the judge
finds the candidate's error rate (two-proportion non-inferiority: sparse counts cannot pass) and latency
(Kayenta's Mann-Whitney on paired latencies) no worse than the incumbent's. Too few pairs by
``max_bake_seconds`` fails: missing telemetry never counts as healthy. The candidate's server dying or
restarting during the step fails it too (``availability``), even when its supervisor brings it back.

A failing step moves all traffic back to the incumbent in one call before it returns; the verdict says
which check failed, what was observed against which threshold and by how much, on how many pairs, and
how many pairs the decision took. Nothing here imports Pulumi: providers call ``run_step`` and turn a
failed verdict's ``explanation`` into the update's error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.spec import CanarySpec
from components.targets.base import ProcessInfo, Routes, ShadowPair, Target, TargetError
from verification.comparison import (
    ComparisonReport,
    SequentialComparison,
    SequentialDecision,
    compare_predictions,
)
from verification.judge import MannWhitneyResult, TwoProportionResult, mann_whitney, score, two_proportion
from verification.reports import fmt

POLL_SECONDS = 0.2
AVAILABILITY_EVERY_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 2.0
PAIRS_PER_READ = 2000
JUDGE_EVERY_SECONDS = 2.0

CheckName = Literal[
    "traffic", "availability", "disagreement", "prediction_comparison", "error_rate", "latency", "target"
]


class CheckResult(BaseModel):
    """One check of a step: what was observed against which threshold, by how much, on how many pairs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: CheckName
    passed: bool
    observed: float | None
    bound: float | None = None
    threshold: float | None
    excess: float | None = None
    pairs: int
    explanation: str


class StepVerdict(BaseModel):
    """The outcome of one canary step, kept as evidence in stack state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int
    weight: float
    candidate: str
    incumbent: str
    passed: bool
    failed_check: CheckName | None
    pairs: int
    decision_pairs: int
    bake_seconds: float
    switch_ms: float
    reverted: bool
    routes: Routes | None
    checks: list[CheckResult]
    evidence: dict[str, Any]
    explanation: str
    started_at: float = Field(description="wall clock (unix s) when the step set its weights")
    ended_at: float = Field(description="wall clock (unix s) when the verdict was reached (and a revert done)")


@dataclass
class _Collected:
    """What the step's pairs showed so far, per side of the comparison."""

    incumbent_scores: list[float] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)
    incumbent_latency_ms: list[float] = field(default_factory=list)
    candidate_latency_ms: list[float] = field(default_factory=list)
    shadow_attempts: dict[str, int] = field(default_factory=lambda: {"incumbent": 0, "candidate": 0})
    shadow_errors: dict[str, int] = field(default_factory=lambda: {"incumbent": 0, "candidate": 0})

    @property
    def n(self) -> int:
        return len(self.candidate_scores)

    def add(self, pairs: list[ShadowPair], incumbent: str, candidate: str, cap: int) -> tuple[list, list]:
        """Record pairs of this couple; return the new aligned (incumbent, candidate) scores, up to ``cap``."""
        start = self.n
        for pair in pairs:
            if (pair.incumbent, pair.candidate) != (incumbent, candidate):
                continue
            shadow = "candidate" if pair.primary == "incumbent" else "incumbent"
            self.shadow_attempts[shadow] += 1
            if getattr(pair, f"{shadow}_status") != 200:
                self.shadow_errors[shadow] += 1
            inc, cand = pair.incumbent_output, pair.candidate_output
            if inc is None or cand is None or len(inc) != len(cand) or self.n >= cap:
                continue
            room = cap - self.n
            self.incumbent_scores += inc[:room]
            self.candidate_scores += cand[:room]
            self.incumbent_latency_ms.append(pair.incumbent_latency_ms)
            self.candidate_latency_ms.append(pair.candidate_latency_ms)
        return self.incumbent_scores[start:], self.candidate_scores[start:]


def _routes(incumbent: str, candidate: str, weight: float) -> Routes:
    return Routes(weights={incumbent: 100 - weight, candidate: weight}, primary=incumbent)


def first_release(target: Target, version: str) -> Routes:
    """No incumbent: all traffic to ``version`` at once, no comparison (the absolute gates ran at preview)."""
    return target.set_routes(Routes(weights={version: 100}, primary=version))


def promote(target: Target, candidate: str, incumbent: str) -> Routes:
    """Final state of a release: all traffic on the candidate, which becomes the primary.

    The incumbent stays deployed at weight 0 and now receives the shadow copies, so switching back is
    instant and post-promotion divergence stays measurable until the rollback window ends.
    """
    return target.set_routes(Routes(weights={candidate: 100, incumbent: 0}, primary=candidate))


def revert(target: Target, candidate: str, incumbent: str) -> Routes:
    """All traffic back on the incumbent in one call (the candidate stays deployed, at weight 0)."""
    return target.set_routes(_routes(incumbent, candidate, 0))


def run_step(
    target: Target,
    *,
    step: int,
    weight: float,
    candidate: str,
    incumbent: str,
    spec: CanarySpec,
    progress: Callable[[str], None] | None = None,
) -> StepVerdict:
    """Set the split, bake, decide; on failure all traffic is back on the incumbent before this returns."""
    if candidate == incumbent:
        raise ValueError(f"candidate and incumbent are both {candidate!r}: use first_release")
    if not 0 < weight <= 100:
        raise ValueError(f"weight must be in (0, 100], got {weight}")
    say = progress or (lambda _message: None)
    bake = _Bake(
        target,
        spec,
        incumbent,
        candidate,
        weight,
        f"step {step} ({weight:g}% to {candidate}, {100 - weight:g}% on {incumbent})",
        say,
    )
    clock = time.perf_counter()
    target.set_routes(bake.routes, lease_s=spec.lease_seconds)
    switch_ms = (time.perf_counter() - clock) * 1000
    bake.started = time.time()
    say(f"{bake.head}: weights set in {switch_ms:.1f} ms; baking")
    try:
        checks, decision_pairs = bake.run()
    except TargetError as exc:
        checks, decision_pairs = [_target_check(exc, bake.collected.n)], bake.collected.n
    elapsed = time.time() - bake.started
    failed = next((c for c in checks if not c.passed), None)
    pairs = bake.collected.n
    if failed is None:
        routes, reverted = target.routes(), False
        summary = "; ".join(f"{c.name} {fmt(c.observed)} (limit {fmt(c.threshold)})" for c in checks)
        explanation = f"canary {bake.head} passed after {elapsed:.1f}s on {pairs} pairs: {summary}."
    else:
        try:
            routes, reverted = revert(target, candidate, incumbent), True
            revert_note = f"all traffic is back on {incumbent} (100%)"
        except TargetError as exc:
            routes, reverted = None, False
            revert_note = f"REVERTING TRAFFIC TO {incumbent} FAILED: {exc}"
        explanation = (
            f"canary {bake.head} failed on {failed.name} after {elapsed:.1f}s: {failed.explanation} "
            f"The decision took {decision_pairs} pairs ({pairs} collected); {revert_note}."
        )
    say(explanation)
    return StepVerdict(
        step=step,
        weight=weight,
        candidate=candidate,
        incumbent=incumbent,
        passed=failed is None,
        failed_check=failed.name if failed else None,
        pairs=pairs,
        decision_pairs=decision_pairs,
        bake_seconds=elapsed,
        switch_ms=switch_ms,
        reverted=reverted,
        routes=routes,
        checks=checks,
        evidence=bake.evidence,
        explanation=explanation,
        started_at=bake.started - switch_ms / 1000,
        ended_at=time.time(),
    )


class _Bake:
    """The loop of one step: read pairs, update the comparison, judge when it may, until a verdict."""

    def __init__(
        self,
        target: Target,
        spec: CanarySpec,
        incumbent: str,
        candidate: str,
        weight: float,
        head: str,
        say: Callable[[str], None],
    ) -> None:
        self.target, self.spec, self.incumbent, self.candidate = target, spec, incumbent, candidate
        self.head, self.say = head, say
        self.routes = _routes(incumbent, candidate, weight)
        self.started = time.time()
        self.server = self._candidate_server()
        self.collected = _Collected()
        self.evidence: dict[str, Any] = {}
        cmp = spec.comparison
        self.sequential = SequentialComparison(
            max_disagreement=cmp.max_disagreement,
            threshold=cmp.decision_threshold,
            alpha=1 - cmp.confidence,
            beta=1 - cmp.confidence,
            max_pairs=spec.max_pairs,
        )

    def run(self) -> tuple[list[CheckResult], int]:
        """The step's checks (the last one failing, or all passing) and the pairs the decision took.

        Order: a sequential "fail" stops at once; after "pass", at least ``bake_seconds`` and enough pairs,
        the fixed-horizon comparison runs once; then the judge runs every ``JUDGE_EVERY_SECONDS`` until
        it passes, fails conclusively, or the deadline turns "not enough evidence yet" into a failure.
        """
        spec, collected = self.spec, self.collected
        decision: SequentialDecision | None = None
        compared: CheckResult | None = None
        judged: list[CheckResult] = []
        needed = spec.min_pairs
        deadline = max(spec.bake_seconds, spec.max_bake_seconds)
        cursor = None
        last_said = last_judged = last_seen = 0.0
        while True:
            if time.monotonic() - last_seen >= AVAILABILITY_EVERY_SECONDS:
                last_seen = time.monotonic()
                down = self._availability()
                if down is not None:
                    return [down], collected.n
            page = self.target.pairs(cursor, since_ts=self.started, limit=PAIRS_PER_READ)
            cursor = page.cursor
            inc, cand = collected.add(page.pairs, self.incumbent, self.candidate, spec.max_pairs)
            if inc:
                decision = self.sequential.update(inc, cand)
                self.evidence["sequential"] = decision.model_dump(mode="json")
            elapsed = time.time() - self.started
            if decision is not None and decision.decision == "fail":
                return [_disagreement_check(decision)], decision.pairs
            ready = decision is not None and decision.decision == "pass" and elapsed >= spec.bake_seconds
            if ready and compared is None and collected.n >= needed:
                report = self._compare()
                if report.passed or report.n_pairs >= min(report.pairs_needed, spec.max_pairs):
                    self.evidence["comparison"] = report.model_dump(mode="json")
                    compared = _comparison_check(report)
                    if not compared.passed:
                        return [_disagreement_check(decision), compared], collected.n
                else:
                    needed = min(report.pairs_needed, spec.max_pairs)  # bake on until p99 can be bounded
            if ready and compared is not None and time.monotonic() - last_judged >= JUDGE_EVERY_SECONDS:
                last_judged = time.monotonic()
                judged, conclusive = self._judge()
                if conclusive or all(c.passed for c in judged):
                    return [_disagreement_check(decision), compared, *judged], collected.n
            if elapsed >= spec.max_bake_seconds and collected.n < spec.min_pairs:
                return [_traffic_check(collected.n, elapsed, spec.min_pairs)], collected.n
            if elapsed >= deadline:
                if judged:  # the judge still lacks evidence: inconclusive never passes
                    return [_disagreement_check(decision), compared, *judged], collected.n
                return [_undecided_check(decision, collected.n, needed, elapsed)], collected.n
            if time.monotonic() - last_said >= PROGRESS_EVERY_SECONDS:
                last_said = time.monotonic()
                flips = decision.disagreements if decision else 0
                self.say(f"{self.head}: {collected.n}/{needed} pairs, {flips} disagreements, {elapsed:.1f}s")
            if len(page.pairs) < PAIRS_PER_READ:
                time.sleep(POLL_SECONDS)

    def _candidate_server(self) -> ProcessInfo | None:
        state = self.target.deployment(self.candidate)
        return state.process if state is not None else None

    def _availability(self) -> CheckResult | None:
        """A failing check if the candidate's server died, restarted or went away since the step started.

        A crash mid-step is a failure of the candidate even when its supervisor brings it back: the router
        hid it from clients by falling back to the incumbent, so the step's pairs no longer describe it.
        Telemetry is read too (it raises TargetError when it is gone), so a step halts within a second of
        losing it instead of when it first needs it; and the split's lease is renewed (a step that stops
        renewing it, because its process died, has its traffic put back on the incumbent by the target).
        """
        self.target.set_routes(self.routes, lease_s=self.spec.lease_seconds)
        self.target.telemetry(self.candidate, self.started)
        before, now = self.server, self._candidate_server()
        if now is None:
            problem = "is no longer deployed"
        elif now.state in ("dead", "stopped", "absent", "restarting"):
            problem = f"is {now.state} (pid {now.pid}, {now.restarts} restarts)"
        elif before is not None and (now.restarts > before.restarts or (before.pid and now.pid != before.pid)):
            problem = (
                f"restarted during the step (pid {before.pid} -> {now.pid},"
                f" restarts {before.restarts} -> {now.restarts})"
            )
        else:
            return None
        return CheckResult(
            name="availability",
            passed=False,
            observed=None,
            threshold=None,
            pairs=self.collected.n,
            explanation=f"the candidate {self.candidate}'s model server {problem}: a crash fails the step.",
        )

    def _compare(self) -> ComparisonReport:
        cmp = self.spec.comparison
        return compare_predictions(
            self.collected.incumbent_scores,
            self.collected.candidate_scores,
            threshold=cmp.decision_threshold,
            max_disagreement=cmp.max_disagreement,
            max_abs_diff_p99=cmp.max_abs_diff_p99,
            max_bias=cmp.max_bias,
            confidence=cmp.confidence,
        )

    def _judge(self) -> tuple[list[CheckResult], bool]:
        """Error rate (client calls from telemetry plus shadow calls from pairs) and paired latency.

        Returns the two checks and whether a failure is conclusive (more data would not turn it).
        """
        judge, collected = self.spec.judge, self.collected
        end = time.time()
        counts = {}
        for side, version in (("incumbent", self.incumbent), ("candidate", self.candidate)):
            stats = self.target.telemetry(version, self.started, end)
            self.evidence[f"telemetry_{side}"] = stats.model_dump(mode="json")
            counts[side] = (
                (stats.errors or 0) + collected.shadow_errors[side],
                (stats.requests or 0) + collected.shadow_attempts[side],
            )
        errors = two_proportion(
            *counts["incumbent"],
            *counts["candidate"],
            max_increase=judge.max_error_rate_increase,
            confidence=judge.confidence,
            metric="error_rate",
        )
        latency = mann_whitney(
            collected.incumbent_latency_ms,
            collected.candidate_latency_ms,
            direction="increase",
            allowed_increase=judge.latency_allowed_increase,
            confidence=judge.confidence,
            tolerance=judge.tolerance,
            metric="latency_ms",
        )
        verdict = score([errors, latency], critical=["error_rate", "latency_ms"])
        self.evidence.update(
            error_rate=errors.model_dump(mode="json"),
            latency=latency.model_dump(mode="json"),
            score=verdict.model_dump(mode="json"),
        )
        errors_high = errors.classification == "High" and errors.conclusive
        conclusive = errors_high or latency.classification == "High"
        checks = [_error_check(errors, counts, collected.n), _latency_check(latency, judge.latency_allowed_increase)]
        if latency.classification == "High" and not errors_high:
            checks.reverse()  # the verdict names the check that decided it, not one still short of evidence
        return checks, conclusive


def _target_check(exc: TargetError, pairs: int) -> CheckResult:
    return CheckResult(
        name="target",
        passed=False,
        observed=None,
        threshold=None,
        pairs=pairs,
        explanation=f"the target failed during the step: {exc} — a step that cannot be judged fails.",
    )


def _traffic_check(pairs: int, elapsed: float, min_pairs: int) -> CheckResult:
    return CheckResult(
        name="traffic",
        passed=False,
        observed=pairs,
        threshold=min_pairs,
        excess=pairs - min_pairs,
        pairs=pairs,
        explanation=(
            f"only {pairs} pairs in {elapsed:.0f} s, need {min_pairs}: no traffic reached the canary — "
            "missing telemetry never counts as healthy."
        ),
    )


def _undecided_check(decision: SequentialDecision | None, pairs: int, needed: int, elapsed: float) -> CheckResult:
    state = decision.explanation if decision else "no pairs"
    return CheckResult(
        name="disagreement",
        passed=False,
        observed=decision.rate if decision else None,
        threshold=decision.tolerance if decision else None,
        pairs=pairs,
        explanation=(
            f"no decision by the deadline ({elapsed:.0f} s, {pairs} pairs, {needed} needed); an inconclusive "
            f"comparison never passes. Last look: {state}"
        ),
    )


def _disagreement_check(decision: SequentialDecision) -> CheckResult:
    passed = decision.decision == "pass"
    excess = decision.rate - decision.tolerance
    return CheckResult(
        name="disagreement",
        passed=passed,
        observed=decision.rate,
        threshold=decision.tolerance,
        excess=None if passed else excess,
        pairs=decision.pairs,
        explanation=(
            f"disagreement rate {fmt(decision.rate)} ({decision.disagreements} of {decision.pairs} pairs) "
            + (
                f"within the tolerance {fmt(decision.tolerance)}"
                if passed
                else f"exceeds the tolerance {fmt(decision.tolerance)} by {fmt(excess)}"
            )
            + f"; the sequential test decided after {decision.pairs} pairs ({decision.looks} looks). "
            + decision.explanation
        ),
    )


def _comparison_check(report: ComparisonReport) -> CheckResult:
    failing = next((c for c in report.criteria if not c.passed), None)
    shown = failing or report.criteria[0]
    decisive = shown.bound if shown.uses_bound and shown.bound is not None else shown.observed
    return CheckResult(
        name="prediction_comparison",
        passed=report.passed,
        observed=shown.observed,
        bound=shown.bound,
        threshold=shown.threshold,
        excess=None if failing is None or decisive is None else decisive - shown.threshold,
        pairs=report.n_pairs,
        explanation=f"{shown.sentence()} on {report.n_pairs} pairs. {report.explanation}",
    )


def _error_check(errors: TwoProportionResult, counts: dict[str, tuple[int, int]], pairs: int) -> CheckResult:
    (cand_errors, cand_total), (inc_errors, inc_total) = counts["candidate"], counts["incumbent"]
    excess = None if errors.passed or errors.ci_upper is None else errors.ci_upper - errors.max_increase
    return CheckResult(
        name="error_rate",
        passed=errors.passed,
        observed=errors.difference,
        bound=errors.ci_upper,
        threshold=errors.max_increase,
        excess=excess,
        pairs=pairs,
        explanation=(
            f"error rate {fmt(errors.canary_rate)} ({cand_errors}/{cand_total} calls) vs incumbent "
            f"{fmt(errors.baseline_rate)} ({inc_errors}/{inc_total}): increase {fmt(errors.difference)}, upper"
            f" bound {fmt(errors.ci_upper)} vs allowed {fmt(errors.max_increase)}"
            + ("" if excess is None else f", over by {fmt(excess)}")
            + f". {errors.explanation}"
        ),
    )


def _latency_check(latency: MannWhitneyResult, allowed: float) -> CheckResult:
    excess = None if latency.passed or latency.mean_ratio is None else latency.mean_ratio - allowed
    return CheckResult(
        name="latency",
        passed=latency.passed,
        observed=latency.mean_ratio,
        bound=latency.ci_lower,
        threshold=allowed,
        excess=excess,
        pairs=latency.n_canary,
        explanation=(
            f"latency mean ratio {fmt(latency.mean_ratio)} (candidate/incumbent on {latency.n_canary} pairs,"
            f" {latency.classification}) vs allowed {fmt(allowed)}. {latency.explanation}"
        ),
    )
