"""``VerifiedCheckpoint``: the record of the last release that passed verification.

It is the last resource of a release and depends on every canary step, so it changes only when the whole
release succeeded; a failed release leaves the previous checkpoint in place. Its outputs are exported as the
stack output ``verified``, which the next release reads (the incumbent and its warm fallback) and rollback and
audit read from stack history: live model, previous model, data digests, config digest, gate evidence and
canary verdicts. ``previous_release`` is the record of the release before (its config and digests: what
``mlrelease rollback`` restores); ``restored_from`` names the version a restore rolled back from.

Each record is a link of the audit trail's hash chain (``components.audit_chain``): it seals the record before
it, its own gate evidence and the per-update files written since, so ``mlrelease audit --verify`` finds edits.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from automation.backend_files import StackHistory, stack_history
from components.audit_chain import seal
from serving.release_metrics import ReleaseMetrics

# Inputs whose change is a different verified release.
_RECORDED = (
    "live",
    "previous",
    "config",
    "data_digests",
    "config_digest",
    "evidence",
    "verdicts",
    "environment",
    "previous_release",
    "restored_from",
)


def _history(props: dict[str, Any]) -> StackHistory | None:
    """The stack's per-update files on a ``file://`` or ``s3://`` backend (the engine gives its URL and
    credentials to its plugins); None elsewhere, or for state written before the stack's name was passed: then
    no update file is sealed."""
    if not props.get("project") or not props.get("stack"):
        return None
    return stack_history(os.environ.get("PULUMI_BACKEND_URL", ""), props["project"], props["stack"])


def _sealed(props: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    outs = {**props, "verified_at": time.time()}
    return {**outs, **seal(outs, previous, _history(props), str(props.get("stack") or ""))}


def _export(outs: dict[str, Any]) -> None:
    """The verified versions (and a promoted release) as the stack's textfile metrics; ``run_dir`` is not recorded
    as part of the release (state written before it was passed has none, and exports nothing)."""
    if outs.get("run_dir"):
        ReleaseMetrics(outs["run_dir"]).checkpoint(outs)


class VerifiedCheckpointProvider(ResourceProvider):
    """Stamps the time a release was verified; everything else is recorded as given."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = _sealed(props, None)
        _export(outs)
        return CreateResult(id_=f"{props['live']['version']}@{outs['verified_at']:.0f}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [key for key in _RECORDED if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        outs = _sealed(news, olds)
        _export(outs)
        return UpdateResult(outs=outs)


class VerifiedCheckpoint(pulumi.dynamic.Resource):
    """The last verified release of a stack."""

    live: pulumi.Output[dict]
    previous: pulumi.Output[dict | None]
    config_digest: pulumi.Output[str]
    data_digests: pulumi.Output[dict]
    environment: pulumi.Output[str]
    verified_at: pulumi.Output[float]
    config: pulumi.Output[dict]
    previous_release: pulumi.Output[dict | None]
    restored_from: pulumi.Output[str | None]
    chain_sha256: pulumi.Output[str]

    def __init__(self, resource_name: str, record: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        chain = dict.fromkeys(("evidence_sha256", "history_sealed", "chain_previous_sha256", "chain_sha256"))
        super().__init__(VerifiedCheckpointProvider(), resource_name, {**record, "verified_at": None, **chain}, opts)
        # What the next release, rollback and audit read from the stack's outputs.
        self.record = pulumi.Output.all(
            live=self.live,
            previous=self.previous,
            environment=self.environment,
            config_digest=self.config_digest,
            data_digests=self.data_digests,
            verified_at=self.verified_at,
            config=self.config,
            previous_release=self.previous_release,
            restored_from=self.restored_from,
            chain_sha256=self.chain_sha256,
        )
