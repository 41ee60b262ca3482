"""``audit`` on a stack with 1,000 updates, against a naive reader that parses every history record once.

    .venv/bin/python bench/bench_audit.py [--updates 1000] [--runs 7]

How the history is built: ``SyntheticStack`` (also what tests/automation write their histories with) plays
releases into a temp ``file://`` backend the way Pulumi v3.260's DIY backend records them: per update a
``<stack>-<unix nanos>.history.json`` and ``.checkpoint.json`` pair with their ``.attrs`` sidecars, named by the
save time just after the update ended, startTime/endTime in whole seconds. Resource state carries over from one
update to the next as the engine keeps it: a release rewrites the gates, the versions, each canary step (verdict
with started_at/ended_at) and the verified checkpoint; a gate failure rewrites nothing; a failing step keeps its
previous verdict and stops the update, so the checkpoint stays the last verified one. Outputs have the demo
stack's shape and about its size (inputs beside outputs; gate evidence ~20 kB, a step verdict ~7.5 kB, a
checkpoint ~190 kB, a history record ~2.3 kB; the demo's: 17.6, 7.9, 187 and 2.7 kB). The updates cycle
through promotions of new versions, a release blocked at a gate, one that fails at canary step 2, and a rollback
(traffic moved, then a converge update), with a destroy and a fresh first release every 250 updates.

Printed: the median of ``--runs`` audits at an early, a middle and a late time (each inside an update's canary);
the first audit of the process (cold: nothing imported lazily is warm yet; the files are in the OS page cache,
having just been written); and the baseline measured in the same run, json-loading every history file once.

``--s3`` uploads the same files to a local SeaweedFS (``automation.s3server``, started in the temp dir) at the keys
Pulumi's DIY S3 backend uses, and times the same audits, the whole CLI process and ``--verify`` from the bucket,
each against its ``file://`` figure of the same run.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from automation.backend_files import stack_history
from automation.engine import VENV_DIR
from components.audit_chain import seal

PROJECT = "mlrelease"
MODEL = "credit-default"
STEPS = (5, 50, 100)
# What VerifiedCheckpoint exports as the stack output `verified`.
RECORD = ("live", "previous", "environment", "config_digest", "data_digests", "verified_at")
DYNAMIC = "pulumi-python:dynamic:Resource"
FEATURES = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "region"]
DATA = {
    "drift_current": {"rows": 5000, "sha256": hashlib.sha256(b"current").hexdigest(), "source": "/d/current.parquet"},
    "drift_kind": "files",
    "drift_reference": {"rows": 5000, "sha256": hashlib.sha256(b"reference").hexdigest(), "source": "/d/ref.parquet"},
    "features": FEATURES,
    "holdout": "/d/holdout.parquet",
    "holdout_rows": 5000,
    "holdout_sha256": hashlib.sha256(b"holdout").hexdigest(),
    "label": "default",
}
# What the engine records about the run (the demo stack's keys).
ENVIRONMENT = {
    "exec.kind": "auto.local",
    "git.author": "mlrelease",
    "git.author.email": "mlrelease@localhost",
    "git.committer": "mlrelease",
    "git.committer.email": "mlrelease@localhost",
    "git.dirty": "true",
    "git.head": "ebe3ff83ac940a7ce26de2ac4d65771dc27d391e",
    "git.headName": "refs/heads/main",
    "pulumi.arch": "amd64",
    **{
        f"pulumi.env.{name}": "set"
        for name in ("PULUMI_AUTOMATION_API", "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")
    },
    "pulumi.env.PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    "pulumi.env.PULUMI_SKIP_UPDATE_CHECK": "true",
    **{f"pulumi.flag.{flag}": "true" for flag in ("non-interactive", "skip-preview", "yes")},
    "pulumi.flag.stack": "set",
    "pulumi.os": "linux",
    "pulumi.version": "v3.260.0",
    "runtime.executable": "/work/main/.venv/bin/python3",
    "runtime.name": "python",
    "runtime.version": "3.11.7\n",
    "stack.environments": "[]",
    "updatePlan": "false",
}
CANARY = {
    "bake_seconds": 0,
    "min_pairs": 200,
    "max_pairs": 3000,
    "max_bake_seconds": 120,
    "shadow_fraction": 1.0,
    "synthetic_rps": 80,
    "comparison": {"decision_threshold": 0.5, "max_disagreement": 0.02, "max_abs_diff_p99": 0.1, "max_bias": 0.02},
    "judge": {"confidence": 0.98, "tolerance": 0.25, "max_error_rate_increase": 0.01, "latency_allowed_increase": 1.2},
}
GATES = {
    "evaluation": {"metric": "roc_auc", "tolerance": 0.01, "floor": 0.7, "confidence": 0.95, "n_boot": 1000},
    "latency": {"p99_ms": 50, "p50_ms": 20, "rate_rps": 100, "requests": 1000, "warmup_requests": 100},
    "memory": {"max_mb": 512},
    "drift": {"psi_threshold": 0.25, "alpha": 0.01, "correction": "bh"},
}
# Long enough that evidence and verdicts have the demo stack's sizes.
EXPLANATION = (
    "PSI 0.003468 over 10 bins is within the threshold 0.25 by 0.2465 (rule of thumb: stable; chance of a PSI"
    " this large with no drift at these sample sizes p=0.4683); KS D=0.0136, p=0.7443, bh-adjusted p=0.9753 -> PASS."
)


def sha(version: str) -> str:
    """The artifact digest of a synthetic version: derived from its name, so tests can predict it."""
    return hashlib.sha256(f"artifact {version}".encode()).hexdigest()


def ref(version: str) -> dict[str, str]:
    """A model as the release resources record it."""
    return {"model_dir": f"/srv/models/{version}", "name": MODEL, "sha256": sha(version), "version": version}


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stack_config(version: str, steps: tuple[int, ...], restore: dict[str, Any] | None) -> dict[str, Any]:
    """The ``mlrelease:*`` config (keys without the namespace) of a release of ``version``."""
    config: dict[str, Any] = {
        "canary": {"steps": list(steps), **CANARY},
        "data": {"holdout": DATA["holdout"], "holdout_sha256": DATA["holdout_sha256"], "label": "default"},
        "environment": "staging",
        "gates": GATES,
        "model": {"name": MODEL, "version": version, "path": f"/srv/models/{version}", "sha256": sha(version)},
        "rollback": {"window_seconds": 3600},
        "target": "local",
    }
    if restore:
        config["restore"] = restore
    return config


def gate_evidence(candidate: str, incumbent: str | None, started: float) -> dict[str, Any]:
    gates = {
        gate: {
            "gate": gate,
            "passed": True,
            "duration_s": 4.9,
            "explanation": f"{gate} gate: {EXPLANATION}",
            "observed": {"value": 0.8123, "bound": 0.8011},
            "report": {f: {"feature": f, "explanation": f"drift[{f}]: {EXPLANATION * 2}"} for f in FEATURES},
        }
        for gate in ("evaluation", "latency", "memory", "drift")
    }
    return {
        "cache_key": hashlib.sha256(f"{candidate}/{incumbent}".encode()).hexdigest(),
        "candidate": ref(candidate),
        "incumbent": ref(incumbent) if incumbent else None,
        "data": DATA,
        "durations_s": {"load": 11.1, "scoring": 2.5, "servers_start": 8.4, "total": 24.1},
        "environment": "staging",
        "gate_code_version": "gates-1",
        "gates": gates,
        "passed": True,
        "started_at": iso(started),
    }


def verdict(
    step: int, weight: int, candidate: str, incumbent: str | None, routes: dict[str, int], times: tuple[float, float]
) -> dict[str, Any]:
    checks = ("disagreement", "prediction_comparison", "error_rate", "latency")
    return {
        "step": step,
        "weight": weight,
        "candidate": candidate,
        "incumbent": incumbent,
        "passed": True,
        "failed_check": None,
        "pairs": 650,
        "decision_pairs": 312,
        "bake_seconds": times[1] - times[0],
        "switch_ms": 3.2,
        "reverted": False,
        "routes": {"weights": routes, "primary": incumbent or candidate},
        "checks": [
            {"name": c, "passed": True, "observed": 0, "explanation": f"{c}: {EXPLANATION * 6}"} for c in checks
        ],
        "evidence": {"score_diff_quantiles": [round(i * 1e-4, 6) for i in range(200)]},
        "explanation": f"canary step {step} ({weight}% to {candidate}) passed",
        "started_at": times[0],
        "ended_at": times[1],
    }


@dataclass
class Played:
    """What an update was and when it ran: start and end, when it deployed the candidate, each stored step's times."""

    what: str  # first release, promotion, gate blocked, canary failed, rollback, refresh or destroy
    start: float
    end: float
    deployed_at: float | None = None
    steps: list[tuple[float, float]] = field(default_factory=list)


