"""The Kubernetes target against the local target, in one run: weight step, full promotion, drill recovery.

Usage (root; the local cluster must be up: ``make cluster-up``):
``.venv/bin/python bench/bench_kubernetes.py [--runs 3] [--flips 10]``.

On a copy of the program with a temp backend and the sample models, one stack per target (``local``, and
``kubernetes`` with two router replicas in namespace ``mlrelease-bench``). Per run and target:

- a full promotion of v2 over v1 with zero bake (``promote``: gates, then steps 5/50/100 % with 120 pairs each);
  reported: total seconds and the ``up`` part;
- ``--flips`` weight steps (90/10 <-> 100/0) through ``set_routes``: on Kubernetes one update of the split
  ConfigMap, returned once every router replica reports it applied; on the local target one router call;
- a drill (``error`` fault on v2): the watcher detects it and rolls back to v1; recovery seconds.

Prints medians (min, max) and the ratio kubernetes/local of each figure. Results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from automation.drill import drill
from automation.engine import select_stack
from automation.release import promote
from automation.sandbox import sample_config, sandbox
from automation.stack import StackContext
from cluster.layout import Layout
from components.targets.base import Routes
from components.targets.kube_api import KubeAPI

CANARY = {"steps": [5, 50, 100], "bake_seconds": 0, "min_pairs": 120, "max_bake_seconds": 90, "synthetic_rps": 80}
GATES = {"latency": {"p99_ms": 2000, "p50_ms": 1000, "requests": 600, "max_ratio": 10}, "memory": {"max_mb": 640}}
NAMESPACE = "mlrelease-bench"


def quiet(_line: str) -> None:
    """Progress lines are not part of the measurement."""


def kubernetes_section(root: Path) -> dict[str, Any]:
    layout = Layout.default()
    state = json.loads(layout.state_file.read_text())
    kube = KubeAPI(layout.kubeconfig, None, root / "kube")
    if kube.get(f"/api/v1/namespaces/{NAMESPACE}") is None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        kube.checked(kube.request("POST", "/api/v1/namespaces", json=body), "create namespace")
    return {
        "kubeconfig": str(layout.kubeconfig),
        "namespace": NAMESPACE,
        "image": state["images"]["mlrelease"],
        "image_pull_policy": "Never",
        "router_replicas": 2,
    }


def flips(ctx: StackContext, n: int) -> list[float]:
    """Seconds per weight step, applied (and on Kubernetes confirmed on every replica)."""
    target = ctx.target
    seconds = []
    for i in range(n):
        weights = {"v2": 90.0, "v1": 10.0} if i % 2 == 0 else {"v2": 100.0, "v1": 0.0}
        started = time.perf_counter()
        target.set_routes(Routes(weights=weights, primary="v2"))
        seconds.append(time.perf_counter() - started)
    return seconds


def fmt(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):8.3f}s (min {min(samples):.3f}, max {max(samples):.3f}, n={len(samples)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flips", type=int, default=10)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models, windows, project, env = sandbox(root)
        contexts = []
        try:
            for kind in ("local", "kubernetes"):
                stack = f"bench-{kind}"
                select_stack(stack, work_dir=project, env=env)
                ctx = StackContext(stack, project_dir=project, env=env)
                extra = {"target": "kubernetes", "kubernetes": kubernetes_section(root)} if kind == "kubernetes" else {}

                def config(variant: str, extra: dict[str, Any] = extra) -> dict[str, Any]:
                    return {**sample_config(models, windows, variant), "canary": CANARY, "gates": GATES, **extra}

                ctx.write_config(config("incumbent"))
                ctx.up("bench: first release")
                contexts.append(ctx)
                figures = results.setdefault(kind, {"promote_total": [], "promote_up": [], "step": [], "drill": []})
                for run in range(args.runs):
                    report = promote(ctx, models.models["good"].model_dir, None, quiet)
                    if report.outcome != "promoted":
                        raise SystemExit(f"{kind} run {run}: promotion {report.outcome}: {report.failure}")
                    figures["promote_total"].append(report.durations["total_seconds"])
                    figures["promote_up"].append(report.durations["up_seconds"])
                    figures["step"] += flips(ctx, args.flips)
                    ctx.target.set_routes(Routes(weights={"v2": 100.0, "v1": 0.0}, primary="v2"))
                    drilled = drill(ctx, "error", 300.0, quiet)
                    if drilled.outcome != "recovered":
                        raise SystemExit(f"{kind} run {run}: drill failed: {drilled.problem}")
                    figures["drill"].append(drilled.recovery_seconds)
                    print(f"{kind} run {run}: { ({k: round(v[-1], 3) for k, v in figures.items()}) }", flush=True)
        finally:
            for ctx in contexts:
                ctx.target.destroy()
    for name, label in (
        ("step", "weight step applied (every replica)"),
        ("promote_total", "full promotion, zero bake: total"),
        ("promote_up", "full promotion, zero bake: up"),
        ("drill", "drill recovery (error fault)"),
    ):
        local, kube = results["local"][name], results["kubernetes"][name]
        ratio = statistics.median(kube) / statistics.median(local)
        print(f"{label:<40} local {fmt(local)}  kubernetes {fmt(kube)}  ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
