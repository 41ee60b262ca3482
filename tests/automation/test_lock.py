"""The release lock: one operation per stack, named in the refusal, and never left behind by a dead holder."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from automation.lock import LockBusy, ReleaseLock, holder, lock_path
from serving.wait import wait_until

HOLD = """
import sys, time
from pathlib import Path
from automation.lock import ReleaseLock
with ReleaseLock(Path(sys.argv[1]), "staging", "promote v3"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_operation_is_refused_with_the_holder_and_a_dead_holder_frees_the_stack(tmp_path: Path) -> None:
    assert holder(tmp_path, "staging") is None
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        seen = holder(tmp_path, "staging")
        assert seen is not None and seen["operation"] == "promote v3" and seen["pid"] == child.pid
        with pytest.raises(LockBusy) as excinfo, ReleaseLock(tmp_path, "staging", "rollback"):
            pass
        assert f"promote v3 (pid {child.pid})" in str(excinfo.value) and "run rollback again" in str(excinfo.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_until(lambda: holder(tmp_path, "staging") is None, 30, "the kernel to drop a dead holder's lock")
    with ReleaseLock(tmp_path, "staging", "rollback"):
        assert holder(tmp_path, "staging") is not None  # held (by this process) while inside
    assert holder(tmp_path, "staging") is None
    assert lock_path(tmp_path, "staging").exists()  # the file stays; only the flock matters


def test_other_stacks_are_not_blocked(tmp_path: Path) -> None:
    with ReleaseLock(tmp_path, "staging", "promote v3"), ReleaseLock(tmp_path, "prod", "rollback"):
        assert holder(tmp_path, "prod")["operation"] == "rollback"