class SyntheticStack:
    """Writes a stack's history as the DIY backend does, carrying resource state across updates like the engine.

    Times are unix seconds; a release takes ``gates_s`` for the gates, ``deploy_s`` to deploy the candidate and
    ``step_s`` per canary step, then half a second to verify. ``timestamps=False`` writes step verdicts as they
    were saved before steps were timed (no started_at/ended_at); ``gz=True`` as with PULUMI_DIY_BACKEND_GZIP.
    """

    def __init__(self, backend: Path, stack: str, *, gz: bool = False) -> None:
        self.stack, self.gz = stack, gz
        self.url = backend.resolve().as_uri()
        self.dir = backend / ".pulumi" / "history" / PROJECT / stack
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files = stack_history(self.url, PROJECT, stack)
        self.resources: dict[str, dict[str, Any]] = {}
        self.config: dict[str, Any] = {}
        self._provider = {
            "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
            "ciphertext": "v1:" + base64.b64encode(os.urandom(120)).decode(),
        }

    @property
    def live(self) -> str | None:
        """The verified live version, as the next release reads it from the stack's outputs."""
        checkpoint = self.resources.get("release-checkpoint")
        return checkpoint["outputs"]["live"]["version"] if checkpoint else None

    @property
    def previous(self) -> str | None:
        checkpoint = self.resources.get("release-checkpoint")
        previous = checkpoint["outputs"]["previous"] if checkpoint else None
        return previous["version"] if previous else None

    def release(
        self,
        version: str,
        start: float,
        *,
        gate_fails: bool = False,
        fail_step: int | None = None,
        restore: dict[str, Any] | None = None,
        steps: tuple[int, ...] = STEPS,
        gates_s: float = 20,
        deploy_s: float = 5,
        step_s: float = 10,
        timestamps: bool = True,
        message: str = "",
        retry: bool = False,
    ) -> Played:
        """``pulumi up`` of a release of ``version``; with ``restore``, a rollback's converge update.

        A converge has no incumbent (as ModelDeployment's release_roles): its steps give the restored version
        100 % as a first release does, and its verified checkpoint has no previous release. A ``retry`` of the
        candidate a failed attempt deployed changes no gate or versions record (their inputs are the same).
        """
        self.config = stack_config(version, steps, restore)
        incumbent = None if restore else self.live
        what = "rollback" if restore else "promotion" if incumbent else "first release"
        if gate_fails or fail_step:
            what = "gate blocked" if gate_fails else "canary failed"
        played = Played(what, start, start + gates_s)
        if gate_fails:
            self._save("update", played, "failed", message, changed=[])
            return played
        t = start + gates_s
        evidence = gate_evidence(version, incumbent, start)
        if not retry:
            self._set(
                "release-gates", t, candidate=ref(version), incumbent=incumbent and ref(incumbent), evidence=evidence
            )
        changed = [] if retry else ["release-gates", "release-versions"]
        if "release-runtime" not in self.resources:  # started once, kept across releases
            self._set("release-runtime", t + 1, run_dir=f"/srv/run/{self.stack}", state={"router": "running"})
            changed.append("release-runtime")
        t += deploy_s
        deployed = {v: {**ref(v), "ready": True, "url": "http://127.0.0.1:59259"} for v in (version, incumbent) if v}
        if not retry:
            self._set(
                "release-versions", t, candidate=ref(version), warm=incumbent and ref(incumbent), deployed=deployed
            )
            played.deployed_at = t
        verdicts = []
        for index, weight in enumerate(steps, start=1):
            times = (t, t + step_s)
            t += step_s
            if index == fail_step:
                played.end = t + 1
                self._save("update", played, "failed", message, changed)
                return played
            routes = {version: weight, incumbent: 100 - weight} if incumbent else {version: 100}
            step = verdict(index, weight, version, incumbent, routes, times)
            if not timestamps:
                del step["started_at"], step["ended_at"]
            self._set(f"release-canary-{index}", t, index=index, weight=weight, candidate=version, verdict=step)
            changed.append(f"release-canary-{index}")
            verdicts.append(step)
            played.steps.append(times)
        record = {
            "live": ref(version),
            "previous": incumbent and ref(incumbent),
            "config": self.config,
            "config_digest": hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest(),
            "data_digests": DATA,
            "environment": "staging",
            "evidence": self.resources["release-gates"]["outputs"]["evidence"],
            "verdicts": verdicts,
            "verified_at": t + 0.5,
        }
        before = self.resources.get("release-checkpoint", {}).get("outputs")
        self._set("release-checkpoint", t + 0.5, **record, **seal(record, before, self.files, self.stack))
        played.end = t + 1
        self._save("update", played, "succeeded", message, [*changed, "release-checkpoint"])
        return played

    def rollback(self, moved_at: float, start: float, **kwargs: Any) -> Played:
        """``mlrelease rollback``: all traffic to the verified previous version at ``moved_at``, then converge."""
        target, origin = self.previous, self.live
        if not (target and origin):
            raise ValueError("rollback needs a verified previous release")
        restore = {"version": target, "sha256": sha(target), "from_version": origin, "traffic_moved_at": moved_at}
        return self.release(target, start, restore={**restore, "reason": "watcher: divergence"}, **kwargs)

    def refresh(self, start: float) -> Played:
        """``pulumi refresh``: the state is read back unchanged."""
        played = Played("refresh", start, start + 3)
        self._save("refresh", played, "succeeded", "", changed=[])
        return played

    def destroy(self, start: float, *, result: str = "succeeded") -> Played:
        """``pulumi destroy``: every resource goes (the record of a failed one too, in this sketch); history stays."""
        played = Played("destroy", start, start + 8)
        self.resources.clear()
        self._save("destroy", played, result, "", changed=[])
        return played

    def _set(self, name: str, modified: float, **outputs: Any) -> None:
        created = self.resources.get(name, {}).get("created", iso(modified))
        component = f"urn:pulumi:{self.stack}::{PROJECT}::mlrelease:index:ModelDeployment::release"
        self.resources[name] = {
            "urn": f"urn:pulumi:{self.stack}::{PROJECT}::mlrelease:index:ModelDeployment${DYNAMIC}::{name}",
            "custom": True,
            "id": name.removeprefix("release-"),
            "type": DYNAMIC,
            "inputs": {"__provider": self._provider, **outputs},
            "outputs": {"__provider": self._provider, **outputs},
            "parent": component,
            "created": created,
            "modified": iso(modified),
        }

    def _parents(self) -> list[dict[str, Any]]:
        """The stack and the ModelDeployment component, with the outputs they export."""
        checkpoint = self.resources.get("release-checkpoint", {}).get("outputs") or {}
        record = {key: checkpoint.get(key) for key in RECORD}
        steps = [r["outputs"]["verdict"] for name, r in self.resources.items() if name.startswith("release-canary")]
        urn = f"urn:pulumi:{self.stack}::{PROJECT}::"
        stack = {"model": self.config["model"], "verified": record}
        component = {"routes": steps[-1] if steps else None, "verified": record}
        return [
            {
                "urn": f"{urn}pulumi:pulumi:Stack::{PROJECT}-{self.stack}",
                "type": "pulumi:pulumi:Stack",
                "outputs": stack,
            },
            {
                "urn": f"{urn}mlrelease:index:ModelDeployment::release",
                "type": "mlrelease:index:ModelDeployment",
                "outputs": component,
            },
        ]

    def _save(self, kind: str, played: Played, result: str, message: str, changed: list[str]) -> None:
        nanos = int((played.end + 0.3) * 1e9)  # saved just after the update ended
        history = {
            "kind": kind,
            "startTime": int(played.start),
            "message": message,
            "environment": ENVIRONMENT,
            "config": {
                f"{PROJECT}:{key}": value if isinstance(value, str) else json.dumps(value)
                for key, value in self.config.items()
            },
            "version": 0,
            "result": result,
            "endTime": int(played.end),
            "resourceChanges": {"update": len(changed), "same": len(self.resources) - len(changed)},
        }
        latest: dict[str, Any] = {
            "manifest": {"time": iso(played.end), "magic": "7dff0d16", "version": "v3.260.0"},
            "secrets_providers": {"type": "passphrase", "state": {"salt": "v1:011oUz4OQAI="}},
        }
        if self.resources:  # the stack and the component first, as the engine writes them; a destroyed stack has none
            latest["resources"] = [*self._parents(), *self.resources.values()]
        latest["metadata"] = {}
        checkpoint = {"version": 3, "checkpoint": {"stack": f"organization/{PROJECT}/{self.stack}", "latest": latest}}
        for part, document in (("history", history), ("checkpoint", checkpoint)):
            data = json.dumps(document, separators=(",", ":")).encode()
            path = self.dir / f"{self.stack}-{nanos}.{part}.json{'.gz' if self.gz else ''}"
            path.write_bytes(gzip.compress(data) if self.gz else data)
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            attrs = {"user.content_type": "text/plain; charset=utf-8", "user.metadata": None, "md5": md5}
            path.with_name(path.name + ".attrs").write_text(json.dumps(attrs, separators=(",", ":")))


