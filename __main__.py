"""The mlrelease Pulumi program: validate the stack's config, then build one ModelDeployment."""

from pathlib import Path

import pulumi

from components.deployment import ModelDeployment
from components.spec import SpecError, load_spec
from components.stack_config import namespace_config
from components.targets import factory
from components.targets.base import TargetError
from serving.artifacts import ArtifactDigestError, ModelDirError

stack = pulumi.get_stack()
project_dir = Path(__file__).resolve().parent
try:
    spec = load_spec(namespace_config())
    factory.check(spec, project_dir, stack)
    spec.model.model_dir(project_dir)  # one in object storage is fetched and its digest checked, once
except (SpecError, TargetError, ModelDirError, ArtifactDigestError) as exc:
    raise pulumi.RunError(str(exc)) from None

# The stack's own outputs hold its last verified release: the incumbent of this one.
this_stack = pulumi.StackReference(f"{pulumi.get_organization()}/{pulumi.get_project()}/{stack}")
deployment = ModelDeployment(
    "release",
    spec,
    project_dir=project_dir,
    stack=stack,
    verified=this_stack.get_output("verified"),
)
pulumi.export("model", {"name": spec.model.name, "version": spec.model.version, "sha256": spec.model.sha256})
pulumi.export("verified", deployment.checkpoint.record)
