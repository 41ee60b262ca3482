"""``audit``, ``audit --verify`` and the engine-free checkpoint read on an ``s3://`` backend, on the real store.

A history written in the DIY backend's format (``bench.bench_audit.SyntheticStack``) is uploaded to the bucket
at the keys Pulumi uses (under a prefix, as ``s3://BUCKET/PREFIX?...`` puts them): what the bucket answers must
be what the same files answer on ``file://``, and an edit or a deletion in the bucket is found.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

import automation.audit
from automation.audit import AuditError, audit
from automation.audit_verify import verify
from automation.backend_files import stack_outputs
from automation.s3server import S3Server
from automation.stores.s3 import Bucket
from bench.bench_audit import SyntheticStack

T0 = 1_795_600_000


def upload(root: Path, url: str) -> None:
    """Every state file under ``root`` to the bucket ``url`` names, at its relative key (``.attrs`` sidecars are
    the file driver's own: a bucket keeps those attributes on the object)."""
    bucket = Bucket.from_backend_url(url)
    for path in root.rglob("*"):
        if path.is_file() and not path.name.endswith(".attrs"):
            bucket.client().put_object(
                Bucket=bucket.name, Key=bucket.key(str(path.relative_to(root))), Body=path.read_bytes()
            )


@pytest.fixture
def shared(tmp_path: Path, s3: S3Server, s3_env: dict[str, str]) -> tuple[SyntheticStack, str]:
    """A stack's history on file:// and the same files in the bucket, under a prefix of this test's own."""
    stack = SyntheticStack(tmp_path / "state", "prod")
    stack.release("v1", T0)
    stack.release("v2", T0 + 1000)
    stack.release("v3", T0 + 2000, fail_step=2)
    stack.rollback(T0 + 2600, T0 + 2601)
    stack.release("v4", T0 + 3000)
    url = s3.backend_url().replace("?", f"/audit-{uuid.uuid4().hex[:8]}?", 1)
    upload(tmp_path / "state", url)
    return stack, url


def at(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def test_audit_on_s3_answers_what_file_answers_reading_only_the_files_around_t(
    shared: tuple[SyntheticStack, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, url = shared
    for moment in (T0 - 60, T0 + 500, T0 + 1100, T0 + 2050, T0 + 2600.5, T0 + 2700, T0 + 5000):
        assert audit(url, "prod", at(moment)) == audit(stack.url, "prod", at(moment)), moment
    read: list[str] = []
    real = automation.audit._read_json
    monkeypatch.setattr(automation.audit, "_read_json", lambda files, name: read.append(name) or real(files, name))
    report = audit(url, "prod", at(T0 + 1100))
    assert {m.version: m.traffic_percent for m in report.models}["v2"] > 0
    assert 0 < len(read) <= 5, read  # of 20 files in the bucket


def test_verify_on_s3_is_intact_then_names_an_edited_and_a_deleted_object(shared: tuple[SyntheticStack, str]) -> None:
    stack, url = shared
    report = verify(url, "prod")
    assert report.intact and report.sealed_records == 4 and report.head == verify(stack.url, "prod").head
    bucket = Bucket.from_backend_url(url)
    client, prefix = bucket.client(), bucket.key(".pulumi/history/mlrelease/prod/")
    names = sorted(
        (o["Key"].removeprefix(prefix) for o in bucket.list(".pulumi/history/mlrelease/prod/")),
        key=lambda n: int(n.split("-")[1].split(".")[0]),
    )
    histories = [n for n in names if n.endswith(".history.json")]
    edited, deleted = histories[1], histories[2]
    record = json.loads(client.get_object(Bucket=bucket.name, Key=prefix + edited)["Body"].read())
    record["message"] = "nothing to see here"
    client.put_object(Bucket=bucket.name, Key=prefix + edited, Body=json.dumps(record).encode())
    client.delete_object(Bucket=bucket.name, Key=prefix + deleted)
    broken = verify(url, "prod")
    assert not broken.intact
    assert {(b.kind, b.file) for b in broken.breaks} >= {("edited", edited), ("deleted", deleted)}, broken.breaks


def test_an_unreachable_bucket_and_a_missing_stack_are_one_line(s3: S3Server, s3_env: dict[str, str]) -> None:
    url = s3.backend_url()
    with pytest.raises(AuditError, match=r"^no history for stack nobody-\w+ in s3://"):
        audit(url, f"nobody-{uuid.uuid4().hex[:6]}", at(T0))
    dead = "s3://mlrelease-state?endpoint=http://127.0.0.1:9&use_path_style=true&disable_https=true&region=us-east-1"
    with pytest.raises(AuditError, match=r"^cannot list s3://mlrelease-state/\.pulumi/history/mlrelease/prod/: .*"
                       r"check the backend's endpoint and credentials \(AWS_\* for s3://\)$"):  # fmt: skip
        audit(dead, "prod", at(T0))
    assert stack_outputs(dead, "mlrelease", "prod") is None  # the caller asks the engine, which says why