def build_history(stack: SyntheticStack, updates: int, start: float) -> list[Played]:
    """``updates`` updates cycling through what a stack's life holds (see the module docstring)."""
    played: list[Played] = []
    t, release = start, 0
    while len(played) < updates:
        n = len(played)
        if n % 250 == 249:
            played.append(stack.destroy(t))
        elif stack.live is None:
            release += 1
            played.append(stack.release(f"v{release}", t))
        elif n % 10 == 3:
            played.append(stack.release(f"v{release + 1}-worse", t, gate_fails=True))
        elif n % 10 == 6:
            played.append(stack.release(f"v{release + 1}-divergent", t, fail_step=2))
        elif n % 10 == 8 and stack.previous:
            moved = t + 30
            played.append(stack.rollback(moved, moved + 20))
        else:
            release += 1
            played.append(stack.release(f"v{release}", t, message=f"promote v{release}"))
        t = played[-1].end + 600
    return played


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def load_every_history(directory: Path) -> int:
    """The naive reader: parse every update's history record once."""
    names = [name for name in os.listdir(directory) if name.endswith(".history.json")]
    for name in names:
        json.loads((directory / name).read_bytes())
    return len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--s3", action="store_true", help="also from a bucket of a local SeaweedFS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        stack = SyntheticStack(Path(tmp), "staging")
        played = build_history(stack, args.updates, start=1_790_000_000)
        size = sum(p.stat().st_size for p in stack.dir.iterdir())
        print(
            f"history: {len(played)} updates, {len(os.listdir(stack.dir))} files, {size / 1e6:.0f} MB,"
            f" written in {time.perf_counter() - started:.1f}s"
        )
        # Inside the canary of an early, a middle and a late promotion: the answer needs the update's checkpoint
        # and the one before it.
        promotions = [p for p in played if p.what == "promotion"]
        moments = {
            name: promotions[i].steps[1][0] + 1
            for name, i in (("early", 1), ("middle", len(promotions) // 2), ("late", -1))
        }

        imported = time.perf_counter()
        from automation.audit import audit  # timed: a CLI run pays the import before its one (cold) call

        imported = time.perf_counter() - imported

        def at(unix: float) -> Callable[[], object]:
            return lambda: audit(stack.url, "staging", datetime.fromtimestamp(unix, UTC))

        cold = timed(at(moments["middle"]), 1)[0]
        baseline = statistics.median(timed(lambda: load_every_history(stack.dir), args.runs))
        print(f"{'baseline: json-load every history file once':<48} median {baseline * 1e3:8.2f} ms  n={args.runs}")
        print(f"{'import automation.audit':<48}        {imported * 1e3:8.2f} ms")
        print(
            f"{'audit, first call of the process (cold)':<48}        {cold * 1e3:8.2f} ms  ratio {cold / baseline:.3f}"
        )
        for name, unix in moments.items():
            samples = timed(at(unix), args.runs)
            median = statistics.median(samples)
            spread = f"min {min(samples) * 1e3:.2f} max {max(samples) * 1e3:.2f}"
            label = f"audit, {name} (mid-canary)"
            print(f"{label:<48} median {median * 1e3:8.2f} ms  {spread}  n={args.runs}  ratio {median / baseline:.3f}")
        # What an operator waits for: the whole `mlrelease audit --json` process (interpreter, imports, CLI).
        iso = datetime.fromtimestamp(moments["middle"], UTC).isoformat()
        argv = [str(VENV_DIR / "bin" / "mlrelease"), "audit", "--stack", "staging", "--at", iso, "--json"]
        env = {**os.environ, "PULUMI_BACKEND_URL": stack.url}
        cli = timed(lambda: subprocess.run(argv, env=env, check=True, capture_output=True), args.runs)
        spread = f"min {min(cli):.2f} max {max(cli):.2f}"
        label = "`mlrelease audit --json`, whole process"
        print(f"{label:<48} median {statistics.median(cli):8.2f} s   {spread}  n={args.runs}")
        report = at(moments["late"])()
        print(
            "late answer:", ", ".join(f"{m.version} {m.traffic_percent:g}%" for m in report.models), f"({report.state})"
        )
        # `audit --verify` reads every file by design: against the baseline that parses every history record.
        from automation.audit_verify import verify

        samples = timed(lambda: verify(stack.url, "staging"), 3)
        checked = verify(stack.url, "staging")
        label = "audit --verify, whole history (in process)"
        print(
            f"{label:<48} median {statistics.median(samples):8.2f} s   n=3  ratio"
            f" {statistics.median(samples) / baseline:.1f}  intact={checked.intact} sealed={checked.sealed_records}"
        )
        if args.s3:
            on_s3(Path(tmp), stack, moments, args.runs, statistics.median(cli), statistics.median(samples))


def on_s3(tmp: Path, stack: SyntheticStack, moments: dict[str, float], runs: int, cli_file: float, verify_file: float):
    """The same questions from a bucket: each figure against its file:// one of this run."""
    from automation.audit import audit
    from automation.audit_verify import verify
    from automation.s3server import start_s3_server, stop_s3_server
    from automation.stores.s3 import Bucket

    server = start_s3_server(tmp / "s3")
    try:
        os.environ.update(server.env())
        url = server.backend_url()
        bucket = Bucket.from_backend_url(url)
        started = time.perf_counter()
        files = [p for p in stack.dir.iterdir() if not p.name.endswith(".attrs")]
        for path in files:
            key = f".pulumi/history/{PROJECT}/staging/{path.name}"
            bucket.client().put_object(Bucket=bucket.name, Key=key, Body=path.read_bytes())
        print(f"s3: {len(files)} objects uploaded in {time.perf_counter() - started:.1f}s to {url.split('?')[0]}")

        def at(where: str, unix: float) -> Callable[[], object]:
            return lambda: audit(where, "staging", datetime.fromtimestamp(unix, UTC))

        cold = timed(at(url, moments["middle"]), 1)[0]
        print(f"{'s3: audit, first call of the process (cold)':<48}        {cold * 1e3:8.2f} ms")
        for name, unix in moments.items():
            local = statistics.median(timed(at(stack.url, unix), runs))
            samples = timed(at(url, unix), runs)
            median = statistics.median(samples)
            label = f"s3: audit, {name} (mid-canary)"
            print(f"{label:<48} median {median * 1e3:8.2f} ms  n={runs}  file:// {local * 1e3:.2f} ms  ratio"
                  f" {median / local:.1f}")  # fmt: skip
        iso = datetime.fromtimestamp(moments["middle"], UTC).isoformat()
        argv = [str(VENV_DIR / "bin" / "mlrelease"), "audit", "--stack", "staging", "--at", iso, "--json"]
        env = {**os.environ, "PULUMI_BACKEND_URL": url}
        cli = statistics.median(timed(lambda: subprocess.run(argv, env=env, check=True, capture_output=True), runs))
        label = "s3: `mlrelease audit --json`, whole process"
        print(f"{label:<48} median {cli:8.2f} s   n={runs}  file:// {cli_file:.2f} s  ratio {cli / cli_file:.2f}")
        same = audit(url, "staging", datetime.fromtimestamp(moments["late"], UTC))
        assert same == audit(stack.url, "staging", datetime.fromtimestamp(moments["late"], UTC))
        samples = timed(lambda: verify(url, "staging"), 3)
        label = "s3: audit --verify, whole history (in process)"
        print(f"{label:<48} median {statistics.median(samples):8.2f} s   n=3  file:// {verify_file:.2f} s  ratio"
              f" {statistics.median(samples) / verify_file:.1f}  intact={verify(url, 'staging').intact}")  # fmt: skip
    finally:
        stop_s3_server(tmp / "s3")


if __name__ == "__main__":
    main()
