"""``make demo``: a release story on the embedded local default, with the real engine.

It builds the deterministic sample models, then on a ``demo`` stack of the local ``file://`` backend:
deploys v1, promotes v2, and shows a tampered artifact blocked at preview with the stack left unchanged.
Each step prints what the engine did. The full gated, canaried release lands with the ModelDeployment work.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from pulumi import automation as auto
from rich.console import Console

from automation.engine import PROJECT_DIR, select_stack
from serving.sample_models import SampleModel, build_sample_models

SAMPLE_DIR = PROJECT_DIR / ".mlrelease" / "sample"
STACK = "demo"
console = Console()


def _configure(stack: auto.Stack, model: SampleModel, model_dir: Path | None = None) -> None:
    spec = {
        "name": model.name,
        "version": model.version,
        "path": str(model_dir or model.model_dir),
        "sha256": model.sha256,
    }
    stack.set_config("mlrelease:model", auto.ConfigValue(value=json.dumps(spec)))


def _live(stack: auto.Stack) -> str:
    outputs = stack.outputs()
    model = outputs["model"].value if "model" in outputs else None
    return f"{model['name']} {model['version']} sha256 {model['sha256'][:12]}…" if model else "nothing"


def _up(stack: auto.Stack, what: str) -> None:
    started = time.monotonic()
    result = stack.up(on_output=lambda _line: None)
    changes = ", ".join(f"{n} {kind}" for kind, n in sorted(result.summary.resource_changes.items()))
    console.print(f"[green]✓[/] {what}: pulumi up {result.summary.result} in {time.monotonic() - started:.1f}s ({changes})")
    console.print(f"  live: {_live(stack)}")


def main() -> int:
    console.rule("mlrelease demo — local target, real Pulumi engine")
    started = time.monotonic()
    built = build_sample_models(SAMPLE_DIR)
    console.print(f"built {len(built.models)} sample models in {SAMPLE_DIR.relative_to(PROJECT_DIR)}")
    incumbent, candidate = built.models["incumbent"], built.models["good"]

    stack = select_stack(STACK)
    _configure(stack, incumbent)
    _up(stack, f"deploy {incumbent.version}")

    _configure(stack, candidate)
    _up(stack, f"promote {candidate.version}")

    tampered = SAMPLE_DIR / "tampered"
    shutil.rmtree(tampered, ignore_errors=True)
    shutil.copytree(candidate.model_dir, tampered)
    with open(tampered / "model.joblib", "ab") as artifact:
        artifact.write(b"\0")
    before = stack.export_stack().deployment
    _configure(stack, candidate, model_dir=tampered)
    try:
        stack.preview(on_output=lambda _line: None)
    except auto.CommandError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "sha256" in line and "error" in line), "")
        console.print(f"[red]✗[/] tampered artifact blocked at preview:\n  {reason}")
    else:
        console.print("[red]tampered artifact was NOT blocked[/]")
        return 1
    finally:
        _configure(stack, candidate)
    unchanged = stack.export_stack().deployment == before
    console.print(f"  stack state unchanged: {unchanged}; live: {_live(stack)}")
    history = stack.history()
    console.print(f"stack history: {len(history)} updates; latest {history[0].result} at {history[0].end_time}")
    console.rule(f"done in {time.monotonic() - started:.0f}s")
    return 0 if unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
