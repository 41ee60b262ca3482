"""Real MLServer processes on loopback: served scores equal the artifact's, the digest is checked before
serving (and again on every restart), bad input fails with one clear line and leaves nothing running,
and the faulty variants misbehave behind the real server exactly as built."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import psutil
import pytest

from serving import supervisor
from serving.artifacts import ArtifactDigestError, ModelDirError, file_sha256
from serving.client import InferenceClient, v2_request
from serving.modelserver import (
    ModelServerError,
    ModelServerHandle,
    PortInUseError,
    is_ready,
    model_server_handle,
    start_model_server,
)
from serving.sample_models import (
    DIVERGENT_BAND,
    DIVERGENT_REGIONS,
    ERROR_RATE,
    FEATURES,
    MEMORY_HUNGRY_BYTES,
    SampleModels,
)
from serving.wait import wait_until


def _holdout(sample_models: SampleModels, rows: int) -> pd.DataFrame:
    return pd.read_parquet(sample_models.holdout)[FEATURES].iloc[:rows]


def _copy_model(sample_models: SampleModels, variant: str, dest: Path) -> Path:
    source = sample_models.models[variant].model_dir
    dest.mkdir(parents=True)
    for name in ("model-settings.json", "model.joblib"):
        (dest / name).write_bytes((source / name).read_bytes())
    return dest


def _nothing_runs(run_dir: Path) -> bool:
    return all(supervisor.status(p).state in {"stopped", "dead"} for p in run_dir.glob("*/state.json"))


def test_served_scores_are_the_artifacts_positive_class_probability(
    sample_models: SampleModels, candidate_server: ModelServerHandle
) -> None:
    rows = _holdout(sample_models, 200)
    artifact = joblib.load(sample_models.models["good"].model_dir / "model.joblib")
    expected = artifact.predict_proba(rows.to_numpy())
    response = httpx.post(candidate_server.infer_url, json=v2_request(rows), timeout=10)
    assert response.status_code == 200
    output = response.json()["outputs"][0]
    assert (output["name"], output["datatype"], output["shape"]) == ("predict_proba", "FP64", [200, 1])
    # Equal up to float rounding: BLAS may sum in another order for another batch size.
    np.testing.assert_allclose(np.asarray(output["data"]).reshape(-1, 1), expected, rtol=1e-12, atol=0)
    assert response.json()["model_version"] == "v2"


def test_server_is_one_loopback_process_and_restart_is_idempotent(
    sample_models: SampleModels, candidate_server: ModelServerHandle, session_run_dir: Path
) -> None:
    proc = psutil.Process(candidate_server.pid)
    assert proc.children(recursive=True) == []  # MLSERVER_PARALLEL_WORKERS=0: no worker pool
    listening = {c.laddr for c in proc.net_connections() if c.status == psutil.CONN_LISTEN}
    assert {addr.port for addr in listening} == {candidate_server.http_port, candidate_server.grpc_port}
    assert {addr.ip for addr in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}
    model = sample_models.models["good"]
    again = start_model_server(model.model_dir, model.sha256, session_run_dir)
    assert again == candidate_server
    assert model_server_handle(candidate_server.state_path) == candidate_server


def test_tampered_artifact_refuses_to_start(sample_models: SampleModels, run_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_model(sample_models, "good", tmp_path / "tampered")
    with open(model_dir / "model.joblib", "ab") as artifact:
        artifact.write(b"\0")
    with pytest.raises(ArtifactDigestError, match="restore the original artifact"):
        start_model_server(model_dir, sample_models.models["good"].sha256, run_dir)
    assert list(run_dir.iterdir()) == []


def test_missing_model_dir_is_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        start_model_server(tmp_path / "nowhere", "0" * 64, run_dir)
    assert list(run_dir.iterdir()) == []


def test_port_in_use_is_refused_before_starting(sample_models: SampleModels, run_dir: Path) -> None:
    model = sample_models.models["good"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port 127.0.0.1:{port} .* is in use"):
            start_model_server(model.model_dir, model.sha256, run_dir, http_port=port)
    assert list(run_dir.iterdir()) == []


def test_mlserver_failing_to_load_is_reported_and_stopped(
    sample_models: SampleModels, run_dir: Path, tmp_path: Path
) -> None:
    model_dir = _copy_model(sample_models, "good", tmp_path / "garbage")
    (model_dir / "model.joblib").write_bytes(b"this is not a pickle")
    with pytest.raises(ModelServerError, match="exited during startup") as info:
        start_model_server(model_dir, file_sha256(model_dir / "model.joblib"), run_dir, timeout=60)
    assert "\n" not in str(info.value) and "log:" in str(info.value)
    assert _nothing_runs(run_dir)
    with pytest.raises(ModelServerError, match="no running process recorded"):
        model_server_handle(run_dir / "credit-default-v2" / "state.json")


def test_crashed_server_comes_back_and_a_tampered_restart_refuses(
    sample_models: SampleModels, run_dir: Path, tmp_path: Path
) -> None:
    model_dir = _copy_model(sample_models, "incumbent", tmp_path / "crashy")
    handle = start_model_server(model_dir, sample_models.models["incumbent"].sha256, run_dir, name="crashy")
    os.kill(handle.pid, signal.SIGKILL)
    wait_until(lambda: supervisor.status(handle.state_path).restarts == 1, 30, "the supervisor to restart it")
    wait_until(lambda: is_ready(handle.url, handle.model_name), 60, "the restarted server to be ready")
    with InferenceClient(handle.url, handle.model_name) as client:
        assert len(client.predict(_holdout(sample_models, 3)).scores) == 3

    with open(model_dir / "model.joblib", "ab") as artifact:
        artifact.write(b"\0")
    os.kill(supervisor.status(handle.state_path).pid, signal.SIGKILL)
    wait_until(lambda: "ArtifactDigestError" in handle.log_path.read_text(), 30, "the restart to refuse the artifact")
    assert not is_ready(handle.url, handle.model_name)
    assert supervisor.status(handle.state_path).state in {"restarting", "running"}


@pytest.fixture(scope="module")
def variant_servers(sample_models: SampleModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The faulty variants behind real servers, started in parallel."""
    run_dir = tmp_path_factory.mktemp("variants")
    variants = ("slow", "memory_hungry", "divergent", "erroring")

    def start(variant: str) -> ModelServerHandle:
        model = sample_models.models[variant]
        return start_model_server(model.model_dir, model.sha256, run_dir)

    try:
        with ThreadPoolExecutor(len(variants)) as pool:
            yield dict(zip(variants, pool.map(start, variants), strict=True))
    finally:
        for state_path in run_dir.glob("*/state.json"):
            supervisor.stop(state_path)


