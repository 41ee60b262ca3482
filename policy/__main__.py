"""CrossGuard pack: every ``ReleaseGates`` resource of a prod stack respects ``components.policy.PROD_BOUNDS``."""

from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from components.policy import GATES_KIND, violations


def _prod_thresholds(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.props.get("kind") != GATES_KIND:
        return
    for line in violations(args.props.get("spec") or {}):
        report_violation(line, None)


PolicyPack(
    name="mlrelease-prod-thresholds",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        ResourceValidationPolicy(
            name="prod-thresholds-within-policy",
            description="Prod gate and canary thresholds are no looser than components/policy.py allows.",
            validate=_prod_thresholds,
        )
    ],
)
