"""The objects inside served artifacts: a positive-class scorer and the faulty variants releases must catch.

MLServer's ``mlserver_sklearn.SKLearnModel`` calls one method of the unpickled object (``predict_fn`` in
model-settings) and returns its result as the output tensor of that name. A credit-default model must
answer with P(default) as a single FP64 column, not sklearn's two-column ``predict_proba`` matrix, so the
artifact is a ``PositiveClassScorer`` around the fitted classifier whose ``predict_proba`` returns that one
column. The faulty variants wrap a scorer and live in the artifact (not in model-settings) on purpose:
the behaviour is part of the bytes that are digested, released and audited, exactly like a real model
that is slow, hungry or wrong. They must stay importable as ``serving.scorers`` by the model server.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from mlserver.errors import MLServerError


class PositiveClassScorer:
    """A fitted binary classifier served as P(positive class), shape (n, 1), float64."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        proba = self.classifier.predict_proba(X)
        return np.ascontiguousarray(proba[:, 1:2], dtype=np.float64)


class SlowScorer:
    """Adds ``delay_s`` of blocking latency per call, as a heavier model occupies the server longer."""

    def __init__(self, scorer: PositiveClassScorer, delay_s: float) -> None:
        self.scorer = scorer
        self.delay_s = delay_s

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.scorer.predict_proba(X)


class MemoryHungryScorer:
    """Holds ``resident_bytes`` of touched (hence resident) memory from the moment it is loaded.

    The ballast is allocated when the artifact is unpickled, not stored in it, so the artifact stays small
    and the memory shows up where a memory gate measures it: in the serving process after load.
    """

    def __init__(self, scorer: PositiveClassScorer, resident_bytes: int) -> None:
        self.scorer = scorer
        self.resident_bytes = resident_bytes

    def __getstate__(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "resident_bytes": self.resident_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._ballast = np.ones(self.resident_bytes, dtype=np.uint8)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.scorer.predict_proba(X)


class DivergentScorer:
    """Answers 1 - p on rows of some regions whose score p lies in a band around the decision threshold.

    On those rows (about 5 % of the held-out set) every decision flips, yet the scores move only inside the
    band, so ranking metrics barely change (held-out AUC within 0.003 of the incumbent's) and the offline
    gates pass: the kind of divergence only a comparison of both versions on the same inputs shows.
    """

    def __init__(
        self, scorer: PositiveClassScorer, column: int, values: tuple[float, ...], band: tuple[float, float]
    ) -> None:
        self.scorer = scorer
        self.column = column
        self.values = values
        self.band = band

    def flipped(self, X: np.ndarray, proba: np.ndarray) -> np.ndarray:
        """Which rows this scorer flips, given the wrapped scorer's positive-class scores."""
        low, high = self.band
        return np.isin(np.asarray(X)[:, self.column], self.values) & (proba > low) & (proba < high)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        proba = self.scorer.predict_proba(X)
        rows = self.flipped(X, proba[:, 0])
        proba[rows] = 1.0 - proba[rows]
        return proba


class ErroringScorer:
    """Fails exactly ``error_rate`` of calls, spread evenly (call n fails when floor(n*rate) steps up).

    A call counter rather than a random draw keeps the failure share exact and reproducible per process.
    The failure is an ``MLServerError`` with status 500 so the server answers HTTP 500 with a message:
    MLServer answers any other exception by resetting the connection, a different failure mode.
    """

    def __init__(self, scorer: PositiveClassScorer, error_rate: float) -> None:
        self.scorer = scorer
        self.error_rate = error_rate
        self._calls = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"scorer": self.scorer, "error_rate": self.error_rate}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._calls = 0

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._calls += 1
        if math.floor(self._calls * self.error_rate) > math.floor((self._calls - 1) * self.error_rate):
            message = f"injected model failure on call {self._calls} (error_rate={self.error_rate})"
            raise MLServerError(message, status_code=500)
        return self.scorer.predict_proba(X)