def test_erroring_answers_500_on_its_share(sample_models: SampleModels, variant_servers: dict) -> None:
    handle = variant_servers["erroring"]
    body = v2_request(_holdout(sample_models, 2))
    with httpx.Client(timeout=10) as client:
        responses = [client.post(handle.infer_url, json=body) for _ in range(50)]
    failed = [r for r in responses if r.status_code == 500]
    assert len(failed) == round(50 * ERROR_RATE)
    assert all(r.status_code in (200, 500) for r in responses)
    assert "injected model failure" in json.loads(failed[0].text)["error"]


def test_slow_is_slower_than_its_delay(
    sample_models: SampleModels, variant_servers: dict, candidate_server: ModelServerHandle
) -> None:
    body = v2_request(_holdout(sample_models, 1))

    def median_latency(url: str) -> float:
        with httpx.Client(timeout=10) as client:
            client.post(url, json=body)
            times = []
            for _ in range(15):
                started = time.perf_counter()
                assert client.post(url, json=body).status_code == 200
                times.append(time.perf_counter() - started)
        return float(np.median(times))

    delay = joblib.load(sample_models.models["slow"].model_dir / "model.joblib").delay_s
    slow, good = median_latency(variant_servers["slow"].infer_url), median_latency(candidate_server.infer_url)
    assert slow >= delay and slow > good + 0.5 * delay


def test_memory_hungry_holds_its_ballast(variant_servers: dict, candidate_server: ModelServerHandle) -> None:
    hungry = psutil.Process(variant_servers["memory_hungry"].pid).memory_info().rss
    normal = psutil.Process(candidate_server.pid).memory_info().rss
    assert hungry - normal > 0.9 * MEMORY_HUNGRY_BYTES


def test_divergent_flips_its_rows_behind_the_server(
    sample_models: SampleModels, variant_servers: dict, candidate_server: ModelServerHandle
) -> None:
    rows = _holdout(sample_models, 400)
    with InferenceClient(candidate_server.url, "credit-default") as good_client:
        good = np.asarray(good_client.predict(rows).scores)
    with InferenceClient(variant_servers["divergent"].url, "credit-default") as divergent_client:
        divergent = np.asarray(divergent_client.predict(rows).scores)
    low, high = DIVERGENT_BAND
    region = np.isin(rows["region"].to_numpy(), DIVERGENT_REGIONS) & (good > low) & (good < high)
    assert region.any()
    np.testing.assert_allclose(divergent[~region], good[~region])
    np.testing.assert_allclose(divergent[region], 1 - good[region])
