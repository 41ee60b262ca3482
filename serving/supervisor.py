"""Detached, self-restarting processes whose state is a JSON file a Pulumi provider can keep.

Model servers, the router and Prometheus must outlive the command that started them (``pulumi up`` ends,
the servers stay), come back if they crash, stop cleanly on delete and show a refresh when they are dead.
``start_process`` launches a small supervisor (``python -m serving.supervisor STATE``) in a new session;
the supervisor runs the child in its own process group with its output in a log file, restarts it with
exponential backoff when it exits, and on SIGTERM stops it (SIGTERM to the group, a grace period, then
SIGKILL). Once it runs, the supervisor is the only writer of the state file, except that ``stop`` records
"stopped" itself when the supervisor died without doing so. Writes are atomic (write, then rename).

Layout of ``run_dir/<name>/``: ``state.json`` (``ProcessState``), ``pid`` (the child's pid, rewritten on
every restart, what metrics read), ``output.log`` (the child's stdout and stderr), ``supervisor.log``.
Liveness compares pid *and* process start time, so a recycled pid never looks alive. The start time is the
kernel's, in clock ticks after boot: a wall-clock time would move with every clock adjustment (psutil adds
``/proc/stat``'s whole-second ``btime``, which steps by 1 s when NTP slews the clock across a second boundary),
and every long-running process would then look dead to a reader started on the other side of the step.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, Field

from serving.wait import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
STATE_FILE = "state.json"
PID_FILE = "pid"
OUTPUT_LOG = "output.log"
SUPERVISOR_LOG = "supervisor.log"

Phase = Literal["launching", "running", "backoff", "stopped"]


class ProcessSpec(BaseModel):
    """What to run and how; fixed at start."""

    name: str = Field(pattern=NAME_PATTERN)
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = {}
    cwd: Path
    ports: dict[str, int] = {}
    meta: dict[str, Any] = Field(default={}, description="caller's facts kept with the state (digest, ...)")
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 5.0
    healthy_after_s: float = Field(default=10.0, description="a run this long resets the backoff")
    stop_grace_s: float = Field(default=10.0, description="SIGTERM to SIGKILL on stop")


class ProcessState(BaseModel):
    """The state file: the spec plus what the supervisor last saw."""

    spec: ProcessSpec
    phase: Phase
    supervisor_pid: int | None = None
    supervisor_started: int | None = Field(default=None, description="start, clock ticks after boot")
    pid: int | None = None
    pid_started: int | None = Field(default=None, description="start, clock ticks after boot")
    restarts: int = 0
    last_exit_code: int | None = None
    updated_at: float = Field(default_factory=time.time)


class ProcessHandle(BaseModel):
    """Where a supervised process is: what a Pulumi provider stores as outputs."""

    name: str
    state_path: Path
    pid_path: Path
    log_path: Path
    supervisor_pid: int
    pid: int
    ports: dict[str, int]
    meta: dict[str, Any]

    @property
    def port(self) -> int | None:
        """The first port the caller allocated (the one it listens on, by convention)."""
        return next(iter(self.ports.values()), None)


class ProcessStatus(BaseModel):
    """Liveness as a refresh sees it.

    ``state``: ``running`` (child up, supervised), ``restarting`` (supervisor in backoff), ``unsupervised``
    (child up but its supervisor is gone: no restarts), ``dead`` (nothing runs, not stopped on purpose),
    ``stopped`` (stopped by ``stop``).
    """

    name: str
    state: Literal["running", "restarting", "unsupervised", "dead", "stopped"]
    alive: bool
    supervised: bool
    pid: int | None
    restarts: int
    last_exit_code: int | None
    log_path: Path


class ProcessConflict(RuntimeError):
    """A process of that name already runs with a different command."""


class ProcessStartError(RuntimeError):
    """The supervisor or its child could not be started."""


class ProcessExitedDuringStartup(ProcessStartError):
    """The child ran and exited before its start was observed: ``exit_code`` and the log say why."""

    def __init__(self, message: str, exit_code: int | None, log_path: Path) -> None:
        super().__init__(message)
        self.exit_code, self.log_path = exit_code, log_path


class ProcessNotRunning(RuntimeError):
    """A handle was asked for a process that is not running."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that are free now (the kernel's pick; bind them soon).

    All sockets stay bound until every port is picked, so the kernel cannot hand out one port twice.
    """
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's pick; bind it soon)."""
    return free_ports(1)[0]


