"""A throwaway copy of the mlrelease program with the sample models: what tests and benchmarks release.

The program is copied (not run in place) so stack config files and the run directory stay out of the repo;
the config releases one sample variant with the sample held-out set and drift windows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from automation.engine import PROJECT_DIR, VENV_DIR
from serving.sample_models import SampleModels, build_sample_models
from serving.sample_windows import SampleWindows, build_sample_windows


def copy_program(dest: Path) -> Path:
    """Write the program and a Pulumi.yaml that runs it in the project's .venv into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "__main__.py").write_text((PROJECT_DIR / "__main__.py").read_text())
    (dest / "Pulumi.yaml").write_text(
        f"name: mlrelease\nruntime:\n  name: python\n  options:\n    virtualenv: {VENV_DIR}\n"
    )
    return dest


def sample_config(
    models: SampleModels, windows: SampleWindows, variant: str, *, shifted: bool = False
) -> dict[str, Any]:
    """``mlrelease:*`` config (keys without the namespace) releasing sample ``variant``."""
    model = models.models[variant]
    return {
        "model": {"name": model.name, "version": model.version, "path": str(model.model_dir), "sha256": model.sha256},
        "data": {
            "holdout": str(models.holdout),
            "holdout_sha256": models.holdout_sha256,
            "drift_reference": str(windows.reference),
            "drift_current": str(windows.shifted if shifted else windows.current),
        },
    }


class Sandbox(NamedTuple):
    """What a benchmark releases: the sample models and drift windows, a program copy, its backend's environment."""

    models: SampleModels
    windows: SampleWindows
    project: Path
    env: dict[str, str]


def sandbox(root: Path, passphrase: str = "bench") -> Sandbox:
    """Build the samples, a copy of the program and a fresh ``file://`` backend under ``root``."""
    models = build_sample_models(root / "sample")
    windows = build_sample_windows(models.holdout.parent)
    project = copy_program(root / "project")
    (root / "state").mkdir()
    env = {**os.environ, "PULUMI_BACKEND_URL": (root / "state").as_uri(), "PULUMI_CONFIG_PASSPHRASE": passphrase}
    return Sandbox(models, windows, project, env)
