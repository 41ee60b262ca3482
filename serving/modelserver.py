"""One MLServer process per model version on 127.0.0.1, started only after its artifact's digest checks.

``start_model_server`` checks the model directory and the artifact's sha256 (clear error, nothing
started), allocates the HTTP and gRPC ports (MLServer always starts gRPC; its metrics server is turned
off, the router exports the metrics), starts ``python -m serving.modelserver DIR --sha256 X`` under
the supervisor and polls ``/v2/health/ready`` and the model's own ready endpoint with a deadline. That
entry point repeats the digest check before it hands over to MLServer in the same process, so a
crash-restart of a tampered artifact refuses to serve too. If the server does not come up, it is stopped
and the error names the reason from its log.

MLServer runs with ``MLSERVER_PARALLEL_WORKERS=0``: inference in the server process itself, no worker
pool, so one process per version (what the memory gate measures) and about 2 s cold start.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import httpx
from pydantic import BaseModel

from serving import http, supervisor
from serving.artifacts import ArtifactDigestError, ModelDirError, read_settings, verify_artifact
from serving.wait import wait_until

_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*")


class ModelServerError(RuntimeError):
    """A model server did not start; the message names the reason and where the log is."""


class PortInUseError(ModelServerError):
    """The requested port is taken."""


class ModelServerHandle(BaseModel):
    """A running model server: where to call it and where its supervisor keeps its state."""

    name: str
    model_name: str
    version: str
    sha256: str
    model_dir: Path
    url: str
    http_port: int
    grpc_port: int
    pid: int
    state_path: Path
    pid_path: Path
    log_path: Path

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.model_name}/infer"


def _mlserver_env(http_port: int, grpc_port: int, work_dir: Path) -> dict[str, str]:
    return {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(http_port),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_ENDPOINT": "",
        "MLSERVER_METRICS_DIR": str(work_dir / "mlserver-metrics"),
        "MLSERVER_ENVIRONMENTS_DIR": str(work_dir / "mlserver-envs"),
        "MLSERVER_PARALLEL_WORKERS": "0",
        "MLSERVER_DEBUG": "false",
        # One OpenMP thread per server: XGBoost's and LightGBM's thread pools otherwise take every core for a
        # one-row prediction and spin between requests, against the router, the other versions and the load.
        "OMP_NUM_THREADS": "1",
    }


def _handle(proc: supervisor.ProcessHandle) -> ModelServerHandle:
    meta = proc.meta
    return ModelServerHandle(
        name=proc.name,
        model_name=meta["model_name"],
        version=meta["version"],
        sha256=meta["sha256"],
        model_dir=Path(meta["model_dir"]),
        url=f"http://127.0.0.1:{proc.ports['http']}",
        http_port=proc.ports["http"],
        grpc_port=proc.ports["grpc"],
        pid=proc.pid,
        state_path=proc.state_path,
        pid_path=proc.pid_path,
        log_path=proc.log_path,
    )


def is_ready(url: str, model_name: str, timeout: float = 1.0) -> bool:
    """True if the server at ``url`` is ready and has loaded ``model_name``."""
    try:
        with http.client(url, timeout=timeout) as client:
            return (
                client.get(f"{url}/v2/health/ready").status_code == 200
                and client.get(f"{url}/v2/models/{model_name}/ready").status_code == 200
            )
    except httpx.TransportError:
        return False


def failure_reason(log_path: Path) -> str:
    """The most telling line of a failed server's log: the last exception line, else the last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "no output"
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line) or "address already in use" in line:
            return line
    return lines[-1] if lines else "no output"


def _launch(
    name: str,
    model_dir: Path,
    model_name: str,
    version: str,
    sha256: str,
    run_dir: Path,
    http_port: int | None,
) -> supervisor.ProcessHandle:
    if http_port is not None and supervisor.port_in_use(http_port):
        raise PortInUseError(
            f"port 127.0.0.1:{http_port} for model server {name} is in use: stop what holds it or omit "
            "http_port to get a free one"
        )
    picked = supervisor.free_ports(2)
    ports = {"http": http_port or picked[0], "grpc": picked[1] if picked[1] != http_port else picked[0]}
    return supervisor.start_process(
        name,
        [sys.executable, "-m", "serving.modelserver", str(model_dir), "--sha256", sha256],
        run_dir,
        env=_mlserver_env(ports["http"], ports["grpc"], Path(run_dir).resolve() / name),
        ports=ports,
        meta={
            "model_name": model_name,
            "version": version,
            "sha256": sha256.lower(),
            "model_dir": str(model_dir),
        },
    )


