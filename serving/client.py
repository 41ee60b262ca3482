"""Typed clients for the router: the admin API and V2 inference, over httpx.

`RouterAdmin` is what the canary, the watcher, drills and the local target use to drive a running
router; `v2_request` / `InferenceClient` build and send V2 requests from feature rows or a DataFrame,
in the one-tensor `[rows, features]` layout every sample model accepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from serving import http
from serving.v2 import OutputSpec

if TYPE_CHECKING:  # pandas costs a second to import; a frame is recognised by its method
    import pandas as pd


class RouterError(RuntimeError):
    """The router answered an admin or inference call with an error; carries its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            message = resp.json().get("error", resp.text)
        except ValueError:
            message = resp.text
        raise RouterError(resp.status_code, message)
    return resp.json()


@dataclass(frozen=True)
class PairsPage:
    """One page of shadow pairs; pass `next` as `since` to continue (reset when `epoch` changes).

    `pending` counts shadow copies still queued or in flight when the page was read.
    """

    epoch: str
    next: int
    truncated: bool
    pending: int
    pairs: list[dict[str, Any]]


class RouterAdmin:
    """The router's /admin API with its bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self._http = http.client(base_url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RouterAdmin:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def weights(self) -> dict[str, int]:
        return self.split()[0]

    def incumbent(self) -> str:
        return self.split()[1]

    def split(self) -> tuple[dict[str, int], str]:
        """The live weights and incumbent, read together (one call, one consistent view)."""
        view = _check(self._http.get("/admin/weights"))
        return view["weights"], view["incumbent"]

    def set_weights(
        self, weights: Mapping[str, int], incumbent: str | None = None, lease_s: float | None = None
    ) -> dict[str, int]:
        """Apply all weights at once (must sum to 100; versions left out get 0), and the incumbent with them
        when given (a promotion or rollback in one atomic change). With ``lease_s`` the router puts all
        traffic back on the incumbent by itself unless the weights are set again within that many seconds."""
        return self.set_split(weights, incumbent, lease_s)[0]

    def set_split(
        self, weights: Mapping[str, int], incumbent: str | None = None, lease_s: float | None = None
    ) -> tuple[dict[str, int], str]:
        """``set_weights``, answering the split now live: weights and incumbent as the router applied them."""
        body: dict[str, Any] = {"weights": dict(weights)}
        if incumbent is not None:
            body["incumbent"] = incumbent
        if lease_s is not None:
            body["lease_s"] = lease_s
        view = _check(self._http.put("/admin/weights", json=body))
        return view["weights"], view["incumbent"]

    def set_incumbent(self, version: str) -> None:
        _check(self._http.put("/admin/incumbent", json={"version": version}))

    def upstreams(self) -> dict[str, dict[str, Any]]:
        return _check(self._http.get("/admin/upstreams"))

    def add_upstream(
        self,
        version: str,
        url: str,
        model_name: str,
        *,
        pid: int | None = None,
        pid_file: str | None = None,
        output: OutputSpec | None = None,
    ) -> dict[str, Any]:
        """Register a version at weight 0 (its scores read as ``output`` says); returns its first health check."""
        body = {"version": version, "url": url, "model_name": model_name, "pid": pid, "pid_file": pid_file}
        if output is not None:
            body["output"] = output.model_dump(mode="json")
        return _check(self._http.post("/admin/upstreams", json=body))["health"]

    def remove_upstream(self, version: str) -> None:
        _check(self._http.delete(f"/admin/upstreams/{version}"))

    def faults(self) -> dict[str, dict[str, float]]:
        return _check(self._http.get("/admin/faults"))

    def set_fault(
        self, version: str, *, error_rate: float = 0.0, latency_ms: float = 0.0, perturbation: float = 0.0
    ) -> None:
        body = {"error_rate": error_rate, "latency_ms": latency_ms, "perturbation": perturbation}
        _check(self._http.put(f"/admin/faults/{version}", json=body))

    def clear_fault(self, version: str) -> None:
        _check(self._http.delete(f"/admin/faults/{version}"))

    def health(self) -> dict[str, dict[str, Any]]:
        return _check(self._http.get("/admin/health"))

    def pairs(self, since: int | None = None, limit: int = 1000, since_ts: float | None = None) -> PairsPage:
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            params["since"] = since
        if since_ts is not None:
            params["since_ts"] = since_ts
        return PairsPage(**_check(self._http.get("/admin/pairs", params=params)))

    def flush(self) -> list[str]:
        """Write buffered inference-log rows and pairs to disk now; returns the part files written."""
        return _check(self._http.post("/admin/flush"))["files"]


def v2_request(
    rows: pd.DataFrame | Sequence[Sequence[float]],
    *,
    input_name: str = "input-0",
    request_id: str | None = None,
    entity_key: str | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """A V2 inference request with one FP64 tensor `[rows, features]` (DataFrame columns in order).

    ``output`` names the output to answer with (MLServer's sklearn and XGBoost runtimes answer ``predict``
    unless asked); without it the server's default answers.
    """
    data = rows.to_numpy(dtype=float).tolist() if hasattr(rows, "to_numpy") else [list(r) for r in rows]
    width = len(data[0]) if data else 0
    body: dict[str, Any] = {
        "inputs": [{"name": input_name, "shape": [len(data), width], "datatype": "FP64", "data": data}]
    }
    if request_id is not None:
        body["id"] = request_id
    if entity_key is not None:
        body["parameters"] = {"entity_key": entity_key}
    if output is not None:
        body["outputs"] = [{"name": output}]
    return body


@dataclass(frozen=True)
class Prediction:
    """Scores of one request and which version answered it."""

    scores: list[float]
    version: str
    request_id: str


class InferenceClient:
    """Sends V2 requests for one model (through the router or straight to a model server)."""

    def __init__(self, base_url: str, model_name: str, timeout: float = 10.0) -> None:
        self.model_name = model_name
        self._http = http.client(base_url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def predict(self, rows: pd.DataFrame | Sequence[Sequence[float]], *, entity_key: str | None = None) -> Prediction:
        """Scores (first output, one per row) and the answering version; RouterError on non-2xx."""
        resp = self._http.post(f"/v2/models/{self.model_name}/infer", json=v2_request(rows, entity_key=entity_key))
        payload = _check(resp)
        output = payload["outputs"][0]
        data = output["data"]
        flat = [v for row in data for v in row] if data and isinstance(data[0], list) else data
        return Prediction(
            scores=[float(v) for v in flat],
            version=resp.headers.get("x-model-version", payload.get("model_version", "")),
            request_id=resp.headers.get("x-request-id", payload.get("id", "")),
        )
