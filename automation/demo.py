"""``make demo``: a release story on the embedded local default, with the real engine and real servers.

``make demo TARGET=kubernetes`` tells the same story on the local Kubernetes cluster (``make cluster-up``, which
that variant runs first): the stack ``demo-k8s`` releases into the namespace ``mlrelease-demo`` with two router
replicas, every object created by pulumi-kubernetes and every request sent through the API server.

On a ``demo`` stack of the local ``file://`` backend it deploys v1, promotes v2 through every canary step,
blocks a worse candidate at a gate (the preview fails; state and traffic stay as they were), catches a
divergent candidate in the canary (traffic returns to v2 at once), printing each verdict, and drills the
rollback: errors are injected into v2 and the watcher, with no human, rolls back to v1 (traffic first, then
the recorded config converged). The dashboard (``mlrelease dashboard``) runs beside it from the first
release, and its address is printed at the start and the end. At the end the stack
is destroyed (its history is kept) unless ``--keep`` is given. The config is ``Pulumi.staging.yaml``'s, with
smaller canary steps so the story takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx
import yaml
from pulumi import automation as auto
from rich.console import Console

from automation.drill import drill
from automation.engine import PROJECT_DIR, VENV_DIR, engine_env, select_stack
from automation.stack import StackContext
from components.targets import factory
from components.targets.base import Target
from components.targets.kube_api import KubeAPI
from serving import http, supervisor
from serving.sample_models import SampleModels, build_sample_models
from serving.sample_windows import build_sample_windows
from serving.wait import wait_until

SAMPLE_DIR = PROJECT_DIR / ".mlrelease" / "sample"
STACK = "demo"
K8S_STACK = "demo-k8s"
K8S_NAMESPACE = "mlrelease-demo"
DRILL_BUDGET_S = 300.0
DASHBOARD = "dashboard"
console = Console(highlight=False)


def base_config() -> dict[str, Any]:
    """Staging's config (keys without the namespace), with a shorter canary for a demo."""
    staging = yaml.safe_load((PROJECT_DIR / "Pulumi.staging.yaml").read_text())["config"]
    config = {key.split(":", 1)[1]: value for key, value in staging.items()}
    config["canary"] = {**config["canary"], "steps": [5, 50, 100], "min_pairs": 200, "synthetic_rps": 80}
    return config


def configure(stack: auto.Stack, config: dict[str, Any], built: SampleModels, variant: str) -> str:
    model = built.models[variant]
    release = {
        **config,
        "model": {**config["model"], "version": model.version, "path": str(model.model_dir), "sha256": model.sha256},
    }
    for key in stack.get_all_config():  # e.g. the restore marker of a kept demo's rollback
        if key.startswith("mlrelease:") and key.split(":", 1)[1] not in release:
            stack.remove_config(key)
    stack.set_all_config(
        {
            f"mlrelease:{key}": auto.ConfigValue(value=json.dumps(value) if not isinstance(value, str) else value)
            for key, value in release.items()
        }
    )
    return model.version


def outputs_of(stack: auto.Stack, suffix: str) -> dict[str, Any]:
    resources = stack.export_stack().deployment.get("resources", [])
    return next(r["outputs"] for r in resources if r["urn"].endswith(f"::{suffix}"))


def show_gates(stack: auto.Stack) -> None:
    for gate in outputs_of(stack, "release-gates")["evidence"]["gates"].values():
        console.print(f"    [green]gate {gate['gate']}[/]: {gate['summary']}")


def show_steps(stack: auto.Stack) -> None:
    for verdict in outputs_of(stack, "release-checkpoint")["verdicts"]:
        console.print(f"    [green]step {verdict['step']} ({verdict['weight']:g}%)[/]: {verdict['explanation']}")


def kubernetes_section(stack: str) -> dict[str, Any]:
    """``mlrelease:kubernetes`` for the local cluster (its kubeconfig and image), its namespace created."""
    from cluster.layout import Layout

    layout = Layout.default()
    try:
        state = json.loads(layout.state_file.read_text())
    except FileNotFoundError:
        raise SystemExit(
            "demo: the local cluster is not up: run `make cluster-up` (make demo TARGET=kubernetes does)"
        ) from None
    kube = KubeAPI(layout.kubeconfig, None, PROJECT_DIR / ".mlrelease" / "run" / stack / "kube")
    if kube.get(f"/api/v1/namespaces/{K8S_NAMESPACE}") is None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": K8S_NAMESPACE}}
        kube.checked(kube.request("POST", "/api/v1/namespaces", json=body), f"create namespace {K8S_NAMESPACE}")
    return {
        "kubeconfig": str(layout.kubeconfig),
        "namespace": K8S_NAMESPACE,
        "image": state["images"]["mlrelease"],
        "image_pull_policy": "Never",
        "router_replicas": 2,
    }


def routes(target: Target) -> str:
    live = target.routes()
    return (
        ", ".join(f"{version} {weight:g}%" for version, weight in live.weights.items()) + f" (primary {live.primary})"
    )


