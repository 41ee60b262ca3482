"""A local S3-compatible object store for a team-shaped setup on one machine: SeaweedFS, supervised.

Pulumi's DIY backend, the release lock and (later) model artifacts can live in one bucket that several runners
share. In tests and for a newcomer that bucket is served by SeaweedFS's ``weed`` (a real object store, built from
the Go modules pinned in ``tools/seaweedfs`` by ``make s3-tools``), run by ``serving.supervisor`` like
Prometheus: ``weed server -s3`` on 127.0.0.1 only, every one of its ports allocated here, its volumes and filer
metadata in ``<run_dir>/s3/data`` (so a restart keeps every object). S3 authentication is on: the access key
and secret are generated once and kept 0600 in ``<run_dir>/s3/credentials.json``; ``weed`` reads them as its one
identity from a 0600 ``-s3.config`` file (never from its command line or environment, which the supervisor's state
file records), and every client signs with them (SigV4).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import sys
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
from pydantic import BaseModel

from automation.engine import VENV_DIR
from serving import supervisor
from serving.private_files import write_private
from serving.wait import wait_until

NAME = "s3"
REGION = "us-east-1"
STATE_BUCKET = "mlrelease-state"
CREDENTIALS_FILE = "credentials.json"
IDENTITIES_FILE = "identities.json"
PROBE_KEY = ".mlrelease/ready"
DEFAULT_RUN_DIR = Path(".mlrelease") / "run" / "shared"
ENV_FILE = "env.sh"
# weed's flag for each listener it opens (its defaults are fixed ports, and a gRPC port defaults to port + 10000).
_PORT_FLAGS = {
    "s3": "s3.port",
    "s3_grpc": "s3.port.grpc",
    "master": "master.port",
    "master_grpc": "master.port.grpc",
    "volume": "volume.port",
    "volume_grpc": "volume.port.grpc",
    "filer": "filer.port",
    "filer_grpc": "filer.port.grpc",
}


class S3ServerError(RuntimeError):
    """The object store is missing, did not start, or refused a request."""


class S3Server(BaseModel):
    """A running local object store: where it answers and the credentials that sign for it."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    data_dir: Path
    log_path: Path

    def backend_url(self, bucket: str = STATE_BUCKET) -> str:
        """The ``PULUMI_BACKEND_URL`` of ``bucket`` on this server (Pulumi's DIY S3 backend, path-style, plain HTTP)."""
        return f"s3://{bucket}?endpoint={self.endpoint}&use_path_style=true&disable_https=true&region={REGION}"

    def env(self) -> dict[str, str]:
        """What a client process needs to sign for this server (the engine, the CLI, the lock)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": REGION,
            # SeaweedFS sends no response checksums; the SDKs would warn on every read when asked to validate them
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def client(self):
        """An S3 client signing with this server's credentials."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=REGION,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10
            ),
        )


def weed_binary() -> str:
    """Path of SeaweedFS's ``weed`` (``.venv/bin`` first, where ``make s3-tools`` links it), or S3ServerError."""
    found = shutil.which("weed", path=os.pathsep.join([str(VENV_DIR / "bin"), os.environ.get("PATH", "")]))
    if found is None:
        raise S3ServerError("SeaweedFS's weed is not built: run `make s3-tools` (builds it from the pinned Go modules)")
    return found


def _credentials(work_dir: Path) -> tuple[str, str]:
    path = work_dir / CREDENTIALS_FILE
    try:
        saved = json.loads(path.read_text())
        return saved["access_key_id"], saved["secret_access_key"]
    except FileNotFoundError:
        pass
    key, secret = "mlrelease" + secrets.token_hex(6), secrets.token_urlsafe(30)
    write_private(path, json.dumps({"access_key_id": key, "secret_access_key": secret}))
    return key, secret


def _server(handle: supervisor.ProcessHandle, key: str, secret: str) -> S3Server:
    return S3Server(
        endpoint=f"http://127.0.0.1:{handle.ports['s3']}",
        access_key_id=key,
        secret_access_key=secret,
        data_dir=Path(handle.meta["data_dir"]),
        log_path=handle.log_path,
    )


