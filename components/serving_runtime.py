"""``ServingRuntime`` and ``ModelVersions``: the target's shared runtime and the versions it serves.

The runtime (router, telemetry) and the model servers are processes that outlive the Pulumi command; these
resources keep what is needed to re-attach (the run directory) and show liveness on ``pulumi refresh``.
``ModelVersions`` serves the candidate next to the incumbent (at weight 0 until a canary step moves traffic)
and keeps the previous verified version warm for the rollback window, still receiving shadow copies. During
an attempt it also keeps the stack's rollback target (the version verified before the incumbent) up as the
standby, so a blocked or rolled-back attempt leaves ``mlrelease rollback`` one router call from done;
``RetiredVersions``, after the checkpoint, stops the standby once the attempt is verified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from components.targets.base import Routes, RuntimeConfig, TargetError
from components.targets.factory import for_props as target
from serving.v2 import OutputSpec


class ServingRuntimeProvider(ResourceProvider):
    """Ensures the runtime is up on create/update, describes it on read, stops it on delete."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        state = target(props).ensure_runtime(RuntimeConfig.model_validate(props["config"]))
        return CreateResult(id_=state.location, outs={**props, "state": state.model_dump(mode="json")})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changes = any(olds.get(key) != news.get(key) for key in ("config", "run_dir", "target"))
        return DiffResult(changes=changes, replaces=["run_dir"] if olds.get("run_dir") != news.get("run_dir") else [])

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        state = target(news).ensure_runtime(RuntimeConfig.model_validate(news["config"]))
        return UpdateResult(outs={**news, "state": state.model_dump(mode="json")})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        try:
            state = target(props).status().model_dump(mode="json")
        except TargetError as exc:
            state = {"healthy": False, "problems": [str(exc)]}
        return ReadResult(id_=id_, outs={**props, "state": state})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        target(props).destroy()


class ServingRuntime(pulumi.dynamic.Resource):
    """The shared serving runtime of one stack."""

    state: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        *,
        settings: dict[str, Any],
        config: RuntimeConfig,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "run_dir": settings["run_dir"],
            "target": settings,
            "config": config.model_dump(mode="json"),
            "state": None,
        }
        super().__init__(ServingRuntimeProvider(), resource_name, props, opts)


def _wanted(props: dict[str, Any]) -> list[dict[str, Any]]:
    return [model for model in (props.get("candidate"), props.get("warm"), props.get("standby")) if model]


class ModelVersionsProvider(ResourceProvider):
    """Deploys the candidate, the warm and the standby version; removes versions no longer wanted (no traffic)."""

    def _converge(self, props: dict[str, Any], olds: dict[str, Any] | None) -> dict[str, Any]:
        runtime = target(props)
        deployed = {
            model["version"]: runtime.deploy(
                model["version"], Path(model["model_dir"]), model["sha256"], OutputSpec(**model.get("output") or {})
            ).model_dump(mode="json")
            for model in _wanted(props)
        }
        if props.get("restore"):  # traffic first: nothing may still be routed to a version about to go
            version = props["candidate"]["version"]
            runtime.set_routes(Routes(weights={version: 100}, primary=version))
        for old in _wanted(olds or {}):
            if old["version"] not in deployed:
                runtime.remove(old["version"])
        traffic = runtime.start_traffic(props["synthetic_rps"], Path(props["traffic_rows"]))
        return {**props, "deployed": deployed, "traffic": traffic.model_dump(mode="json")}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["run_dir"], outs=self._converge(props, None))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("synthetic_rps", "traffic_rows", "restore", "target")
        return DiffResult(changes=_wanted(olds) != _wanted(news) or any(olds.get(k) != news.get(k) for k in keys))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._converge(news, olds))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        runtime = target(props)
        deployed = {}
        for model in _wanted(props):
            state = runtime.deployment(model["version"])
            deployed[model["version"]] = state.model_dump(mode="json") if state else None
        return ReadResult(id_=id_, outs={**props, "deployed": deployed})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to do here: a version with traffic cannot be removed alone, and the runtime's delete
        (which follows, since versions depend on it) stops every server."""


class ModelVersions(pulumi.dynamic.Resource):
    """The model versions a stack serves: the candidate and, within the rollback window, the previous one
    (and, during an attempt, the standby).

    It also runs the optional synthetic traffic (``synthetic_rps`` > 0 replays the rows of
    ``traffic_rows`` through the router), so a local release has traffic to bake on.
    """

    deployed: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        *,
        settings: dict[str, Any],
        candidate: dict[str, Any],
        warm: pulumi.Input[dict[str, Any] | None],
        standby: pulumi.Input[dict[str, Any] | None],
        restore: bool,
        synthetic_rps: float,
        traffic_rows: Path,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "run_dir": settings["run_dir"],
            "target": settings,
            "candidate": candidate,
            "warm": warm,
            "standby": standby,
            "restore": restore,
            "synthetic_rps": synthetic_rps,
            "traffic_rows": str(traffic_rows),
            "deployed": None,
            "traffic": None,
        }
        super().__init__(ModelVersionsProvider(), resource_name, props, opts)


class RetiredVersionsProvider(ResourceProvider):
    """Stops the standby versions of a verified attempt: each only if it carries no traffic and is not primary."""

    def _retire(self, props: dict[str, Any]) -> dict[str, Any]:
        runtime, retired = target(props), []
        try:
            routes = runtime.routes()
        except TargetError:  # nothing routed: nothing to retire
            routes = None
        for version in props["versions"]:
            if routes and version in routes.weights and routes.weights[version] == 0 and routes.primary != version:
                runtime.remove(version)
                retired.append(version)
        return {**props, "retired": retired}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=props["run_dir"], outs=self._retire(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A standby named again (an attempt verified after a failed one) is retired again: it was served again.
        return DiffResult(changes=bool(news["versions"]) or olds.get("versions") != news["versions"])

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._retire(news))


class RetiredVersions(pulumi.dynamic.Resource):
    """The last resource of a release: what the verified release no longer needs stops serving.

    Only a verified attempt reaches it (it depends on the checkpoint), so a failed attempt keeps its standby.
    """

    retired: pulumi.Output[list]

    def __init__(
        self,
        resource_name: str,
        *,
        settings: dict[str, Any],
        versions: pulumi.Input[list[str]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {"run_dir": settings["run_dir"], "target": settings, "versions": versions, "retired": None}
        super().__init__(RetiredVersionsProvider(), resource_name, props, opts)