def port_in_use(port: int) -> bool:
    """True if something is bound to 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def _paths(run_dir: Path, name: str) -> tuple[Path, Path, Path, Path]:
    base = Path(run_dir).resolve() / name
    return base / STATE_FILE, base / PID_FILE, base / OUTPUT_LOG, base / SUPERVISOR_LOG


def read_state(state_path: Path) -> ProcessState:
    """The state file, or FileNotFoundError naming it."""
    try:
        return ProcessState.model_validate_json(Path(state_path).read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"no process state at {state_path}: it was never started here") from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_state(state_path: Path, state: ProcessState) -> None:
    state.updated_at = time.time()
    _write_atomic(state_path, state.model_dump_json(indent=2))


def _alive(pid: int | None, started: int | None) -> bool:
    """True if ``pid`` runs and is the process that started at ``started`` (not a recycled pid)."""
    if pid is None or started is None or _start_time(pid) != started:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return False
        return True
    except psutil.NoSuchProcess:
        return False


def _reap(pid: int) -> None:
    """Collect an exited child of this process, so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (field 22 of ``/proc/PID/stat``): fixed for the process's
    life, whatever the wall clock does. None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is parenthesised and may hold spaces or ')': fields are counted after the last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def _handle(state_path: Path, state: ProcessState) -> ProcessHandle:
    base = state_path.parent
    return ProcessHandle(
        name=state.spec.name,
        state_path=state_path,
        pid_path=base / PID_FILE,
        log_path=base / OUTPUT_LOG,
        supervisor_pid=state.supervisor_pid,
        pid=state.pid,
        ports=state.spec.ports,
        meta=state.spec.meta,
    )


def process_handle(state_path: Path) -> ProcessHandle:
    """The handle recorded in ``state_path`` (what a provider's ``read`` has); liveness is ``status``'s job.

    Raises ProcessNotRunning if no child is recorded (stopped, or between restarts).
    """
    state_path = Path(state_path)
    state = read_state(state_path)
    if state.pid is None or state.supervisor_pid is None:
        raise ProcessNotRunning(f"{state.spec.name} has no running process recorded ({state.phase}; {state_path})")
    return _handle(state_path, state)


