"""Fixtures for tests that run the real Pulumi engine and the real local target.

Each module gets a copy of the mlrelease program in a temp dir (so stack config files and the run directory
never land in the repo), a fresh ``file://`` backend, and the deterministic sample models and drift windows.
Whatever a test's stacks leave running is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pulumi import automation as auto

from automation.engine import VENV_DIR, select_stack
from automation.sandbox import copy_program, sample_config
from components.targets.local import LocalTarget
from serving.sample_models import SampleModels, build_sample_models
from serving.sample_windows import SampleWindows, build_sample_windows

# Small enough for a 2-core CI machine, large enough for every statistic to have its samples.
# The judge's margins are the canary tests' (tests/canary): a freshly started candidate beside a warm incumbent on
# a busy 2-core machine is measurably slower for its first seconds, and with the default 1.2 a conclusive latency
# breach would be named before the disagreement or error rate these tests provoke (CI, 2026-12-01: both failing
# variants were stopped for latency). The failing variants miss their own limits by far.
FAST_CANARY = {
    "steps": [5, 50, 100],
    "min_pairs": 120,
    "max_bake_seconds": 60,
    "synthetic_rps": 80,
    "judge": {"max_error_rate_increase": 0.03, "latency_allowed_increase": 1.5},
}
# These tests exercise the release flow, not latency: the latency gate's pass and fail are tested in tests/gates
# with bounds set for the purpose. Here the absolute limits only need to pass equal versions on a slow runner,
# and max_ratio still compares candidate and incumbent measured in the same run. Measured for equal versions:
# this VM under load p50 330 ms / p99 5.3 s; the CI runner p50 upper bound 283 ms (2026-12-01), so bounds of
# 150/250 ms failed every engine test that promotes. max_ratio: one server's stalls, which the other does not
# share, move the candidate/incumbent p99 ratio of two equal versions to 0.7-2.1 (upper bounds up to 5.6).
ROOMY_GATES = {
    "latency": {"p99_ms": 10_000, "p50_ms": 3_000, "requests": 600, "max_ratio": 10},
    "memory": {"max_mb": 640},
}


@pytest.fixture(scope="session", autouse=True)
def _engine_installed() -> None:
    """Fail (never skip) when the engine is missing: CI must always run these tests."""
    names = ("pulumi", "pulumi-language-python", "pulumi-resource-pulumi-python")
    missing = [name for name in names if not (VENV_DIR / "bin" / name).exists()]
    if missing:
        pytest.fail(f"engine binaries missing from .venv/bin: {missing}; run 'make setup'")


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[SampleModels, SampleWindows]:
    """Every sample model variant with its held-out set, and the drift windows beside it."""
    root = tmp_path_factory.mktemp("sample")
    models = build_sample_models(root)
    return models, build_sample_windows(models.holdout.parent)


class Project:
    """A copy of the program, its backend, and helpers to configure and inspect its stacks."""

    def __init__(
        self, root: Path, sample: tuple[SampleModels, SampleWindows], backend: dict[str, str] | None = None
    ) -> None:
        """``backend``: the environment of another backend (``PULUMI_BACKEND_URL`` and its credentials); by
        default a ``file://`` directory of the project's own."""
        self.dir = copy_program(root / "project")
        if backend is None:
            (root / "state").mkdir()
        self.env = {
            **os.environ,
            "PULUMI_BACKEND_URL": (root / "state").as_uri(),
            "PULUMI_CONFIG_PASSPHRASE": "engine-tests-passphrase-7c1e",  # distinctive: tests look for leaks
            **(backend or {}),
        }
        self.models, self.windows = sample
        self.stacks: list[str] = []

    def stack(self, name: str) -> auto.Stack:
        self.stacks.append(name)
        return select_stack(name, work_dir=self.dir, env=self.env)

    def target(self, stack: str) -> LocalTarget:
        return LocalTarget.for_stack(self.dir, stack)

    def config(self, variant: str, *, drift: str = "current", **sections: dict[str, Any]) -> dict[str, Any]:
        """The stack config of a release of sample ``variant`` (``sections`` override whole sections)."""
        config = sample_config(self.models, self.windows, variant, shifted=drift == "shifted")
        config.update(canary=FAST_CANARY, gates=ROOMY_GATES)
        config.update(sections)
        return config

    def configure(self, stack: auto.Stack, config: dict[str, Any]) -> None:
        """Replace the stack's mlrelease:* config with ``config``."""
        for key in list(stack.get_all_config()):
            if key.startswith("mlrelease:"):
                stack.remove_config(key)
        stack.set_all_config(
            {
                f"mlrelease:{key}": auto.ConfigValue(value=value if isinstance(value, str) else json.dumps(value))
                for key, value in config.items()
            }
        )

    def released(self, name: str, **sections: dict[str, Any]) -> auto.Stack:
        """Stack ``name`` with the incumbent (v1) released by a plain ``pulumi up``, ``sections`` overriding."""
        stack = self.stack(name)
        self.configure(stack, self.config("incumbent", **sections))
        stack.up()
        return stack

    def teardown(self) -> None:
        for name in self.stacks:
            self.target(name).destroy()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, sample) -> Iterator[Project]:
    proj = Project(tmp_path_factory.mktemp("engine"), sample)
    try:
        yield proj
    finally:
        proj.teardown()


