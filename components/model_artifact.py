"""``ModelArtifact``: a model directory whose artifact digest is checked before anything else happens.

The check runs in the dynamic provider's ``check``, so it runs on every ``pulumi preview`` and ``pulumi up``:
a tampered or missing artifact fails the preview with one line naming the file, both digests and the fix, and
no resource changes. The class lives in an importable module because Pulumi pickles dynamic providers by
reference.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

from serving.artifacts import ArtifactDigestError, ModelDirError, read_settings, verify_artifact

# Inputs that identify the bytes being released: a change to any of them is a different artifact.
_IDENTITY = ("model_dir", "sha256", "name", "version")


class ModelArtifactProvider(ResourceProvider):
    """Verifies the artifact's sha256 in ``check`` and records what was verified in state."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        try:
            path = verify_artifact(news["model_dir"], news["sha256"])
            settings = read_settings(news["model_dir"])
        except (ArtifactDigestError, ModelDirError) as exc:
            prop = "sha256" if isinstance(exc, ArtifactDigestError) else "model_dir"
            return CheckResult(news, [CheckFailure(prop, str(exc))])
        return CheckResult(
            {**news, "artifact": str(path), "runtime": settings.implementation, "served_name": settings.name},
            [],
        )

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"{props['name']}@{props['version']}", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in _IDENTITY if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)


class ModelArtifact(pulumi.dynamic.Resource):
    """One model version's artifact, verified against its recorded sha256."""

    artifact: pulumi.Output[str]
    runtime: pulumi.Output[str]
    served_name: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        model_dir: str,
        sha256: str,
        name: str,
        version: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "model_dir": model_dir,
            "sha256": sha256,
            "name": name,
            "version": version,
            "artifact": None,
            "runtime": None,
            "served_name": None,
        }
        super().__init__(ModelArtifactProvider(), resource_name, props, opts)
