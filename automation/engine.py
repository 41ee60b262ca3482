"""How every part of mlrelease reaches the Pulumi engine: the pinned CLI in .venv and one environment.

The CLI and its language host are installed into ``.venv`` by ``make setup`` (scripts/setup.sh). Everything
that runs the engine — the ``mlrelease`` command, tests, benchmarks, ``make demo`` — gets its environment
here, so update checks and plugin downloads (there is no internet) are off everywhere, and the backend
defaults to the embedded local ``file://`` directory unless ``PULUMI_BACKEND_URL`` says otherwise.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from pulumi import automation as auto

PROJECT_DIR = Path(__file__).resolve().parents[1]
VENV_DIR = PROJECT_DIR / ".venv"
LOCAL_BACKEND_DIR = PROJECT_DIR / ".pulumi-state"
# Local stacks encrypt their secrets with a passphrase; this default is for the embedded local backend only.
# Shared backends (s3://, a team's file share) must set PULUMI_CONFIG_PASSPHRASE(_FILE) themselves.
LOCAL_PASSPHRASE = "mlrelease-local"


class EngineMissing(RuntimeError):
    """The pinned engine is not installed; the message says how to install it."""


def engine_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for engine runs: ``base`` (default: this process's) plus mlrelease's defaults."""
    env = dict(os.environ if base is None else base)
    env["PULUMI_SKIP_UPDATE_CHECK"] = "true"
    env["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] = "true"
    env["PATH"] = os.pathsep.join([str(VENV_DIR / "bin"), env.get("PATH", "")])
    if not env.get("PULUMI_BACKEND_URL"):
        LOCAL_BACKEND_DIR.mkdir(exist_ok=True)
        env["PULUMI_BACKEND_URL"] = LOCAL_BACKEND_DIR.as_uri()
    local = env["PULUMI_BACKEND_URL"].startswith("file://")
    if local and not env.get("PULUMI_CONFIG_PASSPHRASE") and not env.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        env["PULUMI_CONFIG_PASSPHRASE"] = LOCAL_PASSPHRASE
    return env


def pulumi_command() -> auto.PulumiCommand:
    """The pinned CLI in ``.venv/bin``; never a ``pulumi`` that happens to be first on PATH.

    One per process: the Automation API runs ``pulumi version`` to build it (0.3 s of CPU each time), and every
    stack this process selects would otherwise pay that again.
    """
    if not (VENV_DIR / "bin" / "pulumi").exists():
        raise EngineMissing(f"the Pulumi engine is not installed in {VENV_DIR}/bin: run 'make setup'")
    return _checked_command()


@functools.cache
def _checked_command() -> auto.PulumiCommand:
    return auto.PulumiCommand(root=str(VENV_DIR))


def workspace(*, work_dir: Path = PROJECT_DIR, env: Mapping[str, str] | None = None) -> auto.LocalWorkspace:
    """The Automation API workspace of the project in ``work_dir`` (list and create stacks), engine environment."""
    return auto.LocalWorkspace(work_dir=str(work_dir), env_vars=engine_env(env), pulumi_command=pulumi_command())


def select_stack(
    stack_name: str,
    *,
    work_dir: Path = PROJECT_DIR,
    env: Mapping[str, str] | None = None,
    create: bool = True,
) -> auto.Stack:
    """Select (or create) ``stack_name`` of the Pulumi project in ``work_dir`` with the engine environment."""
    opts = auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=engine_env(env), pulumi_command=pulumi_command())
    if create:
        return auto.create_or_select_stack(stack_name, work_dir=str(work_dir), opts=opts)
    return auto.select_stack(stack_name, work_dir=str(work_dir), opts=opts)
