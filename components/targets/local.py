"""The embedded local target: real MLServer per version, the router in front, a Prometheus scraping it.

Everything lives in one run directory per stack (``<project>/.mlrelease/run/<stack>/``) so a Pulumi
command can end while the runtime keeps serving, and the next command (or another process) re-attaches
with ``LocalTarget.from_state``: the object holds no state of its own, every answer is read from the
run directory and the live processes. Layout::

    admin-token        the router's bearer token, generated once, mode 0600
    runtime.json       the RuntimeConfig last ensured
    router/            supervised router; router.json is its config, rewritten after every routing change
                       so a crash-restart comes back with the live split, not the first one
    prometheus/        supervised Prometheus scraping the router (job "router") and its companions:
    node-exporter/     host metrics and the release metrics of textfile/ (serving.monitoring)
    alertmanager/      where the alerting rules of serving/rules/ send
    textfile/          the release metrics (gates, canary, checkpoint, watcher, drills) as *.prom files
    <model>-<version>/ one supervised MLServer per deployed version
    traffic/           optional synthetic traffic (``serving.traffic``)
    log/, pairs/       the router's inference log and shadow pairs (kept by ``destroy``)

The router starts with the first deployed version (it cannot run without one) and stops with the last.
The router has no admin call for its shadow fraction or decision threshold, so changing either rewrites
its config and restarts it (a few hundred milliseconds without a router).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.targets.base import (
    DeploymentState,
    Fault,
    PairCursor,
    PairPage,
    ProcessInfo,
    Routes,
    RuntimeConfig,
    RuntimeState,
    ShadowPair,
    TargetError,
    VersionStats,
)
from components.targets.stats import version_stats
from serving import supervisor
from serving.artifacts import ArtifactDigestError, ModelDirError, read_settings
from serving.client import RouterAdmin, RouterError
from serving.modelserver import ModelServerError, is_ready, model_server_handle, start_model_server
from serving.monitoring import ALERTMANAGER, NODE_EXPORTER
from serving.private_files import write_private
from serving.prometheus import PrometheusError, ScrapeTarget, start_prometheus
from serving.router_process import start_router
from serving.routing import RouterConfig, UpstreamSpec
from serving.v2 import DEFAULT_OUTPUT, OutputSpec

RUN_ROOT = Path(".mlrelease") / "run"
TOKEN_FILE = "admin-token"
RUNTIME_FILE = "runtime.json"
ROUTER = "router"
PROMETHEUS = "prometheus"
TRAFFIC = "traffic"
SCRAPE_JOB = "router"
_RUNTIME_PROCESSES = (ROUTER, PROMETHEUS, TRAFFIC, NODE_EXPORTER, ALERTMANAGER)


def _process_info(state_path: Path) -> ProcessInfo:
    name = state_path.parent.name
    try:
        seen = supervisor.status(state_path)
    except FileNotFoundError:
        return ProcessInfo(name=name, state="absent")
    return ProcessInfo(name=name, state=seen.state, pid=seen.pid, restarts=seen.restarts, log_path=str(seen.log_path))


class LocalTarget:
    """The local runtime of one stack, addressed by its run directory."""

    kind = "local"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir).resolve()
        self._admin_client: RouterAdmin | None = None
        self._admin_url: str | None = None

    @classmethod
    def for_stack(cls, project_dir: Path, stack: str) -> LocalTarget:
        """The target of ``stack`` in ``project_dir`` (``<project>/.mlrelease/run/<stack>``)."""
        return cls(Path(project_dir) / RUN_ROOT / stack)

    @classmethod
    def from_state(cls, state: RuntimeState | Mapping[str, Any]) -> LocalTarget:
        """Re-attach to a runtime from the state a provider kept; TargetError if it is gone."""
        state = RuntimeState.model_validate(state)
        if state.target != cls.kind:
            raise TargetError(f"state is for target {state.target!r}, not {cls.kind!r}")
        target = cls(Path(state.location))
        if not (target.run_dir / RUNTIME_FILE).exists():
            raise TargetError(
                f"no local runtime in {target.run_dir}: it was destroyed or the directory moved; "
                "`pulumi up` creates it again"
            )
        return target

    # -- files -------------------------------------------------------------------------------------

    def _state_path(self, name: str) -> Path:
        return self.run_dir / name / supervisor.STATE_FILE

    def _token(self) -> str:
        path = self.run_dir / TOKEN_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        return token

    def config(self) -> RuntimeConfig:
        """The runtime config last ensured, or TargetError if the runtime was never set up here."""
        try:
            return RuntimeConfig.model_validate_json((self.run_dir / RUNTIME_FILE).read_bytes())
        except FileNotFoundError:
            raise TargetError(f"no local runtime in {self.run_dir}: ensure_runtime first") from None

    def _router_config_path(self) -> Path:
        return self.run_dir / ROUTER / "router.json"

    def _router_config(self) -> RouterConfig | None:
        try:
            return RouterConfig.model_validate_json(self._router_config_path().read_bytes())
        except FileNotFoundError:
            return None

    def _router_url(self) -> str | None:
        handle = supervisor.running_handle(ROUTER, self.run_dir)
        return f"http://127.0.0.1:{handle.ports['http']}" if handle else None

    def _admin(self) -> RouterAdmin:
        """The router's admin client, kept while the router keeps its address (and its open connection)."""
        url = self._router_url()
        if url is None:
            state = _process_info(self._state_path(ROUTER)).state
            raise TargetError(f"the router in {self.run_dir} is not running ({state}); ensure_runtime restarts it")
        if url != self._admin_url or self._admin_client is None:
            self.close()
            self._admin_client, self._admin_url = RouterAdmin(url, self._token()), url
        return self._admin_client

    def close(self) -> None:
        """Close the admin connection (the runtime keeps running)."""
        if self._admin_client is not None:
            self._admin_client.close()
        self._admin_client = self._admin_url = None

    # -- runtime -----------------------------------------------------------------------------------

    def ensure_runtime(self, config: RuntimeConfig) -> RuntimeState:
        """Start Prometheus, restart a router that is down or configured otherwise; describe the result."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._token()
        write_private(self.run_dir / RUNTIME_FILE, config.model_dump_json(indent=2))
        router = self._router_config()
        try:
            start_prometheus(self.run_dir, self._scrape_targets(router), timeout=60.0)
        except PrometheusError as exc:
            raise TargetError(str(exc)) from None
        if router is not None:
            wanted = router.model_copy(
                update={
                    "model_name": config.model_name,
                    "feature_names": config.feature_names,
                    "shadow_fraction": config.shadow_fraction,
                    "decision_threshold": config.decision_threshold,
                }
            )
            if wanted != router or self._router_url() is None:
                self._restart_router(wanted)
        return self.status()

    def status(self) -> RuntimeState:
        """Every process of the runtime and its liveness; anything not running is a listed problem."""
        config = self.config()
        processes: dict[str, ProcessInfo] = {}
        problems: list[str] = []
        for state_path in sorted(self.run_dir.glob(f"*/{supervisor.STATE_FILE}")):
            info = _process_info(state_path)
            if info.state == "stopped" and info.name not in _RUNTIME_PROCESSES:
                continue  # a removed version
            processes[info.name] = info
        processes.setdefault(PROMETHEUS, ProcessInfo(name=PROMETHEUS, state="absent"))
        if self._router_config() is not None:
            processes.setdefault(ROUTER, ProcessInfo(name=ROUTER, state="absent"))
        for info in processes.values():
            expected_down = info.name == TRAFFIC or (info.name == ROUTER and self._router_config() is None)
            if info.state != "running" and not (expected_down and info.state in ("stopped", "absent")):
                problems.append(f"{info.name} is {info.state}" + (f" (log: {info.log_path})" if info.log_path else ""))
        prometheus = supervisor.running_handle(PROMETHEUS, self.run_dir)
        return RuntimeState(
            target=self.kind,
            location=str(self.run_dir),
            config=config,
            router_url=self._router_url(),
            telemetry_url=f"http://127.0.0.1:{prometheus.ports['http']}" if prometheus else None,
            processes=processes,
            healthy=not problems,
            problems=problems,
        )

    def destroy(self) -> None:
        """Stop traffic, router, model servers and Prometheus; keep the inference log and pairs."""
        self.close()
        for name in (TRAFFIC, ROUTER):
            if self._state_path(name).exists():
                supervisor.stop(self._state_path(name))
        for state_path in self.run_dir.glob(f"*/{supervisor.STATE_FILE}"):
            supervisor.stop(state_path)
        for path in (self._router_config_path(), self.run_dir / RUNTIME_FILE, self.run_dir / TOKEN_FILE):
            path.unlink(missing_ok=True)

    def _scrape_targets(self, router: RouterConfig | None) -> list[ScrapeTarget]:
        return [] if router is None else [ScrapeTarget(job=SCRAPE_JOB, address=f"127.0.0.1:{router.port}")]

    def _start_router(self, router: RouterConfig) -> None:
        """Start the router (on its previous port when that is free) and point Prometheus at it."""
        if supervisor.port_in_use(router.port):
            router = router.model_copy(update={"port": supervisor.free_port()})
        try:
            start_router(router, self.run_dir, name=ROUTER, timeout=60.0)
            start_prometheus(self.run_dir, self._scrape_targets(router), timeout=60.0)
        except (RuntimeError, TimeoutError) as exc:
            raise TargetError(f"the router did not start: {exc}") from None
        traffic = supervisor.running_handle(TRAFFIC, self.run_dir)
        if traffic is not None:  # follow the router if it moved to another port
            self.start_traffic(traffic.meta["rps"], Path(traffic.meta["rows"]))

    def _restart_router(self, router: RouterConfig) -> None:
        if self._state_path(ROUTER).exists():
            supervisor.stop(self._state_path(ROUTER))
        self._start_router(router)

    def _persist_routes(
        self, admin: RouterAdmin, *, unsplit: bool = False, live: tuple[dict[str, int], str] | None = None
    ) -> Routes:
        """Write the live upstreams and split into router.json (what a crash-restart reads); return the split.

        ``unsplit``: write all traffic on the incumbent instead (the live split is leased, see set_routes).
        ``live``: the split as the router just answered it (saves asking again).
        """
        router = self._router_config()
        assert router is not None, "persisting routes of a router that was never configured"
        upstreams = [UpstreamSpec.model_validate(u) for u in admin.upstreams().values()]
        weights, incumbent = live or admin.split()
        kept = {incumbent: 100} if unsplit else weights
        updated = router.model_copy(update={"upstreams": upstreams, "weights": kept, "incumbent": incumbent})
        if updated != router:  # a step renewing its lease every second changes nothing here
            write_private(self._router_config_path(), updated.model_dump_json(indent=2))
        return Routes(weights=weights, primary=incumbent)

    # -- versions ----------------------------------------------------------------------------------

    def _server_name(self, version: str) -> str:
        return f"{self.config().model_name}-{version}"

    def deploy(
        self, version: str, model_dir: Path, sha256: str, output: OutputSpec = DEFAULT_OUTPUT
    ) -> DeploymentState:
        """Start (or find) the version's MLServer, then register it with the router at weight 0.

        The first version deployed starts the router, with all traffic on it as the primary.
        """
        config = self.config()
        try:
            settings = read_settings(Path(model_dir))
        except ModelDirError as exc:
            raise TargetError(str(exc)) from None
        if settings.name != config.model_name or (settings.parameters.version or "") != version:
            raise TargetError(
                f"{model_dir} serves {settings.name!r} version {settings.parameters.version!r}, expected "
                f"{config.model_name!r} version {version!r}: fix model-settings.json or the stack config"
            )
        name = self._server_name(version)
        previous_port = None
        if self._state_path(name).exists():
            previous_port = supervisor.read_state(self._state_path(name)).spec.ports.get("http")
        running = supervisor.running_handle(name, self.run_dir)
        if running is not None and running.meta.get("sha256") != sha256.lower():
            raise TargetError(
                f"version {version} already serves another artifact (sha256 {running.meta.get('sha256')}); "
                "a version label names one artifact: release it under a new version"
            )
        port = (
            previous_port if running is None and previous_port and not supervisor.port_in_use(previous_port) else None
        )
        try:
            handle = start_model_server(Path(model_dir), sha256, self.run_dir, name=name, http_port=port, timeout=120.0)
        except (ArtifactDigestError, ModelDirError, ModelServerError) as exc:
            raise TargetError(str(exc)) from None
        upstream = UpstreamSpec(
            version=version, url=handle.url, model_name=handle.model_name, pid_file=handle.pid_path, output=output
        )
        self._register(upstream, config)
        return self._deployment_state(handle.state_path)

    def _register(self, upstream: UpstreamSpec, config: RuntimeConfig) -> None:
        router = self._router_config()
        if router is None:
            self._start_router(
                RouterConfig(
                    port=supervisor.free_port(),
                    admin_token=self._token(),
                    model_name=config.model_name,
                    upstreams=[upstream],
                    weights={upstream.version: 100},
                    incumbent=upstream.version,
                    feature_names=config.feature_names,
                    shadow_fraction=config.shadow_fraction,
                    decision_threshold=config.decision_threshold,
                    log_dir=self.run_dir / "log",
                    pairs_dir=self.run_dir / "pairs",
                )
            )
            return
        if self._router_url() is None:
            self._restart_router(router)
        admin = self._admin()
        known = admin.upstreams().get(upstream.version)
        if known is not None and UpstreamSpec.model_validate(known) == upstream:
            return
        if known is not None:
            # The server came back on another port. Re-register; a version with traffic cannot be
            # removed live, so the router restarts from its config with the new address.
            weights, incumbent = admin.split()
            live = Routes(weights=weights, primary=incumbent)
            if live.weights.get(upstream.version) or live.primary == upstream.version:
                self._persist_routes(admin)
                router = self._router_config()
                assert router is not None
                upstreams = [upstream if u.version == upstream.version else u for u in router.upstreams]
                self._restart_router(router.model_copy(update={"upstreams": upstreams}))
                return
            admin.remove_upstream(upstream.version)
        admin.add_upstream(
            upstream.version, upstream.url, upstream.model_name, pid_file=str(upstream.pid_file), output=upstream.output
        )
        self._persist_routes(admin)

    def _deployment_state(self, state_path: Path) -> DeploymentState:
        handle = model_server_handle(state_path)
        return DeploymentState(
            version=handle.version,
            model_name=handle.model_name,
            sha256=handle.sha256,
            model_dir=str(handle.model_dir),
            url=handle.url,
            ready=is_ready(handle.url, handle.model_name),
            process=_process_info(state_path),
        )

    def deployment(self, version: str) -> DeploymentState | None:
        """The version's state; None if it was never deployed or was removed. A dead server is reported."""
        state_path = self._state_path(self._server_name(version))
        if not state_path.exists():
            return None
        state = supervisor.read_state(state_path)
        info = _process_info(state_path)
        if info.state == "stopped":
            return None
        if state.pid is None:
            meta = state.spec.meta
            return DeploymentState(
                version=version,
                model_name=meta["model_name"],
                sha256=meta["sha256"],
                model_dir=meta["model_dir"],
                url=f"http://127.0.0.1:{state.spec.ports['http']}",
                ready=False,
                process=info,
            )
        return self._deployment_state(state_path)

    def remove(self, version: str) -> None:
        """Unregister the version from the router and stop its server; the last version stops the router."""
        router = self._router_config()
        if router is not None and self._router_url() is not None:
            admin = self._admin()
            upstreams = admin.upstreams()
            if version in upstreams and len(upstreams) == 1:
                self.close()
                supervisor.stop(self._state_path(ROUTER))
                self._router_config_path().unlink()
                start_prometheus(self.run_dir, [], timeout=60.0)
            elif version in upstreams:
                try:
                    admin.remove_upstream(version)
                except RouterError as exc:
                    raise TargetError(f"cannot remove {version}: {exc.message}") from None
                self._persist_routes(admin)
        elif router is not None and any(u.version == version for u in router.upstreams):
            raise TargetError(f"cannot remove {version}: the router is down; ensure_runtime restarts it")
        state_path = self._state_path(self._server_name(version))
        if state_path.exists():
            supervisor.stop(state_path)

    # -- traffic -----------------------------------------------------------------------------------

    def routes(self) -> Routes:
        weights, incumbent = self._admin().split()
        return Routes(weights=weights, primary=incumbent)

    def set_routes(self, routes: Routes, lease_s: float | None = None) -> Routes:
        """Apply the split and the primary in one atomic router call; the router splits in whole percent.

        A leased split is the router's to revert (its own timer); router.json then keeps all traffic on the
        primary, so a router that restarts while no step renews the lease comes up unsplit too.
        """
        weights: dict[str, int] = {}
        for version, weight in routes.weights.items():
            if abs(weight - round(weight)) > 1e-9:
                raise TargetError(f"the local router splits traffic in whole percent; {version} has {weight}")
            weights[version] = round(weight)
        admin = self._admin()
        try:  # split and primary in one atomic change
            live = admin.set_split(weights, incumbent=routes.primary, lease_s=lease_s)
        except RouterError as exc:
            raise TargetError(f"the router refused {routes.model_dump()}: {exc.message}") from None
        return self._persist_routes(admin, unsplit=lease_s is not None, live=live)

    def pairs(self, since: PairCursor | None = None, *, since_ts: float | None = None, limit: int = 1000) -> PairPage:
        """Pairs from the router's in-memory ring after ``since``; a router restart resets the cursor."""
        admin = self._admin()
        page = admin.pairs(since.seq if since else None, limit, since_ts)
        restarted = since is not None and page.epoch != since.epoch
        if restarted:
            page = admin.pairs(None, limit, since_ts)
        return PairPage(
            cursor=PairCursor(epoch=page.epoch, seq=page.next),
            pairs=[ShadowPair.model_validate({k: p[k] for k in ShadowPair.model_fields}) for p in page.pairs],
            pending=page.pending,
            restarted=restarted,
            truncated=page.truncated,
        )

    def set_fault(self, version: str, fault: Fault | None) -> None:
        admin = self._admin()
        try:
            if fault is None:
                admin.clear_fault(version)
            else:
                admin.set_fault(version, **fault.model_dump())
        except RouterError as exc:
            raise TargetError(f"fault on {version}: {exc.message}") from None

    # -- lock ---------------------------------------------------------------------------------------

    def release_lock(self, stack: str, operation: str) -> None:
        """None: only this machine reaches these processes, so the backend's lock is enough."""
        return None

    def lock_holder(self, stack: str) -> None:
        return None

    # -- telemetry ---------------------------------------------------------------------------------

    def telemetry(self, version: str, start: float, end: float | None = None) -> VersionStats:
        """Counts and latency quantiles of ``version`` from this runtime's Prometheus over ``[start, end]``."""
        prometheus = supervisor.running_handle(PROMETHEUS, self.run_dir)
        if prometheus is None:
            raise TargetError(f"prometheus in {self.run_dir} is not running: no telemetry")
        return version_stats(f"http://127.0.0.1:{prometheus.ports['http']}", SCRAPE_JOB, version, start, end)

    # -- synthetic traffic -------------------------------------------------------------------------

    def start_traffic(self, rps: float, rows: Path) -> ProcessInfo:
        """Replay the feature columns of ``rows`` (parquet) through the router at ``rps`` (0 stops it).

        Runs supervised, outliving the caller, so a local ``pulumi up`` has traffic to bake on.
        """
        if rps <= 0:
            return self.stop_traffic()
        config = self.config()
        url = self._router_url()
        if url is None:
            raise TargetError("synthetic traffic needs a running router: deploy a version first")
        argv = [
            sys.executable,
            "-m",
            "serving.traffic",
            "--url",
            url,
            "--model",
            config.model_name,
            "--rows",
            str(Path(rows).resolve()),
            "--rps",
            f"{rps:g}",
        ]
        if config.feature_names:
            argv += ["--features", ",".join(config.feature_names)]
        running = supervisor.running_handle(TRAFFIC, self.run_dir)
        if running is not None and supervisor.read_state(self._state_path(TRAFFIC)).spec.argv != argv:
            supervisor.stop(self._state_path(TRAFFIC))
        supervisor.start_process(
            TRAFFIC, argv, self.run_dir, meta={"rps": rps, "rows": str(Path(rows).resolve())}, stop_grace_s=5.0
        )
        return _process_info(self._state_path(TRAFFIC))

    def stop_traffic(self) -> ProcessInfo:
        if self._state_path(TRAFFIC).exists():
            supervisor.stop(self._state_path(TRAFFIC))
        return _process_info(self._state_path(TRAFFIC))
