"""The local object store: a real S3 API on loopback that checks signatures and keeps its objects across a restart."""

from __future__ import annotations

import stat

import botocore.exceptions
import httpx
import psutil
import pytest

from automation.s3server import (
    CREDENTIALS_FILE,
    IDENTITIES_FILE,
    NAME,
    STATE_BUCKET,
    S3Server,
    start_s3_server,
    write_env_file,
)
from serving import supervisor


def test_every_listener_is_on_loopback_and_the_credentials_are_private(s3: S3Server, s3_run_dir) -> None:
    handle = supervisor.running_handle(NAME, s3_run_dir)
    assert handle is not None
    listening = [c.laddr for c in psutil.Process(handle.pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    work_dir = s3_run_dir / NAME
    for path in (work_dir / CREDENTIALS_FILE, work_dir / IDENTITIES_FILE, write_env_file(s3, s3_run_dir)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert s3.secret_access_key in path.read_text()
    for path in (work_dir / supervisor.STATE_FILE, handle.log_path):  # the command line and the server's output
        assert s3.secret_access_key not in path.read_text(), path


def test_unsigned_and_wrongly_signed_requests_are_refused(s3: S3Server) -> None:
    assert httpx.get(f"{s3.endpoint}/{STATE_BUCKET}", timeout=10).status_code == 403
    wrong = s3.model_copy(update={"secret_access_key": "not-the-secret"}).client()
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        wrong.list_objects_v2(Bucket=STATE_BUCKET)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_conditional_put_writes_once_and_objects_survive_a_restart(s3: S3Server, s3_run_dir) -> None:
    client = s3.client()
    client.put_object(Bucket=STATE_BUCKET, Key="probe/once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as second:
        client.put_object(Bucket=STATE_BUCKET, Key="probe/once", Body=b"second", IfNoneMatch="*")
    assert second.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    supervisor.stop(s3_run_dir / NAME / supervisor.STATE_FILE)
    again = start_s3_server(s3_run_dir)
    assert (again.endpoint, again.access_key_id) == (s3.endpoint, s3.access_key_id)  # the backend URL still holds
    body = again.client().get_object(Bucket=STATE_BUCKET, Key="probe/once")["Body"].read()
    assert body == b"first"
