"""The lease renewal loop both cross-machine locks share: a lease taken over, or one no renewal reaches, is lost
once, said once, and no longer renewed; a healthy one renews until stopped."""

from __future__ import annotations

import pytest

from automation.heartbeat import Heartbeat
from serving.wait import wait_until

LEASE_S = 0.3  # a renewal every 0.1 s


class Unreachable(OSError):
    pass


def test_a_lease_taken_over_is_lost_once_and_no_longer_renewed(capsys: pytest.CaptureFixture[str]) -> None:
    answers: list[int] = []

    def renew() -> bool:
        answers.append(len(answers) + 1)
        return len(answers) < 3  # the third renewal finds another runner's lease

    beat = Heartbeat("release lock of stack s", "the bucket", LEASE_S, renew, (Unreachable,))
    beat.start()
    wait_until(lambda: beat.lost is not None, 5.0, "the lease to be lost")
    beat.stop()
    assert beat.lost == "another runner took it over (our lease had expired)"
    assert answers == [1, 2, 3]
    err = capsys.readouterr().err
    assert (
        err
        == "mlrelease: warning: lost the release lock of stack s: another runner took it over (our lease had expired)\n"
    )


def test_renewals_that_never_reach_the_store_lose_the_lease_after_one_lease(capsys: pytest.CaptureFixture[str]) -> None:
    def renew() -> bool:
        raise Unreachable("connection refused")

    beat = Heartbeat("release lease of stack s", "the API server", LEASE_S, renew, (Unreachable,))
    beat.start()
    wait_until(lambda: beat.lost is not None, 5.0, "the lease to be lost")
    beat.stop()
    assert beat.lost == "no renewal reached the API server for 0.3s"
    assert capsys.readouterr().err.count("lost the release lease of stack s") == 1


def test_a_healthy_lease_renews_until_stopped_and_a_transient_miss_is_forgiven() -> None:
    answers: list[bool] = []

    def renew() -> bool:
        answers.append(True)
        if len(answers) == 2:
            raise Unreachable("one missed renewal")
        return True

    beat = Heartbeat("release lock of stack s", "the bucket", LEASE_S, renew, (Unreachable,))
    beat.start()
    wait_until(lambda: len(answers) >= 6, 5.0, "six renewals")
    beat.stop()
    assert beat.lost is None  # one miss in a lease is not a loss
