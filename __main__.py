"""The mlrelease Pulumi program: validate the stack's config, then build one ModelDeployment."""

from pathlib import Path

import pulumi

from components.deployment import ModelDeployment
from components.spec import SpecError, load_spec
from components.stack_config import namespace_config

try:
    spec = load_spec(namespace_config())
except SpecError as exc:
    raise pulumi.RunError(str(exc)) from None

deployment = ModelDeployment(pulumi.get_stack(), spec, project_dir=Path(__file__).resolve().parent)
pulumi.export("model", {"name": spec.model.name, "version": spec.model.version, "sha256": spec.model.sha256})
pulumi.export("artifact", deployment.artifact.artifact)