def start_model_server(
    model_dir: Path,
    expected_sha256: str,
    run_dir: Path,
    *,
    name: str | None = None,
    http_port: int | None = None,
    timeout: float = 60.0,
) -> ModelServerHandle:
    """Serve ``model_dir`` with MLServer on 127.0.0.1 after checking its artifact; return when it is ready.

    ``name`` defaults to ``<model name>-<version>``; starting a name that already runs the same artifact
    returns its handle once ready; running another artifact under that name is a ProcessConflict.
    ``http_port`` defaults to a free port. Raises ModelDirError / ArtifactDigestError (nothing started),
    PortInUseError, or ModelServerError (started, failed, stopped again).
    """
    model_dir = Path(model_dir).resolve()
    settings = read_settings(model_dir)
    version = settings.parameters.version or "unversioned"
    name = name or f"{settings.name}-{version}"
    verify_artifact(model_dir, expected_sha256)
    proc = supervisor.running_handle(name, run_dir)
    restarts = 0
    if proc is None or proc.meta.get("sha256") != expected_sha256.lower():
        try:
            proc = _launch(name, model_dir, settings.name, version, expected_sha256, run_dir, http_port)
        except supervisor.ProcessExitedDuringStartup as exc:
            reason = failure_reason(exc.log_path)
            error = PortInUseError if "address already in use" in reason else ModelServerError
            raise error(
                f"model server {name} for {model_dir} exited during startup: {reason} (log: {exc.log_path})"
            ) from None
    else:
        restarts = supervisor.status(proc.state_path).restarts  # crashes before this call are history
    handle = _handle(proc)

    def ready() -> bool:
        state = supervisor.status(proc.state_path)
        if state.restarts > restarts or not state.supervised:
            reason = failure_reason(proc.log_path)
            supervisor.stop(proc.state_path)
            error = PortInUseError if "address already in use" in reason else ModelServerError
            raise error(f"model server {name} for {model_dir} exited during startup: {reason} (log: {proc.log_path})")
        return is_ready(handle.url, settings.name)

    try:
        # A tight poll: readiness is noticed within 50 ms of MLServer's, a cost only during startup.
        wait_until(ready, timeout, f"model server {name} on {handle.url} to be ready", max_interval=0.05)
    except TimeoutError as exc:
        supervisor.stop(proc.state_path)
        raise ModelServerError(
            f"{exc}; last log line: {failure_reason(proc.log_path)} (log: {proc.log_path}); the server was stopped"
        ) from None
    return handle


def model_server_handle(state_path: Path) -> ModelServerHandle:
    """The handle recorded in a model server's state file (what a provider's ``read`` has).

    ModelServerError if no server process is recorded; whether the recorded one still runs is
    ``supervisor.status``'s and ``is_ready``'s answer.
    """
    try:
        return _handle(supervisor.process_handle(state_path))
    except supervisor.ProcessNotRunning as exc:
        raise ModelServerError(f"model server: {exc}") from None


def _serve(model_dir: Path, sha256: str) -> None:
    """Check the artifact, then run MLServer on ``model_dir`` in this process (settings from the env)."""
    try:
        verify_artifact(model_dir, sha256)
    except (ModelDirError, ArtifactDigestError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    from mlserver.cli import main as mlserver_main

    sys.argv = ["mlserver", "start", str(model_dir)]
    mlserver_main()


def main(argv: list[str] | None = None) -> None:
    """``python -m serving.modelserver MODEL_DIR --sha256 X``: what ``start_model_server`` supervises."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.modelserver", description="check the artifact digest, then run MLServer"
    )
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--sha256", required=True, help="expected sha256 of the artifact")
    args = parser.parse_args(argv)
    _serve(args.model_dir, args.sha256)


if __name__ == "__main__":
    main()
