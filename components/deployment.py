"""``ModelDeployment``: the component that turns a stack's release spec into resources.

Children are parented to the component and keep stable names: renaming a child would make Pulumi replace it.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from components.model_artifact import ModelArtifact
from components.spec import ReleaseSpec

TYPE_TOKEN = "mlrelease:index:ModelDeployment"


class ModelDeployment(pulumi.ComponentResource):
    """A model release on one stack; today it verifies and records the artifact to be served."""

    def __init__(
        self,
        name: str,
        spec: ReleaseSpec,
        *,
        project_dir: Path,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        model = spec.model
        self.artifact = ModelArtifact(
            f"{name}-artifact",
            model_dir=str(model.model_dir(project_dir)),
            sha256=model.sha256,
            name=model.name,
            version=model.version,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.model_version = pulumi.Output.from_input(model.version)
        self.model_sha256 = pulumi.Output.from_input(model.sha256)
        self.register_outputs(
            {
                "model_version": self.model_version,
                "model_sha256": self.model_sha256,
                "artifact": self.artifact.artifact,
            }
        )