def _answers(server: S3Server, bucket: str) -> bool:
    """True once ``bucket`` exists (created the first time) and takes a write: the filer and a volume are up."""
    client = server.client()
    try:
        try:
            client.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                return False
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=b"ready")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
        return False
    return True


def _listenable(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:``port`` now (SO_REUSEADDR, as weed's listeners set it: the
    TIME_WAIT connections a stopped server leaves behind do not count, a listener does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ports(work_dir: Path) -> dict[str, int]:
    """The ports of the last run when they are all free again, so a restarted store keeps its endpoint (every
    backend URL names it); new ones otherwise."""
    try:
        previous = supervisor.read_state(work_dir / supervisor.STATE_FILE).spec.ports
    except FileNotFoundError:
        previous = {}
    if set(previous) == set(_PORT_FLAGS) and all(_listenable(port) for port in previous.values()):
        return previous
    return dict(zip(_PORT_FLAGS, supervisor.free_ports(len(_PORT_FLAGS)), strict=True))


def start_s3_server(run_dir: Path, *, bucket: str = STATE_BUCKET, timeout: float = 90.0) -> S3Server:
    """Start (or find running) the object store of ``run_dir`` and return once ``bucket`` exists on it."""
    work_dir = Path(run_dir).resolve() / NAME
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, secret = _credentials(work_dir)
    handle = supervisor.running_handle(NAME, run_dir)
    if handle is None:
        data_dir = work_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        ports = _ports(work_dir)
        identities = work_dir / IDENTITIES_FILE
        identity = {"name": "mlrelease", "credentials": [{"accessKey": key, "secretKey": secret}], "actions": ["Admin"]}
        write_private(identities, json.dumps({"identities": [identity]}))
        argv = [
            weed_binary(),
            "server",
            "-s3",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data_dir}",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=1",  # one server, no peers to drain to: stop in a second, not ten
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identities}",
            *(f"-{_PORT_FLAGS[name]}={port}" for name, port in ports.items()),
        ]
        try:
            handle = supervisor.start_process(
                NAME, argv, run_dir, ports=ports, meta={"data_dir": str(data_dir)}, stop_grace_s=10.0
            )
        except supervisor.ProcessStartError as exc:
            raise S3ServerError(f"the object store did not start: {exc}") from None
    server = _server(handle, key, secret)
    try:
        wait_until(
            lambda: _answers(server, bucket), timeout, f"the object store on {server.endpoint} to serve {bucket}"
        )
    except TimeoutError:
        raise S3ServerError(
            f"the object store on {server.endpoint} did not serve bucket {bucket} within {timeout:.0f}s:"
            f" see {server.log_path}"
        ) from None
    return server


def running_s3_server(run_dir: Path) -> S3Server | None:
    """The object store of ``run_dir`` if it runs, else None."""
    handle = supervisor.running_handle(NAME, run_dir)
    if handle is None:
        return None
    key, secret = _credentials(Path(run_dir).resolve() / NAME)
    return _server(handle, key, secret)


def stop_s3_server(run_dir: Path) -> None:
    """Stop the object store of ``run_dir`` (its data stays)."""
    state = Path(run_dir).resolve() / NAME / supervisor.STATE_FILE
    if state.exists():
        supervisor.stop(state)


def write_env_file(server: S3Server, run_dir: Path) -> Path:
    """A shell file (0600) that points a shell at the store: its credentials and ``PULUMI_BACKEND_URL``."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in server.env().items()]
    lines.append(f"export PULUMI_BACKEND_URL={shlex.quote(server.backend_url())}")
    path = Path(run_dir).resolve() / NAME / ENV_FILE
    write_private(path, "\n".join(lines) + "\n")
    return path


def main() -> None:
    """``python -m automation.s3server [RUN_DIR]`` (``make s3``): start the store, print where it is and how to
    point a shell at it. The credentials go to a 0600 file, not to the terminal."""
    run_dir = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_RUN_DIR)
    try:
        server = start_s3_server(run_dir)
    except S3ServerError as exc:
        print(f"mlrelease: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    env_file = write_env_file(server, run_dir)
    print(f"object store: {server.endpoint} (SeaweedFS; data in {server.data_dir}, log {server.log_path})")
    print(f"backend:      {server.backend_url()}")
    print(f"use it:       source {env_file}")


if __name__ == "__main__":
    main()
