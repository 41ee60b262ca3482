"""``ModelDeployment``: the component that turns a stack's release spec into a gated, canaried release.

Resources, in dependency order (children of the component, with stable names: renaming one replaces it):

    <name>-gates        artifact and data digests, then the evaluation, latency, memory and drift gates, all
                        in ``check`` (every preview and up), before any resource changes
    <name>-runtime      the target's shared runtime (router, telemetry)
    <name>-versions     candidate served next to the incumbent; the previous version kept warm, and during an
                        attempt the stack's rollback target too (a failed attempt leaves it warm)
    <name>-canary-<i>   one resource per traffic step, each after the previous
    <name>-checkpoint   the verified release: changes only when every step passed
    <name>-retire       stops the standby (the version before the incumbent) once the release is verified

The incumbent is the live model of the stack's last verified checkpoint, read from the stack's own outputs.
A restore (``mlrelease:restore``, set by ``mlrelease rollback``) converges to a release the stack verified
before: digests re-checked, all traffic on it at once, no canary against the version being rolled back.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pulumi

from components.canary_step import CanaryStep
from components.checkpoint import VerifiedCheckpoint
from components.gate_inputs import SCHEMA_FILE, FeatureSchema
from components.release_gates import ReleaseGates
from components.serving_runtime import ModelVersions, RetiredVersions, ServingRuntime
from components.spec import ReleaseSpec, RestoreSpec, resolve
from components.targets import factory
from components.targets.base import RuntimeConfig

TYPE_TOKEN = "mlrelease:index:ModelDeployment"


def model_ref(spec: ReleaseSpec, project_dir: Path) -> dict[str, Any]:
    """The candidate as the gates and the target address it, with where its answers hold the score.

    A model directory in object storage also names its ``source``: the runner serves and gates its checked local
    copy, while a Kubernetes target's pods fetch from the source themselves (the runner's disk is not theirs).
    """
    model = spec.model
    ref = {
        "name": model.name,
        "version": model.version,
        "model_dir": str(model.model_dir(project_dir)),
        "sha256": model.sha256,
        "output": model.output.model_dump(mode="json"),
    }
    if model.path.startswith("s3://"):
        ref["source"] = model.path
    return ref


def feature_names(spec: ReleaseSpec, project_dir: Path) -> list[str] | None:
    """Feature columns from the model's schema (or the one beside the held-out set), for the inference log.

    None when there is no schema: the gates then stop the release with an error that says what to add.
    """
    model_dir, holdout = spec.model.model_dir(project_dir), resolve(spec.data.holdout, project_dir)
    for path in (model_dir / SCHEMA_FILE, holdout.parent / SCHEMA_FILE):
        try:
            return FeatureSchema.model_validate_json(path.read_bytes()).names
        except (OSError, ValueError):
            continue
    return None


def config_digest(spec: ReleaseSpec) -> str:
    """sha256 of the validated release config, so audit can tell two configurations apart."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return bool(a and b) and (a["version"], a["sha256"]) == (b["version"], b["sha256"])


def _differs(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["version"], a["sha256"]) != (b["version"], b["sha256"])


def _without_history(record: dict[str, Any]) -> dict[str, Any]:
    """A verified record as the next one keeps it: one level deep, so the chain does not grow."""
    return {key: value for key, value in record.items() if key != "previous_release"}


def release_roles(
    verified: dict[str, Any] | None,
    candidate: dict[str, str],
    window_seconds: float,
    now: float,
    restore: RestoreSpec | None = None,
) -> dict[str, Any]:
    """Which model is the incumbent the candidate is judged against, which stays warm, what rollback returns to.

    - a restore (``mlrelease rollback``): no incumbent and nothing warm, the candidate takes all traffic; only
      the stack's verified previous release (or its live one, once restored) may be restored, else ``refusal``;
    - no verified release yet: first release, no incumbent;
    - the candidate is already the verified live model (nothing changed): the incumbent stays the one it
      was verified against, so every input is unchanged and the update changes nothing; that previous
      model stays warm until the rollback window has passed;
    - otherwise the verified live model is the incumbent, warm beside the candidate, and its record becomes
      ``previous_release``: the config and digests a rollback restores. The verified previous model, while
      still inside its rollback window, stays up as ``standby`` for the length of the attempt: if the attempt
      is blocked or rolled back, the stack's rollback target is still warm and ``mlrelease rollback`` moves
      traffic in one router call. A verified attempt retires it (``RetiredVersions``).
    """
    if restore is not None:
        restored, refusal = None, None
        if verified and _same(verified.get("live"), candidate):
            restored = verified
        elif verified and _same(verified.get("previous"), candidate):
            restored = verified.get("previous_release") or {}
        else:
            live = (verified or {}).get("live") or {}
            previous = (verified or {}).get("previous") or {}
            refusal = (
                f"mlrelease:restore names {candidate['version']}, which is neither the verified live"
                f" ({live.get('version')}) nor the verified previous ({previous.get('version')}) release of this"
                " stack: only a verified release can be restored; remove mlrelease:restore and release it"
                " through the gates"
            )
        return {
            "incumbent": None,
            "warm": None,
            "previous_release": None,
            "standby": None,
            "restore": {
                **restore.model_dump(mode="json"),
                "refusal": refusal,
                "data_digests": (restored or {}).get("data_digests"),
            },
        }
    if not verified:
        return {"incumbent": None, "warm": None, "standby": None, "previous_release": None, "restore": None}
    live, previous = verified.get("live"), verified.get("previous")
    within = now < float(verified.get("verified_at") or 0) + window_seconds
    if _same(live, candidate):
        return {
            "incumbent": previous,
            "warm": previous if within else None,
            "standby": None,
            "previous_release": verified.get("previous_release"),
            "restore": None,
        }
    labels = {candidate["version"], (live or {}).get("version")}
    standby = previous if within and previous and previous["version"] not in labels else None
    return {
        "incumbent": live,
        "warm": live,
        "standby": standby,
        "previous_release": _without_history(verified),
        "restore": None,
    }


