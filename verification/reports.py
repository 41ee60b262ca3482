"""Base model and wording shared by every verdict.

Each result is evidence stored in stack state, so it must serialise to JSON and explain itself in one
paragraph in the style of an Argo Rollouts analysis run: which check (metric), what was measured and
on how many samples, against which threshold, by how much it missed, and the result.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict


class Report(BaseModel):
    """A verdict with the numbers behind it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    check: str
    passed: bool
    explanation: str

    def explain(self) -> str:
        """One paragraph: check -> measurements -> threshold -> result."""
        return self.explanation


def fmt(value: float | None) -> str:
    """Format a number compactly for explanations (4 significant digits, scientific when tiny/huge)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def verdict_word(passed: bool) -> str:
    """PASS / FAIL, upper-case so the result stands out in a paragraph."""
    return "PASS" if passed else "FAIL"


class Criterion(BaseModel):
    """One threshold comparison inside a verdict: observed value, the confidence bound that decides, limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    observed: float | None
    bound: float | None
    comparator: str
    threshold: float
    passed: bool
    uses_bound: bool = True
    note: str = ""

    def sentence(self) -> str:
        """``name: observed X, decisive bound B <= T (margin M) -> ok``; a missing bound fails plainly."""
        decisive = self.bound if self.bound is not None else self.observed
        bound = f", decisive bound {fmt(self.bound)}" if self.bound is not None else ""
        if decisive is None or (self.uses_bound and self.bound is None):
            core = f"{self.name}: observed {fmt(self.observed)}, no decisive confidence bound"
        else:
            gap = decisive - self.threshold if self.comparator == "<=" else self.threshold - decisive
            how = f"misses by {fmt(gap)}" if gap > 0 else f"margin {fmt(-gap)}"
            core = f"{self.name}: observed {fmt(self.observed)}{bound} {self.comparator} {fmt(self.threshold)} ({how})"
        note = f" [{self.note}]" if self.note else ""
        return f"{core}{note} -> {'ok' if self.passed else 'FAIL'}"
