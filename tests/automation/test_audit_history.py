"""``audit``: what served on a stack at time T, from synthetic DIY-backend histories in the exact on-disk format.

Histories are written by ``bench.bench_audit.SyntheticStack`` (the writer the benchmark uses): a release takes
20 s of gates, 5 s to deploy the candidate and 10 s per canary step (5, 50, 100 %), so its times are known.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

import automation.audit
import automation.backend_files
from automation.audit import AuditError, LiveModel, audit, history_dir, parse_time
from bench.bench_audit import DATA, SyntheticStack, sha

T0 = 1_795_600_000  # 2026-11-25T08:26:40Z


def at(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def iso(unix: float) -> str:
    return at(unix).strftime("%Y-%m-%dT%H:%M:%SZ")


def split(report: automation.audit.AuditReport) -> dict[str, float]:
    return {model.version: model.traffic_percent for model in report.models}


@pytest.fixture
def stack(tmp_path: Path) -> SyntheticStack:
    return SyntheticStack(tmp_path / "state", "staging")


def test_before_the_first_release_is_an_answer_not_an_error(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    report = audit(stack.url, "staging", at(T0 - 60))
    assert report.state == "before_first_release"
    assert report.models == []
    assert report.note == f"stack staging had no release before {iso(T0)}"
    assert (report.update, report.verified, report.config) == (None, None, {})


def test_settled_after_a_first_release(stack: SyntheticStack) -> None:
    first = stack.release("v1", T0, message="first release of v1")
    report = audit(stack.url, "staging", at(first.end + 10))
    assert report.state == "settled"
    assert report.models == [LiveModel(version="v1", sha256=sha("v1"), traffic_percent=100)]
    assert report.config["model"] == {
        "name": "credit-default",
        "version": "v1",
        "path": "/srv/models/v1",
        "sha256": sha("v1"),
    }
    assert report.config["environment"] == "staging"  # a plain string, not JSON
    assert report.update is not None
    assert report.update.model_dump(include={"kind", "result", "message", "end_time"}) == {
        "kind": "update",
        "result": "succeeded",
        "message": "first release of v1",
        "end_time": at(int(first.end)),  # history keeps whole seconds
    }
    assert report.update.environment["pulumi.version"] == "v3.260.0"
    assert report.gate_evidence is not None and report.gate_evidence["candidate"]["version"] == "v1"
    assert report.data_digests == DATA
    assert report.verified is not None
    assert (report.verified.live, report.verified.previous) == ("v1", None)
    assert report.note is None


def test_settled_after_a_promotion(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    second = stack.release("v2", T0 + 1000, message="promote v2")
    report = audit(stack.url, "staging", at(second.end + 5))
    assert report.state == "settled"
    assert report.models == [
        LiveModel(version="v2", sha256=sha("v2"), traffic_percent=100),
        LiveModel(version="v1", sha256=sha("v1"), traffic_percent=0),
    ]
    assert report.verified is not None
    assert (report.verified.live, report.verified.previous) == ("v2", "v1")
    assert report.verified.verified_at == at(second.steps[-1][1] + 0.5)
    body = report.model_dump(mode="json")  # what `mlrelease audit --json` prints
    assert body["models"][0] == {"version": "v2", "sha256": sha("v2"), "traffic_percent": 100.0}
    assert body["config"]["model"]["version"] == "v2"
    assert body["update"]["end_time"] == at(int(second.end)).isoformat().replace("+00:00", "Z")
    assert body["update"]["message"] == "promote v2"


def test_mid_canary_takes_the_step_running_at_t(stack: SyntheticStack) -> None:
    first = stack.release("v1", T0)
    second = stack.release("v2", T0 + 1000)
    (step1_start, _), (step2_start, _) = second.steps[:2]

    during_gates = audit(stack.url, "staging", at(second.start + 10))
    assert during_gates.state == "update_in_progress"
    assert split(during_gates) == {"v1": 100}
    assert during_gates.update is not None and during_gates.update.end_time == at(int(first.end))
    assert during_gates.in_progress is not None and during_gates.in_progress.start_time == at(second.start)

    report = audit(stack.url, "staging", at((step1_start + step2_start) / 2))
    assert report.state == "update_in_progress"
    assert report.models == [
        LiveModel(version="v1", sha256=sha("v1"), traffic_percent=95),
        LiveModel(version="v2", sha256=sha("v2"), traffic_percent=5),
    ]
    assert (
        report.note
        == f"the update that started at {iso(second.start)} was at canary step 1 (5% to v2) since {iso(step1_start)}"
    )
    assert report.config["model"]["version"] == "v2"
    assert report.gate_evidence is not None and report.gate_evidence["candidate"]["version"] == "v2"
    # The release verifies at its end: at T the verified release was still v1's.
    assert report.verified is not None and report.verified.live == "v1"

    assert split(audit(stack.url, "staging", at(step2_start + 1))) == {"v2": 50, "v1": 50}


def test_during_a_failed_update_the_failing_step_is_reconstructed(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    stack.release("v2", T0 + 1000)
    failed = stack.release("v3", T0 + 2000, fail_step=2)
    [(step1_start, step1_end)] = failed.steps

    assert split(audit(stack.url, "staging", at(step1_start + 1))) == {"v2": 95, "v3": 5}
    report = audit(stack.url, "staging", at(step1_end + 2))
    assert report.state == "update_in_progress"
    assert split(report) == {"v3": 50, "v2": 50}
    assert report.models[0].sha256 == sha("v2") and report.models[1].sha256 == sha("v3")
    assert report.note is not None
    assert report.note.startswith(f"canary step 2 (50% to v3) of the update that started at {iso(failed.start)}")
    assert (
        "reconstructed: the failing step's verdict is not kept in state; the revert is taken at the update's end"
        in (report.note)
    )
    assert report.update is not None and report.update.result == "failed"


def test_a_failed_first_step_is_reconstructed_from_when_the_candidate_was_deployed(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    failed = stack.release("v2", T0 + 1000, fail_step=1)
    assert failed.deployed_at is not None
    assert split(audit(stack.url, "staging", at(failed.deployed_at - 2))) == {"v1": 100}
    assert split(audit(stack.url, "staging", at(failed.deployed_at + 2))) == {"v2": 5, "v1": 95}


def test_a_retry_that_fails_its_first_step_is_reconstructed_from_the_updates_start(stack: SyntheticStack) -> None:
    """A retry of a candidate an earlier attempt deployed changes nothing before its step, so there is no
    deployment stamp: the failing step is taken from the retry's start, and the note says so."""
    stack.release("v1", T0)
    stack.release("v2", T0 + 1000, fail_step=1)
    retry = stack.release("v2", T0 + 2000, fail_step=1, retry=True)
    assert retry.deployed_at is None
    report = audit(stack.url, "staging", at(retry.start + 1))
    assert report.state == "update_in_progress" and split(report) == {"v2": 5, "v1": 95}
    assert report.note is not None and report.note.endswith("so it is taken from the update's start")
    assert split(audit(stack.url, "staging", at(retry.end + 5))) == {"v1": 100, "v2": 0}


