"""The validated release spec: stack config in, a typed spec out, or one line naming the bad key.

Stack config is the only input a release has, so every key is checked before any resource is touched:
the error names the key as it is written in ``Pulumi.<stack>.yaml``, the bad value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

NAMESPACE = "mlrelease"


class SpecError(ValueError):
    """Stack config that cannot describe a release; the message is one line naming key, value and fix."""


class ModelSpec(BaseModel):
    """The model a stack should serve: an MLServer model directory and the digest its artifact must have."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="model name clients call")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="version label")
    path: str = Field(min_length=1, description="model directory, absolute or relative to the project")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the artifact (64 lowercase hex)")

    def model_dir(self, project_dir: Path) -> Path:
        """The model directory as an absolute path (relative paths are taken from the project directory)."""
        path = Path(self.path)
        return path if path.is_absolute() else (project_dir / path).resolve()


class ReleaseSpec(BaseModel):
    """Everything a stack's config says about a release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelSpec


def load_spec(config: Mapping[str, Any]) -> ReleaseSpec:
    """Validate the ``mlrelease:*`` keys of a stack's config (keys without the namespace prefix)."""
    try:
        return ReleaseSpec.model_validate(dict(config))
    except ValidationError as exc:
        # A misspelled key also shows up as a missing one: name the misspelling first.
        error = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        key = f"{NAMESPACE}:" + ".".join(str(part) for part in error["loc"])
        if error["type"] == "missing":
            raise SpecError(f"stack config {key} is missing: set it in Pulumi.<stack>.yaml") from None
        if error["type"] == "extra_forbidden":
            raise SpecError(
                f"stack config {key} is not a known key: remove it or fix its spelling"
                f" (allowed: {_allowed(error['loc'])})"
            ) from None
        raise SpecError(
            f"stack config {key} = {error.get('input')!r} is not allowed: {error['msg']}"
            f"{_described(error['loc'])}"
        ) from None


def _allowed(loc: tuple[int | str, ...]) -> str:
    model: type[BaseModel] = ReleaseSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return ", ".join(model.model_fields)


def _described(loc: tuple[int | str, ...]) -> str:
    if len(loc) == 2 and loc[0] == "model":
        field = ModelSpec.model_fields.get(str(loc[1]))
        if field and field.description:
            return f" (expected: {field.description})"
    return ""
