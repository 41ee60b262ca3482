"""Pure statistics behind every gate and canary verdict: arrays in, explained pydantic verdicts out.

Modules (import them directly; this package imports nothing heavy on its own):
- ``drift``: PSI on reference deciles with its sample-size-aware p-value, KS / chi-square,
  Jensen-Shannon, normed Wasserstein, missing-rate tests; ``dataset_drift`` with BH or Bonferroni.
- ``evaluation``: binary and regression metrics; ``evaluate_non_inferiority`` (paired bootstrap)
  and ``evaluate_absolute`` (first release).
- ``performance``: ``quantile_bounds`` (order statistics), ``latency_gate``, ``latency_ratio_gate``
  (paired block bootstrap of candidate/incumbent quantiles) and ``compare_latency``, ``memory_gate``.
- ``comparison``: ``compare_predictions`` on aligned pairs and the anytime-valid
  ``SequentialComparison``.
- ``judge``: Kayenta-compatible ``mann_whitney``, ``two_proportion`` for rates, weighted ``score``.
- ``reports`` / ``intervals`` / ``inputs``: shared result models, confidence intervals, validation.

Every result is a pydantic model with ``passed``, ``explanation`` and ``explain()``; unusable input
raises ``VerificationError`` (a ValueError) with a one-line message naming the problem and the fix.
"""

from verification.errors import VerificationError

__all__ = ["VerificationError"]
