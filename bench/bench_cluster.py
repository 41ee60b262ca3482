"""Local cluster start and stop times, real node against kwok node, through ``python -m cluster``.

Each run starts from nothing (a fresh run directory: new certificates, empty etcd, new containerd store), with
the tools and images already built and cached (their cold build times are in BENCHMARKS.md, from
scripts/cluster-tools.sh's own output). ``up`` returns when the API server is ready, the node is Ready and, on a
real node, CoreDNS is Ready; ``first pod`` is the time from there until a V2 inference answered by an MLServer
pod through the API server's service proxy (real) or a Deployment's pod is Ready (kwok). Baseline in the same
run: kwok mode (control plane and a fake node, no container runtime).

    .venv/bin/python bench/bench_cluster.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster import api  # noqa: E402
from cluster.layout import Layout  # noqa: E402
from serving.wait import wait_until  # noqa: E402
from tests import stock_models  # noqa: E402

PYTHON = ROOT / ".venv" / "bin" / "python"


def _pod(image: str, model_dir: Path | None) -> str:
    container = {"name": "m", "image": image, "imagePullPolicy": "Never"}
    spec: dict = {"containers": [container]}
    if model_dir is not None:
        container.update(
            args=["start", "/models"],
            readinessProbe={"httpGet": {"path": "/v2/health/ready", "port": 8080}, "periodSeconds": 1},
            volumeMounts=[{"name": "model", "mountPath": "/models"}],
        )
        spec["volumes"] = [{"name": "model", "hostPath": {"path": str(model_dir)}}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}}, "spec": spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"selector": {"app": "bench"}, "ports": [{"port": 8080}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deployment, service]})


def one_run(mode: str, model_dir: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout(run=Path(tmp) / "run", netns=f"mlrelease-bench-{mode}")
        env = {**os.environ, "MLRELEASE_CLUSTER_DIR": str(layout.run), "MLRELEASE_CLUSTER_NETNS": layout.netns,
               "MLRELEASE_CLUSTER_MODE": mode}  # fmt: skip

        def cluster(*args: str) -> float:
            started = time.monotonic()
            done = subprocess.run(
                [str(PYTHON), "-m", "cluster", *args], cwd=ROOT, env=env, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(f"cluster {args[0]} ({mode}) failed: {done.stderr.strip()}")
            return time.monotonic() - started

        try:
            up = cluster("up")
            started = time.monotonic()
            images = json.loads(layout.state_file.read_text())["images"]
            real = mode == "real"
            api.kubectl(
                layout, "apply", "-f", "-", stdin=_pod(images.get("mlserver", "none:1"), model_dir if real else None)
            )
            wait_until(
                lambda: api.get_json(layout, "deployment", "bench")["status"].get("readyReplicas") == 1,
                120.0,
                "the bench pod",
            )
            if real:
                rows = stock_models.breast_cancer()[1][stock_models.features()].to_numpy()[:1]
                body = {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": rows.ravel().tolist()}]}
                path = f"/api/v1/namespaces/default/services/bench:8080/proxy/v2/models/{stock_models.MODEL_NAME}/infer"
                with api.client(layout, timeout=30.0) as c:
                    answer = c.post(path, json=body)
                if answer.status_code != 200:
                    raise SystemExit(
                        f"inference through the service proxy answered {answer.status_code}: {answer.text}"
                    )
            first_pod = time.monotonic() - started
        finally:
            down = cluster("down")
    return {"up": up, "first_pod": first_pod, "down": down}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = stock_models.sklearn_pipeline_dir(Path(tmp) / "model")
        model_dir.chmod(0o755)
        results = {mode: [one_run(mode, model_dir) for _ in range(args.runs)] for mode in ("kwok", "real")}
    medians = {mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for mode, runs in results.items()}
    for mode, runs in results.items():
        for key in ("up", "first_pod", "down"):
            values = ", ".join(f"{r[key]:.1f}" for r in runs)
            print(f"{mode:5} {key:10} median {medians[mode][key]:6.1f} s   runs: {values}")
    ratio = medians["real"]["up"] / medians["kwok"]["up"]
    print(f"real/kwok up ratio: {ratio:.2f}")
    total = {m: medians[m]["up"] + medians[m]["first_pod"] for m in medians}
    print(f"nothing -> first answer: real {total['real']:.1f} s, kwok (pod Ready) {total['kwok']:.1f} s")


if __name__ == "__main__":
    main()
