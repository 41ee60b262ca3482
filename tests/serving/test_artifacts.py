"""The digest covers exactly the artifact named by parameters.uri, and every bad model directory is
refused with a one-line error that names the problem and the fix."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from serving.artifacts import (
    ArtifactDigestError,
    ModelDirError,
    artifact_digest,
    artifact_path,
    verify_artifact,
)
from serving.sample_models import SampleModels


@pytest.fixture
def model_dir(sample_models: SampleModels, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(sample_models.models["incumbent"].model_dir, target)
    return target


def test_digest_is_sha256_of_the_artifact_named_by_uri(model_dir: Path) -> None:
    artifact = artifact_path(model_dir)
    assert artifact == (model_dir / "model.joblib").resolve()
    assert artifact_digest(model_dir) == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert verify_artifact(model_dir, artifact_digest(model_dir).upper()) == artifact


def test_model_settings_are_not_digested(model_dir: Path) -> None:
    before = artifact_digest(model_dir)
    settings_path = model_dir / "model-settings.json"
    settings = json.loads(settings_path.read_text())
    settings["parameters"]["version"] = "v9"
    settings_path.write_text(json.dumps(settings))
    assert artifact_digest(model_dir) == before


def test_tampered_artifact_is_refused_naming_file_digests_and_fix(model_dir: Path) -> None:
    expected = artifact_digest(model_dir)
    artifact = model_dir / "model.joblib"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    actual = artifact_digest(model_dir)
    with pytest.raises(ArtifactDigestError) as info:
        verify_artifact(model_dir, expected)
    message = str(info.value)
    assert "\n" not in message
    assert str(artifact.resolve()) in message and expected in message and actual in message
    assert "restore the original artifact" in message


@pytest.mark.parametrize(
    ("breakage", "match"),
    [
        ("no-dir", "does not exist"),
        ("no-settings", "model-settings.json is missing"),
        ("bad-json", "is invalid"),
        ("no-uri", "is invalid at parameters.uri"),
        ("uri-outside", "points outside the model directory"),
        ("uri-absolute", "points outside the model directory"),
        ("uri-symlink-out", "points outside the model directory"),
        ("artifact-missing", "is not a file"),
    ],
)
def test_bad_model_dirs_are_refused_with_one_line(model_dir: Path, breakage: str, match: str) -> None:
    settings_path = model_dir / "model-settings.json"
    settings = json.loads(settings_path.read_text())
    if breakage == "no-dir":
        shutil.rmtree(model_dir)
    elif breakage == "no-settings":
        settings_path.unlink()
    elif breakage == "bad-json":
        settings_path.write_text("{not json")
    elif breakage == "no-uri":
        del settings["parameters"]["uri"]
        settings_path.write_text(json.dumps(settings))
    elif breakage == "uri-outside":
        settings["parameters"]["uri"] = "../elsewhere.joblib"
        settings_path.write_text(json.dumps(settings))
    elif breakage == "uri-absolute":
        settings["parameters"]["uri"] = str((model_dir / "model.joblib").resolve().parent.parent / "elsewhere.joblib")
        settings_path.write_text(json.dumps(settings))
    elif breakage == "uri-symlink-out":  # a name inside the directory that leads out of it
        outside = model_dir.parent / "outside.joblib"
        shutil.copy(model_dir / "model.joblib", outside)
        (model_dir / "model.joblib").unlink()
        (model_dir / "model.joblib").symlink_to(outside)
    elif breakage == "artifact-missing":
        (model_dir / "model.joblib").unlink()
    with pytest.raises(ModelDirError, match=match) as info:
        artifact_digest(model_dir)
    assert "\n" not in str(info.value)


def test_expected_digest_must_look_like_sha256(model_dir: Path) -> None:
    with pytest.raises(ArtifactDigestError, match="is not a sha256"):
        verify_artifact(model_dir, "abc123")