def kill_engine_leftovers(project_dir: Path) -> list[int]:
    """SIGKILL what a killed ``pulumi`` leaves running for ``project_dir``: its language host, program and
    provider plugins are in process groups of their own, and they outlive the engine for many minutes."""
    killed = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        here = proc.info["cwd"] == str(project_dir) or f"--pwd {project_dir}" in cmdline
        if here and "pulumi" in cmdline and proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(proc.pid)
    return killed


def release_resources(stack: auto.Stack) -> list[dict]:
    """Everything but what the engine re-reads on every run: the default dynamic provider records the stack's
    config (so it follows config edits even when the update fails) and the stack's reference to itself records
    the outputs it read. Release resources must not change."""
    resources = stack.export_stack().deployment.get("resources", [])
    skip = ("pulumi:providers:", "pulumi:pulumi:StackReference")
    return [r for r in resources if not r["type"].startswith(skip)]


def resource(stack: auto.Stack, suffix: str) -> dict:
    [found] = [r for r in release_resources(stack) if r["urn"].endswith(f"::{suffix}")]
    return found


@pytest.fixture
def unchanged() -> Callable[[auto.Stack, LocalTarget], Callable[[], None]]:
    """Snapshot release state and live traffic; the returned function asserts both are unchanged."""

    def snapshot(stack: auto.Stack, target: LocalTarget) -> Callable[[], None]:
        before = (release_resources(stack), target.routes().model_dump())

        def check() -> None:
            assert release_resources(stack) == before[0], "stack state changed"
            assert target.routes().model_dump() == before[1], "live traffic changed"

        return check

    return snapshot


class CliResult:
    """One ``mlrelease`` run: exit code, the ``--json`` document (None when stdout is not JSON), stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        try:
            self.json: dict[str, Any] | None = json.loads(proc.stdout)
        except ValueError:
            self.json = None

    def __repr__(self) -> str:  # the failure first: pytest truncates long assertion messages
        failure = (self.json or {}).get("failure")
        return f"CliResult(code={self.code}, failure={failure!r}, json={self.json}, stderr={self.stderr[-2000:]!r})"


def mlrelease(
    project: Project,
    *args: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    json_output: bool = True,
) -> CliResult:
    """Run the real ``mlrelease`` console script against ``project``'s copy and backend, with ``--json``
    unless ``json_output`` is False (then ``stdout`` is what a user reads)."""
    argv = [str(VENV_DIR / "bin" / "mlrelease"), *args, "--project-dir", str(project.dir)]
    argv += ["--json"] if json_output else []
    run = subprocess.run(argv, env=env or project.env, capture_output=True, text=True, timeout=timeout)
    return CliResult(run)
