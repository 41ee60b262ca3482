"""What a model directory serves, and the sha256 check that runs before it is served.

A model directory is MLServer's layout: a ``model-settings.json`` and the artifact it names. The digest
covers exactly one file: the artifact named by ``parameters.uri`` in ``model-settings.json``, resolved
relative to the directory (as MLServer resolves it), hashed as raw bytes with sha256 and written as 64
lowercase hex digits. ``model-settings.json`` itself is not digested: it is configuration (name, version,
runtime) that the release records in stack state in clear; the artifact is the opaque thing whose bytes
must be the ones that passed the gates. A URI naming a directory, or a file outside the model directory,
is refused so that the digest always covers the bytes MLServer will load.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

SETTINGS_FILE = "model-settings.json"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


class ModelDirError(ValueError):
    """The model directory is missing or malformed; the message names the problem and the fix."""


class ArtifactDigestError(ValueError):
    """The artifact's bytes are not the ones whose digest was recorded: refuse to serve them."""


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    uri: str
    version: str | None = None


class ModelSettings(BaseModel):
    """The part of MLServer's ``model-settings.json`` that mlrelease reads."""

    model_config = ConfigDict(extra="allow")
    name: str
    implementation: str
    parameters: _Parameters


def read_settings(model_dir: Path) -> ModelSettings:
    """Parse ``model-settings.json`` of ``model_dir``, or raise ModelDirError saying what is wrong."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelDirError(
            f"model directory {model_dir} does not exist: build it (python -m serving.sample_models OUT_DIR) "
            "or pass the path of an existing MLServer model directory"
        )
    settings_path = model_dir / SETTINGS_FILE
    try:
        return ModelSettings.model_validate_json(settings_path.read_bytes())
    except FileNotFoundError:
        raise ModelDirError(
            f"{settings_path} is missing: a model directory needs an MLServer {SETTINGS_FILE} naming "
            "the model and its artifact (parameters.uri)"
        ) from None
    except (ValidationError, json.JSONDecodeError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
        where = ".".join(str(part) for part in first["loc"]) or "file"
        raise ModelDirError(
            f"{settings_path} is invalid at {where}: {first['msg']}; it needs name, implementation and parameters.uri"
        ) from None


def artifact_path(model_dir: Path) -> Path:
    """The artifact file named by ``parameters.uri``, resolved as MLServer resolves it."""
    model_dir = Path(model_dir)
    uri = read_settings(model_dir).parameters.uri
    root = model_dir.resolve()
    path = (root / uri).resolve()
    if not path.is_relative_to(root):
        raise ModelDirError(
            f"{model_dir / SETTINGS_FILE}: parameters.uri {uri!r} points outside the model directory; "
            "copy the artifact into the directory and name it relative to it"
        )
    if not path.is_file():
        raise ModelDirError(
            f"artifact {path} named by parameters.uri in {model_dir / SETTINGS_FILE} is not a file: "
            "restore the artifact or fix parameters.uri"
        )
    return path


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes as 64 lowercase hex digits, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_digest(model_dir: Path) -> str:
    """sha256 of the artifact that ``model_dir`` serves (see the module docstring for what is covered)."""
    return file_sha256(artifact_path(model_dir))


def verify_artifact(model_dir: Path, expected_sha256: str) -> Path:
    """Return the artifact path if its sha256 is ``expected_sha256``; raise ArtifactDigestError if not."""
    expected = expected_sha256.strip().lower()
    if not _HEX64.fullmatch(expected):
        raise ArtifactDigestError(
            f"expected digest {expected_sha256!r} is not a sha256 (64 hex digits): pass the value printed "
            "by serving.artifacts.artifact_digest or python -m serving.sample_models"
        )
    path = artifact_path(model_dir)
    actual = file_sha256(path)
    if actual != expected:
        raise ArtifactDigestError(
            f"artifact {path} has sha256 {actual} but {expected} was expected: the file changed since its "
            "digest was recorded; restore the original artifact, or rebuild it and record the new digest"
        )
    return path
