"""Model directories in object storage, on the real store: fetched into the content-addressed cache, the
artifact's digest checked before anything can serve it; a tampered object is refused with the local sentence."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from automation.s3server import S3Server
from automation.stores import pod_fetch
from automation.stores.artifacts import fetch_model_dir
from automation.stores.s3 import Bucket
from components.spec import ModelSpec
from serving.artifacts import ArtifactDigestError, ModelDirError

ARTIFACT = b"a model's bytes " * 1000
SHA = hashlib.sha256(ARTIFACT).hexdigest()


@pytest.fixture
def remote(s3: S3Server, s3_env: dict[str, str]) -> tuple[str, Bucket]:
    """A model directory at a prefix of this test's own: settings, artifact, schema."""
    fetch_model_dir.cache_clear()
    url = s3.backend_url().replace("mlrelease-state?", f"mlrelease-state/models/{uuid.uuid4().hex[:8]}/?", 1)
    bucket = Bucket.from_backend_url(url)
    settings = {"name": "credit-default", "implementation": "m.M", "parameters": {"uri": "./model.joblib"}}
    for name, body in (
        ("model-settings.json", json.dumps(settings).encode()),
        ("model.joblib", ARTIFACT),
        ("nested/feature-schema.json", b"{}"),
    ):
        bucket.client().put_object(Bucket=bucket.name, Key=bucket.key(name), Body=body)
    return url, bucket


def test_a_fetched_directory_is_cached_by_its_listing_and_checked_on_every_use(
    remote: tuple[str, Bucket], tmp_path: Path
) -> None:
    url, _ = remote
    local = fetch_model_dir(url, SHA, tmp_path)
    assert (local / "model.joblib").read_bytes() == ARTIFACT and (local / "nested" / "feature-schema.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [local.name]  # no partial fetch left behind
    fetch_model_dir.cache_clear()
    assert fetch_model_dir(url, SHA, tmp_path) == local  # an unchanged prefix: the same entry
    (local / "model.joblib").write_bytes(b"edited on this machine")
    fetch_model_dir.cache_clear()
    again = fetch_model_dir(url, SHA, tmp_path)  # a damaged local copy is fetched again, and checked
    assert again == local and (again / "model.joblib").read_bytes() == ARTIFACT


def test_a_tampered_object_is_refused_with_the_local_sentence_and_nothing_is_cached(
    remote: tuple[str, Bucket], tmp_path: Path
) -> None:
    url, bucket = remote
    bucket.client().put_object(Bucket=bucket.name, Key=bucket.key("model.joblib"), Body=ARTIFACT + b"!")
    with pytest.raises(ArtifactDigestError) as refused:
        fetch_model_dir(url, SHA, tmp_path)
    where = url.split("?", 1)[0].rstrip("/")
    actual = hashlib.sha256(ARTIFACT + b"!").hexdigest()
    assert str(refused.value) == (
        f"artifact {where}/model.joblib has sha256 {actual} but {SHA} was expected: the file changed since its"
        " digest was recorded; restore the original artifact, or rebuild it and record the new digest"
    )
    assert list(tmp_path.iterdir()) == []


def test_an_empty_prefix_an_unreachable_store_and_another_scheme_are_one_line(
    s3: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    empty = s3.backend_url().replace("mlrelease-state?", "mlrelease-state/models/none/?", 1)
    with pytest.raises(ModelDirError, match=r"^model directory s3://mlrelease-state/models/none/ holds no objects"):
        fetch_model_dir(empty, SHA, tmp_path)
    dead = "s3://mlrelease-state/models/x/?endpoint=http://127.0.0.1:9&use_path_style=true&disable_https=true"
    with pytest.raises(ModelDirError, match=r"cannot be listed .*check the endpoint .* and the AWS credentials$"):
        fetch_model_dir(dead, SHA, tmp_path)
    with pytest.raises(ValueError, match="neither a local directory nor s3://BUCKET/PREFIX/"):
        ModelSpec(name="m", version="v1", path="gs://bucket/model/", sha256=SHA)
    with pytest.raises(ValueError, match="neither a local directory nor s3://BUCKET/PREFIX/"):
        ModelSpec(name="m", version="v1", path="s3://bucket-only", sha256=SHA)


def test_the_pods_fetch_step_moves_a_checked_copy_into_place_and_exits_2_on_a_tampered_object(
    remote: tuple[str, Bucket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, bucket = remote
    into = tmp_path / "models" / "model"
    assert pod_fetch.main([url, SHA, str(into)]) == 0
    assert (into / "model.joblib").read_bytes() == ARTIFACT
    fetch_model_dir.cache_clear()
    assert pod_fetch.main([url, SHA, str(into)]) == 0 and (into / "model.joblib").read_bytes() == ARTIFACT  # a rerun
    bucket.client().put_object(Bucket=bucket.name, Key=bucket.key("model.joblib"), Body=ARTIFACT + b"!")
    fetch_model_dir.cache_clear()
    capsys.readouterr()
    assert pod_fetch.main([url, SHA, str(tmp_path / "other" / "model")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mlrelease: error: artifact s3://") and error.count("\n") == 1, error
    assert not (tmp_path / "other" / "model").exists()
    assert pod_fetch.main([url]) == 2 and "usage:" in capsys.readouterr().err
