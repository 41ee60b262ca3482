"""``CanaryStep``: one traffic step of a release, as a resource updated in order after the previous step.

A step's update sets the weights, bakes and judges (``components.canary.run_step``). A failing step has already
moved all traffic back to the incumbent when its update fails with the verdict's explanation; its state keeps
the previous verdict, and the steps after it and the verified checkpoint are not touched. Because the engine
shows each step as an update, ``pulumi preview`` lists the steps an ``up`` will run.

``diff`` also reads the live split: a step whose recorded weight is no longer live (traffic was reverted by
a failing later step, a rollback or a drill) runs again on the next ``up`` instead of being skipped.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.spec import CanarySpec
from components.targets.base import TargetError
from components.targets.factory import for_props as target
from serving.release_metrics import ReleaseMetrics

_INPUTS = ("candidate", "incumbent", "weight", "canary", "restore")


class CanaryStepFailed(Exception):
    """A step's verdict was a failure; the message is the verdict's explanation."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _live(props: dict[str, Any]) -> bool:
    """Is the split this step left still in place (the candidate has at least the step's weight)?"""
    try:
        routes = target(props).routes()
    except TargetError:
        return False
    return routes.weights.get(props["candidate"], 0) >= props["weight"]


class CanaryStepProvider(ResourceProvider):
    """Runs the step on create and update; the step's verdict is its state."""

    def _run(self, props: dict[str, Any]) -> dict[str, Any]:
        # Imported here, in the provider process when a step runs: the statistics (scipy) are not needed by
        # the program, which only declares the step, nor by a diff that finds the step unchanged.
        from components.canary import first_release, promote, run_step

        runtime, candidate, incumbent = target(props), props["candidate"], props.get("incumbent")
        if not incumbent:
            started = time.time()
            routes = first_release(runtime, candidate)
            verdict = {
                "step": props["index"],
                "weight": props["weight"],
                "candidate": candidate,
                "incumbent": None,
                "passed": True,
                "explanation": (
                    f"restore of verified release {candidate}: it serves 100%, nothing is compared"
                    if props.get("restore")
                    else f"first release: no incumbent to compare with; {candidate} serves 100%"
                ),
                "routes": routes.model_dump(mode="json"),
                "started_at": started,
                "ended_at": time.time(),
            }
            return {**props, "verdict": verdict}
        result = run_step(
            runtime,
            step=int(props["index"]),
            weight=props["weight"],
            candidate=candidate,
            incumbent=incumbent,
            spec=CanarySpec.model_validate(props["canary"]),
            progress=_say,
        )
        ReleaseMetrics(props["run_dir"]).canary(result.model_dump(mode="json"))
        if not result.passed:
            raise CanaryStepFailed(result.explanation)
        if props["weight"] >= 100:
            promote(runtime, candidate, incumbent)
        return {**props, "verdict": result.model_dump(mode="json")}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"step-{props['index']}", outs=self._run(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = any(olds.get(key) != news.get(key) for key in _INPUTS)
        return DiffResult(changes=changed or not _live(olds))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._run(news))


class CanaryStep(pulumi.dynamic.Resource):
    """One canary step: ``weight`` % of traffic on the candidate, judged against the incumbent."""

    verdict: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        *,
        settings: dict[str, Any],
        index: int,
        weight: float,
        candidate: str,
        incumbent: pulumi.Input[str | None],
        canary: CanarySpec,
        restore: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "run_dir": settings["run_dir"],
            "target": settings,
            "index": index,
            "weight": weight,
            "candidate": candidate,
            "incumbent": incumbent,
            "canary": canary.model_dump(mode="json"),
            "restore": restore,
            "verdict": None,
        }
        super().__init__(CanaryStepProvider(), resource_name, props, opts)