@contextmanager
def _locked(base: Path):
    """Serialise start/stop of one name across processes."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def running_handle(name: str, run_dir: Path) -> ProcessHandle | None:
    """The handle of ``name`` if its supervisor is alive and its child is running, else None."""
    state_path = _paths(run_dir, name)[0]
    try:
        state = read_state(state_path)
    except FileNotFoundError:
        return None
    if _alive(state.supervisor_pid, state.supervisor_started) and _alive(state.pid, state.pid_started):
        return _handle(state_path, state)
    return None


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no output)"
    return " | ".join(text[-lines:]) or "(no output)"


def start_process(
    name: str,
    argv: list[str],
    run_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ports: Mapping[str, int] | None = None,
    meta: Mapping[str, Any] | None = None,
    stop_grace_s: float = 10.0,
    timeout: float = 30.0,
) -> ProcessHandle:
    """Run ``argv`` under a detached supervisor as ``name`` in ``run_dir``; return once the child runs.

    Idempotent: if ``name`` already runs with the same argv and env, its handle is returned; with a
    different command, ProcessConflict. ``env`` is added to this process's environment. ``ports`` and
    ``meta`` are recorded in the state for the caller. ``stop_grace_s`` is how long ``stop`` waits after
    SIGTERM before SIGKILL. Readiness (a port answering) is the caller's check.
    """
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"process name {name!r} must match {NAME_PATTERN} (letters, digits, '.', '_', '-')")
    state_path, _, _, sup_log = _paths(run_dir, name)
    spec = ProcessSpec(
        name=name,
        argv=list(argv),
        env=dict(env or {}),
        cwd=Path(cwd or state_path.parent).resolve(),
        ports=dict(ports or {}),
        meta=dict(meta or {}),
        stop_grace_s=stop_grace_s,
    )
    with _locked(state_path.parent):
        existing = running_handle(name, run_dir)
        if existing is not None:
            current = read_state(state_path).spec
            if (current.argv, current.env) != (spec.argv, spec.env):
                raise ProcessConflict(
                    f"{name} already runs in {run_dir} with another command ({' '.join(current.argv)}); "
                    f"stop it first: serving.supervisor.stop({str(state_path)!r})"
                )
            return existing
        if state_path.exists():
            _stop_locked(state_path)
        _write_state(state_path, ProcessState(spec=spec, phase="launching"))
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        with open(sup_log, "ab") as out:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "serving.supervisor", str(state_path)],
                cwd=spec.cwd,
                env={**os.environ, "PYTHONPATH": pythonpath},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def started() -> ProcessState | None:
            state = read_state(state_path)
            if state.supervisor_pid == launcher.pid and state.restarts > 0:
                # The child already ran and exited (the poll can miss the short "running" phase entirely):
                # that is the answer, not a reason to wait for a pid until the deadline.
                output = state_path.parent / OUTPUT_LOG
                raise ProcessExitedDuringStartup(
                    f"{name} exited during startup with code {state.last_exit_code}: {_tail(output, 3)}"
                    f" (log: {output})",
                    state.last_exit_code,
                    output,
                )
            if state.supervisor_pid == launcher.pid and state.pid is not None:
                # A child that already exited (a zombie until the supervisor reaps it) is not started yet.
                return state if _alive(state.pid, state.pid_started) else None
            if launcher.poll() is not None:
                raise ProcessStartError(
                    f"supervisor of {name} exited with {launcher.returncode}: {_tail(sup_log)} (see {sup_log})"
                )
            return None

        try:
            state = wait_until(started, timeout, f"the supervisor of {name} to start {argv[0]}")
        except (TimeoutError, ProcessStartError):
            _stop_locked(state_path)
            raise
        return _handle(state_path, state)


def status(state_path: Path) -> ProcessStatus:
    """Liveness of the process whose state file is ``state_path`` (FileNotFoundError if there is none)."""
    state_path = Path(state_path)
    state = read_state(state_path)
    supervised = _alive(state.supervisor_pid, state.supervisor_started)
    alive = _alive(state.pid, state.pid_started)
    if state.phase == "stopped" and not alive:
        verdict = "stopped"
    elif alive:
        verdict = "running" if supervised else "unsupervised"
    else:
        verdict = "restarting" if supervised else "dead"
    return ProcessStatus(
        name=state.spec.name,
        state=verdict,
        alive=alive,
        supervised=supervised,
        pid=state.pid if alive else None,
        restarts=state.restarts,
        last_exit_code=state.last_exit_code,
        log_path=state_path.parent / OUTPUT_LOG,
    )


def stop(state_path: Path) -> ProcessStatus:
    """Stop the supervisor and its child (SIGTERM, grace, SIGKILL); a no-op if already stopped."""
    state_path = Path(state_path)
    with _locked(state_path.parent):
        _stop_locked(state_path)
    return status(state_path)


def _terminate_group(pid: int, started: int | None, grace: float, what: str) -> None:
    """SIGTERM the process group led by ``pid``, wait up to ``grace`` s, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid, started):
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_until(lambda: not _alive(pid, started), grace, what)
            return
        except TimeoutError:
            continue


