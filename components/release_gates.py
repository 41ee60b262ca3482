"""``ReleaseGates``: the four promotion gates, run in the dynamic provider's ``check``.

``check`` runs on every ``pulumi preview`` and every ``pulumi up``, before any resource changes, so a failing
gate fails the preview and nothing is touched. There is no input that skips a gate: the provider enforces the
prod policy bounds itself (the CrossGuard pack in ``policy/`` enforces the same table), then runs every gate.
Results are cached by the gate runner (artifact digests, data digests, thresholds), so the ``check`` of an
``up`` reuses its preview's evidence. The evidence is recorded in stack state, so history shows why a release
passed or was blocked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, ResourceProvider, UpdateResult

from components.gate_inputs import DriftFiles, DriftLog, GateInputError, GateInputs, ModelRef, check_model
from components.policy import GATES_KIND, violations
from components.spec import ReleaseSpec, resolve
from serving.release_metrics import ReleaseMetrics


def gate_inputs(props: dict[str, Any]) -> GateInputs:
    """The gate runner's inputs from the resource's properties."""
    spec = ReleaseSpec.model_validate(props["spec"])
    project = Path(props["project_dir"])
    data = spec.data
    if data.drift_reference and data.drift_current:
        drift: DriftFiles | DriftLog = DriftFiles(
            reference=resolve(data.drift_reference, project), current=resolve(data.drift_current, project)
        )
    else:
        drift = DriftLog(log_dir=Path(props["inference_log_dir"]), window_hours=data.drift_window_hours)
    incumbent = props.get("incumbent")
    return GateInputs(
        environment=spec.environment,
        candidate=ModelRef.model_validate(props["candidate"]),
        incumbent=ModelRef.model_validate(incumbent) if incumbent else None,
        holdout=resolve(data.holdout, project),
        holdout_sha256=data.holdout_sha256,
        label=data.label,
        drift=drift,
        gates=spec.gates,
    )


def _refused(news: dict[str, Any], reason: str) -> CheckResult:
    """A check failure on no property: the engine then prints ``... resource 'release-gates' has a problem: <reason>``.

    With a property it prints that property's whole value first (the release spec, as a Go map), and
    ``pulumi preview`` by hand showed a screen of map before the one sentence that matters.
    """
    return CheckResult(news, [CheckFailure("", reason)])


def _check_restore(news: dict[str, Any]) -> CheckResult:
    """A restore of a release this stack verified: its artifact digest is checked again, its gates are not re-run.

    The gates judged it when it was released; judging it now against the version being rolled back from
    would only delay the rollback. Its data digests are those recorded when it was verified.
    """
    restore = news["restore"]
    if restore.get("refusal"):
        return _refused(news, restore["refusal"])
    try:
        candidate = check_model("restored model", ModelRef.model_validate(news["candidate"]))
    except GateInputError as exc:
        return _refused(news, str(exc))
    evidence = {
        "restore": True,
        "passed": True,
        "environment": ReleaseSpec.model_validate(news["spec"]).environment,
        "candidate": candidate.model_dump(mode="json"),
        "incumbent": None,
        "data": restore.get("data_digests"),
        "gates": {},
        "explanation": (
            f"restore of verified release {candidate.version} (rolled back from {restore.get('from_version')}):"
            " artifact digest re-checked; its gates passed when it was released"
        ),
    }
    return CheckResult({**news, "evidence": evidence}, [])


class ReleaseGatesProvider(ResourceProvider):
    """Runs the gates in ``check``; create and update only record the evidence that check produced."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        breaches = violations(news["spec"])
        if breaches:
            return _refused(news, "prod policy: " + "; ".join(breaches))
        if news.get("restore"):
            return _check_restore(news)
        from components.gates import run_gates  # the provider's: the program only declares the gates

        try:
            evidence = run_gates(gate_inputs(news), work_dir=Path(news["work_dir"]), cache_dir=Path(news["cache_dir"]))
        except GateInputError as exc:
            return _refused(news, str(exc))
        # work_dir is <run_dir>/gates: the stack's textfile metrics live beside it.
        ReleaseMetrics(Path(news["work_dir"]).parent).gates(evidence.model_dump(mode="json"))
        if not evidence.passed:
            return _refused(news, "; ".join(evidence.failures()))
        # "cached" says how this check got the evidence, not what it is: state must not change with it.
        return CheckResult({**news, "evidence": evidence.model_dump(mode="json", exclude={"cached"})}, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"gates-{props['candidate']['version']}", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("spec", "candidate", "incumbent", "evidence", "restore")
        return DiffResult(changes=any(olds.get(k) != news.get(k) for k in keys), replaces=[])

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=news)


class ReleaseGates(pulumi.dynamic.Resource):
    """The gates a candidate passed, with their evidence."""

    evidence: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        *,
        spec: ReleaseSpec,
        candidate: pulumi.Input[dict],
        incumbent: pulumi.Input[dict | None],
        restore: pulumi.Input[dict | None],
        project_dir: Path,
        work_dir: Path,
        inference_log_dir: Path,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "kind": GATES_KIND,
            "spec": spec.model_dump(mode="json"),
            "candidate": candidate,
            "incumbent": incumbent,
            "restore": restore,
            "project_dir": str(project_dir),
            "work_dir": str(work_dir / "gates"),
            "cache_dir": str(work_dir / "gate-cache"),
            "inference_log_dir": str(inference_log_dir),
            "evidence": None,
        }
        super().__init__(ReleaseGatesProvider(), resource_name, props, opts)
