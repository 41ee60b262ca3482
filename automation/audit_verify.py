"""``mlrelease audit --verify``: walk a stack's whole history and report every break of its hash chain.

The chain (``components.audit_chain``) is carried by the verified checkpoint records. Walking the per-update
files in the engine's order, each new record must digest to its own ``chain_sha256``, follow the record before
it (``chain_previous_sha256``), carry evidence that digests to ``evidence_sha256``, and every per-update file
it sealed must still be there with the digest it had. Copies of an unchanged record in later checkpoint files
must digest the same. A destroy ends a chain: the next release's record starts a new one and seals every file
before it, the destroy's included. Files written after the last seal are the unsealed head: the next verified
release seals them, and until then only the bucket's versioning or object lock protects them (docs/audit.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from automation.audit import AuditError, history_dir, no_history
from automation.backend_files import PROJECT_NAME, StackHistory, decode
from components.audit_chain import UPDATE_FILE, digest, file_digest, record_digest, update_files

CHECKPOINT = "release-checkpoint"  # the URN's last part of ModelDeployment's VerifiedCheckpoint
BreakKind = Literal["edited", "deleted", "inserted", "unreadable", "chain", "evidence"]


class Break(BaseModel):
    """One place where the history no longer matches what was sealed."""

    kind: BreakKind
    file: str = Field(description="the per-update file where the break shows")
    detail: str


class VerifyReport(BaseModel):
    """What ``audit --verify`` found: ``intact`` only when nothing broke."""

    stack: str
    intact: bool
    updates: int = Field(description="per-update history records walked")
    sealed_records: int = Field(description="verified checkpoint records that carry the chain")
    unchained_records: int = Field(description="records written before the chain existed (not verifiable)")
    head: str | None = Field(description="chain_sha256 of the latest sealed record: the chain's head")
    head_file: str | None = Field(description="the checkpoint file that first carried the head")
    unsealed: list[str] = Field(description="per-update files after the last seal (the next release seals them)")
    breaks: list[Break] = Field(description="every break, in history order; the first is the earliest")


def _checkpoint_record(history: StackHistory, name: str) -> dict[str, Any] | None:
    """The verified checkpoint's outputs in one per-update checkpoint file (None: no release verified yet)."""
    document = decode(name, history.read(name))
    for resource in ((document.get("checkpoint") or {}).get("latest") or {}).get("resources") or []:
        if resource.get("urn", "").rsplit("::", 1)[-1] == CHECKPOINT:
            return resource.get("outputs") or {}
    return None


def verify(backend_url: str, stack: str, *, project: str = PROJECT_NAME) -> VerifyReport:
    """Walk every per-update file of ``stack`` and check each link of the chain against the files."""
    history = history_dir(backend_url, project, stack)
    try:
        files = update_files(history, stack)
    except OSError as exc:
        raise AuditError(f"{exc}: check the backend's endpoint and credentials (AWS_* for s3://)") from None
    if not files:
        raise AuditError(no_history(stack, backend_url))
    names = [name for _, name in files]
    breaks: list[Break] = []
    seen: dict[str, str] = {}  # every file sealed so far -> its sealed digest
    head: dict[str, Any] | None = None  # the latest distinct record, chained or not
    head_file, chained_head, sealed_records, unchained, last_sealed = None, None, 0, 0, -1
    for position, name in enumerate(names):
        if not name.endswith((".checkpoint.json", ".checkpoint.json.gz")):
            continue
        try:
            record = _checkpoint_record(history, name)
        except (OSError, ValueError) as exc:
            breaks.append(Break(kind="unreadable", file=name, detail=f"cannot be read as a checkpoint: {exc}"))
            continue
        if not record:  # destroyed: the next release starts a new chain (this file is sealed by it)
            head = None
            continue
        chained = record.get("chain_sha256")
        if chained is None:  # written before the chain existed: nothing to check it against
            if head is None or record_digest(record) != record_digest(head):
                unchained += 1
                head, head_file = record, name
            continue
        if head is not None and chained == head.get("chain_sha256"):
            if record_digest(record) != chained:
                detail = f"its copy of the verified record sealed by {head_file} was edited"
                breaks.append(Break(kind="edited", file=name, detail=detail))
            continue
        sealed_records += 1
        breaks += _check_record(name, record, head, head_file)
        for entry in record.get("history_sealed") or []:
            seen[str(entry.get("file"))] = str(entry.get("sha256"))
            if entry.get("file") in names:
                last_sealed = max(last_sealed, names.index(entry["file"]))
        breaks += _check_sealed(history, name, record, names[:position], seen)
        head, head_file, chained_head = record, name, chained
    return VerifyReport(
        stack=stack,
        intact=not breaks,
        updates=sum(n.endswith((".history.json", ".history.json.gz")) for n in names),
        sealed_records=sealed_records,
        unchained_records=unchained,
        head=chained_head,
        head_file=head_file if chained_head else None,
        unsealed=names[last_sealed + 1 :] if chained_head else [],
        breaks=sorted(breaks, key=lambda b: _nanos(b.file)),
    )


def _nanos(name: str) -> int:
    match = UPDATE_FILE.match(name)
    return int(match["nanos"]) if match else 0


def _check_record(name: str, record: dict[str, Any], head: dict[str, Any] | None, head_file: str | None) -> list:
    """A new record: its own digest, its evidence digest, and its link to the record before it."""
    found = []
    if record_digest(record) != record["chain_sha256"]:
        detail = "the verified checkpoint record no longer digests to its chain_sha256"
        found.append(Break(kind="edited", file=name, detail=detail))
    evidence = record.get("evidence")
    if evidence is not None and digest(evidence) != record.get("evidence_sha256"):
        detail = "the gate evidence does not match the evidence_sha256 sealed with it"
        found.append(Break(kind="evidence", file=name, detail=detail))
    follows = record.get("chain_previous_sha256")
    expected = record_digest(head) if head is not None else None
    if follows != expected:
        before = f"the record before it ({head_file}) digests to {expected[:12]}" if expected else "none is before it"
        detail = f"the record follows {str(follows)[:12]}, but {before}: a verified update was removed or reordered"
        found.append(Break(kind="chain", file=name, detail=detail))
    return found


def _check_sealed(
    history: StackHistory, name: str, record: dict[str, Any], before: list[str], seen: dict[str, str]
) -> list[Break]:
    """The files ``record`` sealed: each still there with its digest, and none slipped in between them."""
    found = []
    sealed = [entry.get("file") for entry in record.get("history_sealed") or []]
    for entry in record.get("history_sealed") or []:
        sealed_file = str(entry.get("file"))
        try:
            actual = file_digest(history, sealed_file)
        except FileNotFoundError:
            found.append(Break(kind="deleted", file=sealed_file, detail=f"sealed by {name}, now missing"))
            continue
        if actual != entry.get("sha256"):
            found.append(Break(kind="edited", file=sealed_file, detail=f"its sha256 is not the one {name} sealed"))
    if sealed:
        first = before.index(sealed[0]) if sealed[0] in before else 0
        extra = [n for n in before[first:] if n not in seen]
        found += [Break(kind="inserted", file=n, detail=f"not among the files {name} sealed") for n in extra]
    return found
