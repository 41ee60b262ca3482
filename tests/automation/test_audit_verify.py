"""``audit --verify``: the hash chain over verified checkpoints and the per-update files they seal.

Histories come from ``bench.bench_audit.SyntheticStack``, which seals each verified checkpoint with the same
``components.audit_chain.seal`` as the provider, in the DIY backend's on-disk format. The engine-level test
(``tests/engine/test_cli_release.py``) checks the same against records the real engine wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from automation.audit import AuditError
from automation.audit_verify import verify
from automation.backend_files import stack_history
from bench.bench_audit import SyntheticStack
from components.audit_chain import canonical, digest, record_digest, seal

T0 = 1_795_600_000


@pytest.fixture
def stack(tmp_path: Path) -> SyntheticStack:
    stack = SyntheticStack(tmp_path / "state", "prod")
    stack.release("v1", T0)
    stack.release("v2", T0 + 1000)
    stack.release("v3", T0 + 2000, fail_step=2)  # a failed attempt: no new record, its files sealed by the next
    stack.rollback(T0 + 2600, T0 + 2601)  # back to v1: a record of its own
    stack.release("v4", T0 + 3000)
    return stack


def _files(stack: SyntheticStack, kind: str) -> list[Path]:
    return sorted(stack.dir.glob(f"prod-*.{kind}.json"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))


def _edit(path: Path, change: Callable[[dict], object]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _record(document: dict) -> dict:
    [found] = [r for r in document["checkpoint"]["latest"]["resources"] if r["urn"].endswith("::release-checkpoint")]
    return found["outputs"]


def test_an_untouched_history_is_intact_and_the_head_is_the_last_record(stack: SyntheticStack) -> None:
    report = verify(stack.url, "prod")
    assert report.intact and report.breaks == [], report.breaks
    assert (report.updates, report.sealed_records, report.unchained_records) == (5, 4, 0)
    last = _files(stack, "checkpoint")[-1]
    assert report.head == _record(json.loads(last.read_text()))["chain_sha256"] and report.head_file == last.name
    # The last release's own files are written after its record: the next one seals them.
    assert report.unsealed == [last.name, last.name.replace("checkpoint", "history")]


def test_an_edited_history_file_and_a_deleted_one_are_both_named(stack: SyntheticStack) -> None:
    histories = _files(stack, "history")
    _edit(histories[1], lambda h: h.update(message="mlrelease promote v2 (approved by nobody)"))
    histories[2].unlink()
    report = verify(stack.url, "prod")
    assert not report.intact
    assert [(b.kind, b.file) for b in report.breaks] == [("edited", histories[1].name), ("deleted", histories[2].name)]
    assert "sealed" in report.breaks[1].detail


def test_evidence_that_no_longer_matches_its_digest_is_named(stack: SyntheticStack) -> None:
    second = _files(stack, "checkpoint")[1]
    _edit(second, lambda d: _record(d)["evidence"]["gates"].update(evaluation={"passed": True}))
    kinds = {(b.kind, b.file) for b in verify(stack.url, "prod").breaks}
    assert {("evidence", second.name), ("edited", second.name)} <= kinds


def test_a_record_edited_with_its_digests_recomputed_breaks_the_next_link(stack: SyntheticStack) -> None:
    """Whoever recomputes a record's own digests still cannot reach the next record's link or the file seal."""
    second = _files(stack, "checkpoint")[1]

    def forge(document: dict) -> None:
        record = _record(document)
        record["live"]["sha256"] = "0" * 64
        record["evidence_sha256"] = digest(record["evidence"])
        record["chain_sha256"] = record_digest(record)

    _edit(second, forge)
    report = verify(stack.url, "prod")
    kinds = [(b.kind, b.file) for b in report.breaks]
    assert ("edited", second.name) in kinds  # the seal of the file, by the next record
    assert any(kind == "chain" for kind, _ in kinds), kinds


def test_a_removed_verified_update_is_named_by_the_record_that_sealed_it(stack: SyntheticStack) -> None:
    checkpoint = _files(stack, "checkpoint")[1]
    history = checkpoint.with_name(checkpoint.name.replace("checkpoint", "history"))
    checkpoint.unlink()
    history.unlink()
    report = verify(stack.url, "prod")
    assert [(b.kind, b.file) for b in report.breaks] == [("deleted", checkpoint.name), ("deleted", history.name)]


def test_every_copy_of_a_record_removed_breaks_the_chain(stack: SyntheticStack) -> None:
    """v2's record is also in the failed attempt's checkpoint after it; with both gone, the rollback's record
    follows a record that is nowhere."""
    checkpoints = _files(stack, "checkpoint")
    for path in checkpoints[1:3]:
        path.unlink()
    report = verify(stack.url, "prod")
    assert ("chain", checkpoints[3].name) in [(b.kind, b.file) for b in report.breaks]
    assert "a verified update was removed or reordered" in next(b.detail for b in report.breaks if b.kind == "chain")


def test_a_file_slipped_in_among_sealed_ones_is_named(stack: SyntheticStack) -> None:
    first = _files(stack, "history")[0]
    nanos = int(first.name.split("-")[1].split(".")[0]) + 1
    slipped = first.with_name(f"prod-{nanos}.history.json")
    slipped.write_text(first.read_text())
    assert [(b.kind, b.file) for b in verify(stack.url, "prod").breaks] == [("inserted", slipped.name)]


def test_a_destroy_ends_a_chain_and_the_next_release_starts_one(tmp_path: Path) -> None:
    stack = SyntheticStack(tmp_path / "state", "prod")
    stack.release("v1", T0)
    stack.release("v2", T0 + 1000)
    stack.destroy(T0 + 2000)
    stack.release("v1", T0 + 3000)
    stack.release("v2", T0 + 4000)
    report = verify(stack.url, "prod")
    assert report.intact and report.sealed_records == 4, report.breaks
    destroyed = _files(stack, "history")[2]
    destroyed.unlink()  # the restarted chain's first record sealed the destroy too
    assert [(b.kind, b.file) for b in verify(stack.url, "prod").breaks] == [("deleted", destroyed.name)]


def test_an_unreadable_update_file_leaves_the_record_unsealed_and_the_next_one_seals_it(tmp_path: Path) -> None:
    directory = tmp_path / ".pulumi" / "history" / "mlrelease" / "prod"
    directory.mkdir(parents=True)
    history = stack_history(tmp_path.as_uri(), "mlrelease", "prod")
    (directory / "prod-1.checkpoint.json").write_text("{}")
    (directory / "prod-1.history.json").mkdir()  # reading it fails, as a file without read permission would
    first = seal({"live": {"version": "v1"}}, None, history, "prod")
    assert first["history_sealed"] is None
    (directory / "prod-1.history.json").rmdir()
    (directory / "prod-1.history.json").write_text("{}")
    second = seal({"live": {"version": "v2"}}, {"live": {"version": "v1"}, **first}, history, "prod")
    assert [e["file"] for e in second["history_sealed"]] == ["prod-1.checkpoint.json", "prod-1.history.json"]


def test_numbers_digest_the_same_after_a_round_trip_through_state() -> None:
    """Pulumi's state keeps numbers as float64 and may drop nulls: the digest must not see the difference."""
    assert canonical({"b": 5.0, "a": [1, 2.5], "c": None}) == {"a": [1, 2.5], "b": 5}
    assert digest({"weight": 5, "share": 0.25}) == digest({"share": 0.25, "weight": 5.0, "missing": None})
    with pytest.raises(TypeError, match="cannot digest"):
        digest({"when": object()})


def test_a_stack_without_history_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".pulumi" / "history" / "mlrelease" / "none").mkdir(parents=True)
    with pytest.raises(AuditError, match="no history for stack none"):
        verify(tmp_path.as_uri(), "none")