def _stop_locked(state_path: Path) -> None:
    state = read_state(state_path)
    grace = state.spec.stop_grace_s
    if _alive(state.supervisor_pid, state.supervisor_started):
        # The supervisor leads its own session and process group; it forwards SIGTERM to the child.
        os.kill(state.supervisor_pid, signal.SIGTERM)
        try:
            wait_until(
                lambda: not _alive(state.supervisor_pid, state.supervisor_started),
                grace + 5.0,
                f"supervisor of {state.spec.name} (pid {state.supervisor_pid}) to stop",
            )
        except TimeoutError:
            os.kill(state.supervisor_pid, signal.SIGKILL)
    # A child left behind by a supervisor that died hard.
    if state.pid is not None:
        _terminate_group(state.pid, state.pid_started, grace, f"{state.spec.name} (pid {state.pid}) to stop")
    state = read_state(state_path)
    if state.phase != "stopped":
        state.phase, state.pid, state.pid_started = "stopped", None, None
        _write_state(state_path, state)
    (state_path.parent / PID_FILE).unlink(missing_ok=True)


class _StopRequested(Exception):
    """Raised by the signal handler to leave ``child.wait()`` when a stop was asked for."""


class _Supervisor:
    """The loop run by ``python -m serving.supervisor STATE``: run, restart with backoff, stop on signal."""

    def __init__(self, state_path: Path) -> None:
        self.state_path = state_path
        self.state = read_state(state_path)
        self.spec = self.state.spec
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.waiting = False

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        print(f"{stamp} supervisor[{os.getpid()}] {self.spec.name}: {message}", flush=True)

    def on_signal(self, signum: int, _frame: object) -> None:
        """Stop: SIGTERM the child's group, and break out of waiting on a child that may ignore it."""
        self.stopping.set()
        child = self.child
        if child is not None and child.returncode is None:
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        if self.waiting:
            raise _StopRequested

    def spawn(self) -> subprocess.Popen:
        with open(self.state_path.parent / OUTPUT_LOG, "ab") as out:
            child = subprocess.Popen(
                self.spec.argv,
                cwd=self.spec.cwd,
                env={**os.environ, **self.spec.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        self.child = child
        _write_atomic(self.state_path.parent / PID_FILE, f"{child.pid}\n")
        self.state.phase, self.state.pid = "running", child.pid
        self.state.pid_started = _start_time(child.pid)
        _write_state(self.state_path, self.state)
        return child

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.state.supervisor_pid, self.state.supervisor_started = os.getpid(), _start_time(os.getpid())
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            child = self.spawn()
            try:
                self.waiting = True
                if self.stopping.is_set():
                    raise _StopRequested
                code = child.wait()
            except _StopRequested:
                break
            finally:
                self.waiting = False
            self.state.last_exit_code = code
            if self.stopping.is_set():
                break
            ran = time.monotonic() - started
            failures = 0 if ran >= self.spec.healthy_after_s else failures + 1
            delay = min(self.spec.backoff_initial_s * 2 ** max(failures - 1, 0), self.spec.backoff_max_s)
            self.state.restarts += 1
            self.state.phase, self.state.pid, self.state.pid_started = "backoff", None, None
            _write_state(self.state_path, self.state)
            self.log(f"exited with {code} after {ran:.2f}s; restart {self.state.restarts} in {delay:.2f}s")
            self.stopping.wait(delay)
        self.shutdown()

    def shutdown(self) -> None:
        child = self.child
        if child is not None:
            try:
                child.wait(self.spec.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.log(f"pid {child.pid} ignored SIGTERM for {self.spec.stop_grace_s}s; SIGKILL")
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # also whatever the child left in its group
            child.wait()
            self.state.last_exit_code = child.returncode
        self.state.phase, self.state.pid, self.state.pid_started = "stopped", None, None
        _write_state(self.state_path, self.state)
        (self.state_path.parent / PID_FILE).unlink(missing_ok=True)
        self.log("stopped")


if __name__ == "__main__":
    _Supervisor(Path(sys.argv[1])).run()
