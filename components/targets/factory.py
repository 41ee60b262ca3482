"""The one place that names a concrete target: ``mlrelease:target`` in, a target (and its resources) out.

In the manner of Flagger's router factory. A target is addressed by its *settings*, a JSON-able mapping with
a ``kind`` that a dynamic provider keeps in its state and re-opens on every later command; no credential is
in it (a kubeconfig is named by path). ``objects`` gives the Pulumi resources a target declares itself (the
local runtime declares none: its processes are the dynamic resources' doing).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi

from components.spec import ReleaseSpec, SpecError, load_spec
from components.targets.base import Target, TargetError
from components.targets.kubernetes import KubernetesSettings, KubernetesTarget
from components.targets.local import RUN_ROOT, LocalTarget


def run_dir(project_dir: Path, stack: str) -> Path:
    """Where a stack keeps what runs on this machine (every target has one: Prometheus, tokens, traffic)."""
    return (Path(project_dir) / RUN_ROOT / stack).resolve()


def settings_for(spec: ReleaseSpec, project_dir: Path, stack: str) -> dict[str, Any]:
    """The settings of the target ``spec`` releases to, for the stack ``stack`` of ``project_dir``."""
    where = str(run_dir(project_dir, stack))
    if spec.target == "kubernetes":
        kube = spec.kubernetes
        assert kube is not None  # ReleaseSpec refuses kubernetes without its section
        return KubernetesSettings(
            run_dir=where,
            kubeconfig=str(kube.kubeconfig_path(project_dir)),
            context=kube.context,
            namespace=kube.namespace,
            model_name=spec.model.name,
            router_replicas=kube.router_replicas,
            prometheus_url=kube.prometheus_url,
        ).model_dump(mode="json")
    return {"kind": "local", "run_dir": where}


def for_config(project_dir: Path, stack: str, config: Mapping[str, Any]) -> Target:
    """The target a stack's ``mlrelease:*`` config names (what the commands act on between updates).

    A config that does not validate still names its target when it says ``local`` (the default), so a
    command can show and revert the live split; a kubernetes target needs its valid section.
    """
    try:
        spec = load_spec(config)
    except SpecError as exc:
        if config.get("target", "local") == "local":
            return LocalTarget(run_dir(project_dir, stack))
        raise TargetError(str(exc)) from None
    return open_target(settings_for(spec, project_dir, stack))


def open_target(settings: Mapping[str, Any]) -> Target:
    """The target that ``settings`` address (what a provider's state or a stack's config names)."""
    kind = settings.get("kind", "local")
    if kind == "local":
        return LocalTarget(Path(settings["run_dir"]))
    if kind == "kubernetes":
        return KubernetesTarget(settings)
    raise TargetError(f"unknown target kind {kind!r}: mlrelease:target is local or kubernetes")


def for_props(props: Mapping[str, Any]) -> Target:
    """The target of a dynamic resource's properties (state written before ``target`` was kept: local)."""
    return open_target(props.get("target") or {"kind": "local", "run_dir": props["run_dir"]})


def check(spec: ReleaseSpec, project_dir: Path, stack: str) -> None:
    """Refuse, before any resource is registered, a target that cannot be reached as configured."""
    target = open_target(settings_for(spec, project_dir, stack))
    if isinstance(target, KubernetesTarget):  # the kubeconfig context and the namespace
        target.check_namespace()


class NoObjects:
    """A target that declares no resources of its own."""

    def runtime(self, feature_names: list[str] | None) -> list[pulumi.Resource]:
        return []

    def versions(self, models: list[dict[str, Any]]) -> list[pulumi.Resource]:
        return []


def objects(
    name: str, spec: ReleaseSpec, project_dir: Path, stack: str, *, parent: pulumi.Resource, after: list[Any]
) -> Any:
    """The resources the target declares (runtime objects, then per-version objects), parented to ``parent``.

    Every one of them depends on ``after`` (the gates): a blocked candidate changes no object.
    """
    if spec.target == "kubernetes":
        from components.targets.kubernetes_objects import KubernetesObjects  # pulumi-kubernetes only when used

        return KubernetesObjects(name, spec, run_dir(project_dir, stack), project_dir, parent, after)
    return NoObjects()
