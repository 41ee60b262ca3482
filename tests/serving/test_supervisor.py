"""Supervised processes outlive their starter, restart after a crash, stop cleanly (SIGKILL after the
grace period if they must) and report what a refresh needs to see, including a dead one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from serving import supervisor
from serving.supervisor import (
    ProcessConflict,
    ProcessNotRunning,
    ProcessStartError,
    free_port,
    free_ports,
    port_in_use,
    process_handle,
    start_process,
    status,
    stop,
)
from serving.wait import wait_until

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)",
]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _printed_up(log: Path) -> bool:
    return log.exists() and "up" in log.read_text()


def test_start_writes_state_and_pid_file_and_is_idempotent(run_dir: Path) -> None:
    handle = start_process("sleeper", SLEEPER, run_dir, ports={"http": 1234}, meta={"digest": "x"})
    state = json.loads(handle.state_path.read_text())
    assert state["phase"] == "running" and state["pid"] == handle.pid
    assert state["spec"]["meta"] == {"digest": "x"} and handle.port == 1234
    assert handle.pid_path.read_text().strip() == str(handle.pid)
    proc = psutil.Process(handle.pid)
    assert proc.ppid() == handle.supervisor_pid
    assert os.getsid(handle.supervisor_pid) == handle.supervisor_pid  # detached: its own session
    again = start_process("sleeper", SLEEPER, run_dir, ports={"http": 1234})
    assert (again.pid, again.supervisor_pid) == (handle.pid, handle.supervisor_pid)
    with pytest.raises(ProcessConflict, match="already runs"):
        start_process("sleeper", [*SLEEPER[:-1], "pass"], run_dir)
    current = status(handle.state_path)
    assert (current.state, current.alive, current.supervised, current.restarts) == ("running", True, True, 0)
    assert process_handle(handle.state_path) == handle


def test_a_wall_clock_step_does_not_make_a_running_process_look_dead(run_dir: Path, monkeypatch) -> None:
    """NTP slewing the clock across a second boundary moves /proc/stat's whole-second btime by 1 s, and psutil's
    create_time() with it: liveness must not depend on it, or every long-running process looks dead at once."""
    handle = start_process("steady", SLEEPER, run_dir)
    before = psutil.Process(handle.pid).create_time()
    real = psutil._pslinux.boot_time
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real() + 1.0)
    assert psutil.Process(handle.pid).create_time() - before == pytest.approx(1.0, abs=0.01)  # psutil sees the step
    current = status(handle.state_path)
    assert (current.state, current.alive, current.supervised) == ("running", True, True)
    assert supervisor.running_handle("steady", run_dir) == handle


def test_outlives_the_command_that_started_it(run_dir: Path) -> None:
    starter = textwrap.dedent(
        f"""
        from serving.supervisor import start_process
        print(start_process("detached", {SLEEPER!r}, {str(run_dir)!r}).state_path)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", starter],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=supervisor.REPO_ROOT,
    )
    state_path = Path(out.stdout.strip())
    assert status(state_path).state == "running"


def test_crash_is_restarted_with_counter_and_new_pid(run_dir: Path) -> None:
    handle = start_process("crashy", SLEEPER, run_dir)
    os.kill(handle.pid, signal.SIGKILL)
    restarted = wait_until(lambda: (s := status(handle.state_path)).restarts == 1 and s.alive and s, 30, "a restart")
    assert restarted.pid != handle.pid and restarted.last_exit_code == -signal.SIGKILL
    assert handle.pid_path.read_text().strip() == str(restarted.pid)
    assert "restart 1" in (handle.state_path.parent / supervisor.SUPERVISOR_LOG).read_text()


def test_stop_terminates_child_and_supervisor(run_dir: Path) -> None:
    handle = start_process("stoppable", SLEEPER, run_dir)
    final = stop(handle.state_path)
    assert (final.state, final.alive, final.supervised) == ("stopped", False, False)
    assert _gone(handle.pid) and _gone(handle.supervisor_pid)
    assert not handle.pid_path.exists()
    assert stop(handle.state_path).state == "stopped"  # idempotent
    with pytest.raises(ProcessNotRunning, match="stoppable has no running process recorded"):
        process_handle(handle.state_path)


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace(run_dir: Path) -> None:
    handle = start_process("stubborn", STUBBORN, run_dir, stop_grace_s=0.5)
    wait_until(lambda: _printed_up(handle.log_path), 30, "the child to ignore SIGTERM")
    assert stop(handle.state_path).state == "stopped"
    assert _gone(handle.pid)
    assert "SIGKILL" in (handle.state_path.parent / supervisor.SUPERVISOR_LOG).read_text()


def test_dead_and_unsupervised_are_visible_and_a_restart_recovers(run_dir: Path) -> None:
    handle = start_process("victim", SLEEPER, run_dir)
    os.kill(handle.supervisor_pid, signal.SIGKILL)
    wait_until(lambda: status(handle.state_path).state == "unsupervised", 30, "supervisor death to show")
    os.kill(handle.pid, signal.SIGKILL)
    wait_until(lambda: status(handle.state_path).state == "dead", 30, "child death to show")
    fresh = start_process("victim", SLEEPER, run_dir)
    assert fresh.pid != handle.pid and status(fresh.state_path).state == "running"


def test_stop_after_supervisor_died_still_stops_the_child(run_dir: Path) -> None:
    handle = start_process("orphan", SLEEPER, run_dir)
    os.kill(handle.supervisor_pid, signal.SIGKILL)
    assert stop(handle.state_path).state == "stopped"
    assert _gone(handle.pid)


def test_unstartable_command_fails_clearly_and_leaves_nothing(run_dir: Path) -> None:
    with pytest.raises(ProcessStartError, match="No such file or directory"):
        start_process("broken", ["/nonexistent/binary"], run_dir)
    assert status(run_dir / "broken" / supervisor.STATE_FILE).state in {"stopped", "dead"}


def test_free_ports_are_distinct_and_port_in_use_sees_a_bound_port() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    port = free_port()
    assert not port_in_use(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert port_in_use(port)


def test_names_cannot_escape_the_run_dir(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="must match"):
        start_process("../escape", SLEEPER, run_dir)


def test_missing_state_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never started"):
        status(tmp_path / "nothing" / "state.json")


def test_a_child_that_exits_at_once_is_reported_at_once_with_its_output(run_dir: Path) -> None:
    """The race of the issue: the child is gone before its pid is ever seen; the answer is immediate."""
    argv = ["/bin/sh", "-c", "echo 'config error: not a valid duration'; exit 3"]
    expected = r"exited during startup with code 3: config error: not a valid duration"
    with pytest.raises(supervisor.ProcessExitedDuringStartup, match=expected) as info:
        start_process("quitter", argv, run_dir, timeout=120)
    assert info.value.exit_code == 3 and info.value.log_path.name == "output.log"
    assert status(run_dir / "quitter" / "state.json").state == "stopped"
