"""Validation of the arrays that enter every check.

Gates must never pass on unusable input, so conversion and checks live in one place and raise
VerificationError with a message that says what was wrong and how to fix it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from verification.errors import VerificationError

FloatArray = npt.NDArray[np.float64]


def as_float_array(values: Any, name: str, *, allow_empty: bool = False) -> FloatArray:
    """Return ``values`` as a 1-D float64 array, or raise VerificationError saying why it cannot be.

    ``allow_empty``: an empty window is data too (a watcher's quiet second is "insufficient", not an error).
    """
    try:
        arr = np.asarray(values)
    except Exception as exc:  # pragma: no cover - numpy raises many types for odd objects
        raise VerificationError(f"{name}: cannot be read as an array ({exc}); pass numbers") from exc
    if arr.ndim != 1:
        raise VerificationError(f"{name}: expected a 1-D array, got shape {arr.shape}; select one column")
    if arr.dtype.kind not in "biuf":
        raise VerificationError(
            f"{name}: expected numbers (numeric dtype), got dtype {arr.dtype}; convert to float or mark it categorical"
        )
    out = arr.astype(np.float64, copy=False)
    if out.size == 0 and not allow_empty:
        raise VerificationError(f"{name}: is empty; supply at least one observation for this window")
    if np.isinf(out).any():
        raise VerificationError(f"{name}: contains infinite (non-finite) values; drop or clip them before the check")
    if np.isnan(out).any():
        count = int(np.isnan(out).sum())
        raise VerificationError(f"{name}: contains {count} NaN (non-finite) value(s); drop or impute them first")
    return out


def check_same_length(a: np.ndarray, b: np.ndarray, names: str) -> None:
    """Raise unless two aligned arrays (same inputs, two models) have equal length."""
    if a.shape[0] != b.shape[0]:
        raise VerificationError(
            f"{names}: lengths differ ({a.shape[0]} vs {b.shape[0]}); pass scores for the same rows, aligned"
        )


def check_probability(value: float, name: str) -> None:
    """Raise unless ``value`` lies strictly between 0 and 1 (confidence levels, alphas, quantiles)."""
    if not 0.0 < value < 1.0:
        raise VerificationError(f"{name}: must be strictly between 0 and 1, got {value}")


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a positive (or non-negative) finite number."""
    ok = value >= 0 if allow_zero else value > 0
    if not (np.isfinite(value) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise VerificationError(f"{name}: must be a finite number {bound}, got {value}")