def test_a_failed_update_of_the_live_version_reconstructs_no_step(stack: SyntheticStack) -> None:
    """``pulumi up`` of what is already live failing for another reason (its candidate is the incumbent) ran no
    canary: nothing is reconstructed, the live version served everything."""
    stack.release("v1", T0)
    again = stack.release("v1", T0 + 1000, fail_step=1, retry=True)
    assert split(audit(stack.url, "staging", at(again.start + 1))) == {"v1": 100}


def test_after_a_failed_update_the_verified_release_serves_everything(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    stack.release("v2", T0 + 1000)
    failed = stack.release("v3", T0 + 2000, fail_step=2)
    report = audit(stack.url, "staging", at(failed.end + 30))
    assert report.state == "settled"
    assert report.models == [
        LiveModel(version="v2", sha256=sha("v2"), traffic_percent=100),
        LiveModel(version="v3", sha256=sha("v3"), traffic_percent=0),
    ]
    assert report.note == (
        f"the update that ended at {iso(failed.end)} failed, so v3 took no traffic after it: the verified v2 served"
        " all of it"
    )
    assert report.verified is not None and (report.verified.live, report.verified.previous) == ("v2", "v1")
    assert report.update is not None and report.update.result == "failed"


def test_a_gate_failure_moves_nothing_during_or_after(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    stack.release("v2", T0 + 1000)
    blocked = stack.release("v3-worse", T0 + 2000, gate_fails=True)
    assert split(audit(stack.url, "staging", at(blocked.start + 5))) == {"v2": 100, "v1": 0}
    after = audit(stack.url, "staging", at(blocked.end + 5))
    assert split(after) == {"v2": 100}
    assert after.gate_evidence is not None and after.gate_evidence["candidate"]["version"] == "v2"


def test_rollback_moves_traffic_before_its_converge_update(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    promoted = stack.release("v2", T0 + 1000)
    moved_at, converge_start = promoted.end + 100, promoted.end + 130
    converge = stack.rollback(moved_at, converge_start)

    assert split(audit(stack.url, "staging", at(moved_at - 1))) == {"v2": 100, "v1": 0}
    gap = audit(stack.url, "staging", at(moved_at + 10))
    assert gap.state == "update_in_progress"
    assert gap.models == [
        LiveModel(version="v1", sha256=sha("v1"), traffic_percent=100),
        LiveModel(version="v2", sha256=sha("v2"), traffic_percent=0),
    ]
    moved, started = iso(moved_at), iso(converge_start)
    assert gap.note == f"rollback from v2 to v1: all traffic moved at {moved}; its converge update started at {started}"
    assert gap.config["restore"]["version"] == "v1"
    assert gap.update is not None and gap.update.start_time == at(converge_start)
    assert gap.verified is not None and gap.verified.live == "v2"  # state follows traffic

    assert split(audit(stack.url, "staging", at(converge_start + 5))) == {"v1": 100, "v2": 0}
    after = audit(stack.url, "staging", at(converge.end + 5))
    assert (after.state, split(after)) == ("settled", {"v1": 100})  # the converge's steps route v1 alone
    assert after.verified is not None and (after.verified.live, after.verified.previous) == ("v1", None)

    # The restore stays in config until the next promotion: a later `pulumi up` carries it without moving traffic.
    stack.release("v1", converge.end + 600, restore=stack.config["restore"])
    later = audit(stack.url, "staging", at(converge.end + 300))
    assert (later.state, split(later), later.note) == ("settled", {"v1": 100}, None)
    assert later.update is not None and later.update.start_time == at(converge_start)


def test_a_rollback_whose_converge_fails_leaves_traffic_moved(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    promoted = stack.release("v2", T0 + 1000)
    moved_at = promoted.end + 100
    failed = stack.rollback(moved_at, moved_at + 30, gate_fails=True)
    report = audit(stack.url, "staging", at(failed.end + 60))
    assert (report.state, split(report)) == ("settled", {"v1": 100, "v2": 0})
    assert report.note == (
        f"rollback from v2 to v1: all traffic moved at {iso(moved_at)}; its update failed to converge (traffic stayed"
        f" moved) at {iso(failed.end)}"
    )
    assert report.verified is not None and report.verified.live == "v2"  # state did not follow


def test_destroyed_stack_serves_nothing(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    destroyed = stack.destroy(T0 + 1000)
    during = audit(stack.url, "staging", at(destroyed.start + 1))
    assert (during.state, split(during)) == ("update_in_progress", {"v1": 100})
    assert during.in_progress is not None and during.in_progress.kind == "destroy"
    report = audit(stack.url, "staging", at(destroyed.end + 60))
    assert report.state == "destroyed"
    assert report.models == []
    assert report.verified is None and report.data_digests is None and report.gate_evidence is None
    assert report.update is not None and report.update.kind == "destroy"
    assert (
        report.note
        == f"stack staging was destroyed by the update that ended at {iso(destroyed.end)}; nothing was serving"
    )
    again = stack.release("v1", T0 + 2000)
    assert split(audit(stack.url, "staging", at(again.end + 1))) == {"v1": 100}
    failed = stack.destroy(T0 + 3000, result="failed")
    assert audit(stack.url, "staging", at(failed.end + 1)).note == (
        f"stack staging was destroyed by the update that ended at {iso(failed.end)}; nothing was serving (the destroy"
        " failed, so some servers may have kept running)"
    )


def test_a_first_release_blocked_at_a_gate_leaves_nothing_released(stack: SyntheticStack) -> None:
    blocked = stack.release("v1", T0, gate_fails=True)
    report = audit(stack.url, "staging", at(blocked.end + 1))
    assert (report.state, report.models) == ("before_first_release", [])
    assert report.note == f"stack staging had no verified release after {iso(blocked.end)}"
    assert report.update is not None and report.update.result == "failed"


def test_t_between_the_recorded_end_and_the_save_is_after_the_update(stack: SyntheticStack) -> None:
    """endTime is in whole seconds and the files are saved a little later: T in between is after the update."""
    stack.release("v1", T0)
    second = stack.release("v2", T0 + 1000)
    assert second.end == int(second.end)  # saved at end + 0.3 s
    report = audit(stack.url, "staging", at(second.end + 0.1))
    assert (report.state, split(report)) == ("settled", {"v2": 100, "v1": 0})


def test_a_refresh_is_not_the_update_that_made_it_so(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    promoted = stack.release("v2", T0 + 1000)
    refreshed = stack.refresh(T0 + 2000)
    report = audit(stack.url, "staging", at(refreshed.end + 1))
    assert split(report) == {"v2": 100, "v1": 0}
    assert report.update is not None
    assert (report.update.kind, report.update.end_time) == ("update", at(int(promoted.end)))


def test_steps_saved_without_timestamps_leave_traffic_during_the_update_unknown(stack: SyntheticStack) -> None:
    stack.release("v1", T0, timestamps=False)
    second = stack.release("v2", T0 + 1000, timestamps=False)
    report = audit(stack.url, "staging", at(second.steps[1][0] + 1))
    assert (report.state, split(report)) == ("update_in_progress", {"v1": 100})
    assert report.note == (
        f"the update that started at {iso(second.start)} kept no step timestamps, so traffic during it is unknown"
        " (shown as before)"
    )
    assert split(audit(stack.url, "staging", at(second.end + 1))) == {"v2": 100, "v1": 0}


def test_untimed_verdicts_of_earlier_updates_do_not_hide_what_a_later_one_did(stack: SyntheticStack) -> None:
    """The engine's ``modified`` stamp tells an earlier update's untimed verdict from this update's."""
    stack.release("v1", T0, timestamps=False)
    stack.release("v2", T0 + 1000, timestamps=False)
    blocked = stack.release("v3-worse", T0 + 2000, gate_fails=True)
    during = audit(stack.url, "staging", at(blocked.start + 5))
    assert (during.state, split(during)) == ("update_in_progress", {"v2": 100, "v1": 0})
    started = iso(blocked.start)
    assert (
        during.note
        == f"the update that started at {started} had not moved traffic by then: as the update before it left it"
    )
    failed = stack.release("v3", T0 + 3000, fail_step=1)
    assert failed.deployed_at is not None
    assert split(audit(stack.url, "staging", at(failed.deployed_at + 1))) == {"v2": 95, "v3": 5}


def test_gzipped_history_is_read(tmp_path: Path) -> None:
    stack = SyntheticStack(tmp_path, "prod", gz=True)
    stack.release("v1", T0)
    second = stack.release("v2", T0 + 1000)
    assert split(audit(stack.url, "prod", at(second.steps[0][0] + 1))) == {"v1": 95, "v2": 5}


def test_only_the_files_around_t_are_read(stack: SyntheticStack, monkeypatch: pytest.MonkeyPatch) -> None:
    played = [stack.release("v1", T0)]
    for n in range(2, 40):
        played.append(stack.release(f"v{n}", played[-1].end + 100))
    read: list[str] = []
    real = automation.audit._read_json
    monkeypatch.setattr(automation.audit, "_read_json", lambda files, name: read.append(name) or real(files, name))
    middle = played[20]
    assert split(audit(stack.url, "staging", at(middle.steps[1][0] + 1))) == {"v20": 50, "v21": 50}
    assert len(read) <= 5, read  # of 78 history and checkpoint files


def test_a_backend_audit_cannot_read_names_the_fix() -> None:
    message = r"^audit reads per-update checkpoints from a file:// or s3:// backend; https://api.pulumi.com is neither"
    with pytest.raises(AuditError, match=message):
        history_dir("https://api.pulumi.com", "mlrelease", "prod")
    with pytest.raises(AuditError, match="file://"):
        audit("https://api.pulumi.com", "prod", at(T0))


def test_missing_stack_names_stack_and_backend(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    message = f"no history for stack prod in {stack.url}: check --stack and PULUMI_BACKEND_URL"
    with pytest.raises(AuditError) as excinfo:
        audit(stack.url, "prod", at(T0 + 60))
    assert str(excinfo.value) == message
    (stack.dir.parent / "prod").mkdir()  # a stack directory with no updates in it
    with pytest.raises(AuditError) as excinfo:
        audit(stack.url, "prod", at(T0 + 60))
    assert str(excinfo.value) == message


def test_a_missing_checkpoint_is_an_error_that_names_it(stack: SyntheticStack) -> None:
    first = stack.release("v1", T0)
    [checkpoint] = stack.dir.glob("*.checkpoint.json")
    checkpoint.unlink()
    with pytest.raises(
        AuditError, match=rf"^cannot read {re.escape(str(checkpoint))}: .*is the backend complete and readable\?$"
    ):
        audit(stack.url, "staging", at(first.end + 1))


def test_parse_time() -> None:
    assert parse_time("2026-11-26T14:30:00Z") == datetime(2026, 11, 26, 14, 30, tzinfo=UTC)
    assert parse_time("2026-11-26T14:30:00") == datetime(2026, 11, 26, 14, 30, tzinfo=UTC)  # naive: UTC
    assert parse_time("2026-11-26T15:30:00+01:00") == datetime(2026, 11, 26, 14, 30, tzinfo=UTC)
    assert parse_time("2026-11-26T15:30:00+01:00").utcoffset() == timedelta(hours=1)
    with pytest.raises(AuditError) as excinfo:
        parse_time("yesterday")
    assert str(excinfo.value) == "--at 'yesterday' is not an ISO 8601 time: use e.g. 2026-11-26T14:30:00Z"


def test_naive_time_is_refused(stack: SyntheticStack) -> None:
    stack.release("v1", T0)
    with pytest.raises(AuditError, match="no timezone"):
        audit(stack.url, "staging", datetime(2026, 11, 26, 14, 30))
    assert audit(stack.url, "staging", at(T0 - 1).astimezone(timezone(timedelta(hours=-5)))).at == at(T0 - 1)


def test_the_listing_starts_near_t_and_stops_a_few_updates_after_it(
    stack: SyntheticStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What audit lists does not grow with the history: from a key a day before T to three updates after it."""
    played = [stack.release("v1", T0)]
    for n in range(2, 60):
        played.append(stack.release(f"v{n}", played[-1].end + 6 * 3600))  # four releases a day
    listed: list[tuple[str | None, int]] = []
    real = automation.backend_files.StackHistory.names

    def counted(self, start_after=None):
        seen = [0]
        listed.append((start_after, seen))
        for name in real(self, start_after):
            seen[0] += 1
            yield name

    monkeypatch.setattr(automation.backend_files.StackHistory, "names", counted)
    middle = played[30]
    assert split(audit(stack.url, "staging", at(middle.steps[1][0] + 1))) == {"v30": 50, "v31": 50}
    [(start, seen)] = listed
    assert start is not None and start.startswith("staging-") and seen[0] <= 4 * 8, (start, seen)  # of 240 files
    listed.clear()
    # Before the first release nothing is behind T: the listing widens to the whole history.
    assert audit(stack.url, "staging", at(T0 - 60)).state == "before_first_release"
    assert listed[-1][0] is None