def failure_line(exc: auto.CommandError) -> str:
    """The diagnostic that says why the engine stopped: a gate's, a canary step's or the policy's verdict."""
    for line in str(exc).splitlines():
        for marker in ("gate ", "canary step", "prod policy"):
            if marker in line:
                return line[line.index(marker) :].strip()
    return "see `pulumi stack history`"


def start_dashboard(stack: str) -> str:
    """``mlrelease dashboard`` for the demo stack, supervised in its run directory (so ``--keep`` leaves it up)."""
    run_dir = factory.run_dir(PROJECT_DIR, stack)
    running = supervisor.running_handle(DASHBOARD, run_dir)
    port = running.ports["http"] if running else supervisor.free_port()
    argv = [str(VENV_DIR / "bin" / "mlrelease"), "dashboard", "--stack", stack, "--port", str(port)]
    argv += ["--project-dir", str(PROJECT_DIR)]
    supervisor.start_process(DASHBOARD, argv, run_dir, env=engine_env(), ports={"http": port})
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        try:
            return http.get(url, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, 60, f"the dashboard on {url}")
    return url


def run(keep: bool, target_kind: str = "local") -> int:
    started = time.monotonic()
    console.rule(f"mlrelease demo: {target_kind} target, real Pulumi engine, real model servers")
    built = build_sample_models(SAMPLE_DIR)
    build_sample_windows(built.holdout.parent)
    console.print(f"sample models and data built in {SAMPLE_DIR.relative_to(PROJECT_DIR)}")
    name = K8S_STACK if target_kind == "kubernetes" else STACK
    stack = select_stack(name)
    config = base_config()
    if target_kind == "kubernetes":
        config.update(target="kubernetes", kubernetes=kubernetes_section(name))
        console.print(f"release objects go to namespace {K8S_NAMESPACE} of the local cluster (make cluster-status)")
    stack.destroy(on_output=lambda _line: None)  # a kept earlier demo: start the story from nothing
    ok, board = True, None
    try:
        version = configure(stack, config, built, "incumbent")
        console.print(f"\n[bold]1. deploy {version}[/] (first release: absolute gates, then 100 %)")
        stack.up(on_output=lambda _line: None)
        show_gates(stack)
        target = factory.for_config(PROJECT_DIR, name, config)
        console.print(f"    live: {routes(target)}")
        board = start_dashboard(name)
        console.print(f"    dashboard: [bold]{board}[/] (live from here on)")

        version = configure(stack, config, built, "good")
        console.print(f"\n[bold]2. promote {version}[/] through the canary steps")
        stack.up(on_output=lambda _line: None)
        show_gates(stack)
        show_steps(stack)
        console.print(f"    live: {routes(target)}")

        for n, variant, what in (
            (3, "worse", "a worse model: blocked at a gate"),
            (4, "divergent", "a divergent model: caught in the canary"),
        ):
            version = configure(stack, config, built, variant)
            console.print(f"\n[bold]{n}. {version}: {what}[/]")
            before = routes(target)
            try:
                stack.up(on_output=lambda _line: None)
            except auto.CommandError as exc:
                console.print(f"    [red]blocked[/]: {failure_line(exc)}")
            else:
                console.print("    [red]NOT blocked: this is a bug[/]")
                ok = False
            after = routes(target)
            console.print(f"    live: {after}" + ("  (unchanged)" if after == before else ""))
        console.print(
            "\n[bold]5. a drill[/]: errors injected into the live version; the watcher rolls back by itself"
            " (traffic first, then state)"
        )
        report = drill(StackContext(name), "error", DRILL_BUDGET_S, lambda _line: None)
        restored = report.restored_version
        if report.outcome == "recovered":
            console.print(
                f"    [green]recovered[/]: breach detected after {report.detection_seconds:.1f}s, traffic on {restored}"
                f" {report.traffic_seconds or 0:.2f}s after the rollback fired, recovered in"
                f" {report.recovery_seconds:.1f}s (budget {report.budget_seconds:g}s)"
            )
        else:
            console.print(f"    [red]drill failed[/]: {report.problem}")
            ok = False
        console.print(f"    live: {routes(target)}")
        history = stack.history()
        verified = stack.outputs()["verified"].value["live"]["version"]
        console.print(
            f"\nverified checkpoint: {verified}; stack history: " + ", ".join(f"{h.result}" for h in reversed(history))
        )
    finally:
        if board:
            console.print(f"\ndashboard: [bold]{board}[/]" + ("" if keep else " (stops with the demo stack)"))
        if not keep:
            stack.destroy(on_output=lambda _line: None)
            dashboard_state = factory.run_dir(PROJECT_DIR, name) / DASHBOARD / supervisor.STATE_FILE
            if dashboard_state.exists():
                supervisor.stop(dashboard_state)
            console.print("demo stack destroyed (its history is kept); run with --keep to leave it serving")
    console.rule(f"done in {time.monotonic() - started:.0f}s")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the demo stack running at the end")
    parser.add_argument("--target", choices=("local", "kubernetes"), default="local", help="where to release")
    args = parser.parse_args()
    sys.exit(run(args.keep, args.target))


if __name__ == "__main__":
    main()