class ModelDeployment(pulumi.ComponentResource):
    """A model release on one stack: gates, canary steps and the verified checkpoint."""

    def __init__(
        self,
        name: str,
        spec: ReleaseSpec,
        *,
        project_dir: Path,
        stack: str,
        verified: pulumi.Input[dict[str, Any] | None],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        settings = factory.settings_for(spec, project_dir, stack)
        run_dir = Path(settings["run_dir"])
        candidate = model_ref(spec, project_dir)
        roles = pulumi.Output.from_input(verified).apply(
            lambda v: release_roles(v, candidate, spec.rollback.window_seconds, time.time(), spec.restore)
        )
        restore = roles.apply(lambda r: r["restore"])
        incumbent = roles.apply(lambda r: r["incumbent"])

        self.gates = ReleaseGates(
            f"{name}-gates",
            spec=spec,
            candidate=candidate,
            incumbent=incumbent,
            restore=restore,
            project_dir=project_dir,
            work_dir=run_dir,
            inference_log_dir=run_dir / "log",
            opts=pulumi.ResourceOptions(parent=self),
        )
        features = feature_names(spec, project_dir)
        # The target's own objects (pulumi-kubernetes resources on that target) come after the gates, like
        # everything a release changes: a blocked candidate changes nothing.
        objects = factory.objects(name, spec, project_dir, stack, parent=self, after=[self.gates])
        runtime_objects = objects.runtime(features)
        self.runtime = ServingRuntime(
            f"{name}-runtime",
            settings=settings,
            config=RuntimeConfig(
                model_name=spec.model.name,
                feature_names=features,
                shadow_fraction=spec.canary.shadow_fraction,
                decision_threshold=spec.canary.comparison.decision_threshold,
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.gates, *runtime_objects]),
        )
        warm = roles.apply(lambda r: r["warm"])
        standby = roles.apply(lambda r: r["standby"])
        served = roles.apply(
            lambda r: [
                m for m in (candidate, r["warm"], r["standby"]) if m and (m is candidate or _differs(m, candidate))
            ]
        )
        version_objects = served.apply(objects.versions)
        self.versions = ModelVersions(
            f"{name}-versions",
            settings=settings,
            candidate=candidate,
            warm=warm,
            standby=standby,
            restore=spec.restore is not None,
            synthetic_rps=spec.canary.synthetic_rps,
            traffic_rows=resolve(spec.data.holdout, project_dir),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=version_objects.apply(lambda made: [self.runtime, self.gates, *made])
            ),
        )
        previous: pulumi.Resource = self.versions
        self.steps: list[CanaryStep] = []
        for index, weight in enumerate(spec.canary.steps, start=1):
            step = CanaryStep(
                f"{name}-canary-{index}",
                settings=settings,
                index=index,
                weight=weight,
                candidate=candidate["version"],
                incumbent=incumbent.apply(lambda m: m["version"] if m else None),
                canary=spec.canary,
                restore=spec.restore is not None,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
            )
            self.steps.append(step)
            previous = step
        self.checkpoint = VerifiedCheckpoint(
            f"{name}-checkpoint",
            {
                "environment": spec.environment,
                "live": candidate,
                "previous": incumbent,
                "config": spec.model_dump(mode="json"),
                "config_digest": config_digest(spec),
                "data_digests": self.gates.evidence.apply(lambda e: e["data"] if e else None),
                "evidence": self.gates.evidence,
                "verdicts": [step.verdict for step in self.steps],
                "previous_release": roles.apply(lambda r: r["previous_release"]),
                "restored_from": spec.restore.from_version if spec.restore else None,
                "run_dir": str(run_dir),
                "project": pulumi.get_project(),
                "stack": pulumi.get_stack(),
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[previous]),
        )
        self.retired = RetiredVersions(
            f"{name}-retire",
            settings=settings,
            versions=standby.apply(lambda m: [m["version"]] if m else []),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.checkpoint]),
        )
        self.register_outputs({"verified": self.checkpoint.record, "routes": self.steps[-1].verdict})
