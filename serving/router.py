"""The traffic router: one V2 endpoint for clients in front of one MLServer per model version.

Run as `python -m serving.router --config FILE` (FILE: JSON for `serving.routing.RouterConfig`); it
listens on 127.0.0.1:<port> unless the config names another host (a pod's router listens on its pod IP; on
Kubernetes `serving.split_follower` runs it and applies the split object the replicas watch).
The client's body bytes are forwarded untouched over one pooled aiohttp session; the router parses the request
only to validate it, find the entity key and log the features, and the response only to read the scores.
Everything else (shadow copies, Parquet writes, health checks) happens off the response path. Prometheus
exposition at /metrics; serving/METRICS.md has the metric names and the inference-log and pair file layouts.

Client endpoints (V2): `POST /v2/models/{name}/infer` (entity key for sticky routing: header
`x-entity-key` or `parameters.entity_key`; response headers `x-model-version`, `x-request-id`),
`GET /v2/models/{name}` (the incumbent's metadata), `GET /v2/models/{name}/ready`, `GET /v2/health/live`,
`GET /v2/health/ready`. Errors are `{"error": "..."}`.

Admin endpoints (`Authorization: Bearer <admin_token>`, or `X-Mlrelease-Token: <admin_token>` where a proxy
such as the Kubernetes API server's consumes `Authorization`; else 401; bodies JSON; bad input 400):
    GET    /admin/weights             {"weights": {version: percent}, "incumbent": version, "split_version": rv,
                                      "lease_remaining_s": seconds or null}
    PUT    /admin/weights             {"weights": {...}, "incumbent"?: v, "lease_s"?: s}: sum 100, known versions,
                                      atomic; with lease_s all traffic goes back to the incumbent unless the
                                      weights are set again within s seconds (a canary step's dead man's switch)
    PUT    /admin/incumbent           {"version": v}
    GET    /admin/upstreams           {version: {version, url, model_name, pid, pid_file}}
    POST   /admin/upstreams           {version, url, model_name, pid?, pid_file?, output?}: added at weight 0 (409 dup)
    DELETE /admin/upstreams/{v}       409 while it is the incumbent or has weight
    GET    /admin/faults              {version: {error_rate, latency_ms, perturbation}}
    PUT    /admin/faults/{v}          {error_rate 0..1, latency_ms, perturbation -1..1}; DELETE clears
    GET    /admin/health              {version: {ready, url, model_name, detail, checked_at}}
    GET    /admin/pairs?since=&limit= shadow pairs after cursor `since` (also since_ts=unix seconds)
    POST   /admin/flush               write buffered inference-log rows and pairs now: {"files": [...]}

A non-incumbent upstream that fails at connection level (refused, reset, dropped) is counted as its
`connection` error and the request is retried once on the incumbent (an incumbent connection failure is
retried once too, and counted if the retry fails); a candidate whose last health check
failed gets no traffic (counted as `unready`) until it passes again. Timeouts and 4xx/5xx answers are
passed to the client and counted, never retried.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import logging
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop
from aiohttp import web
from prometheus_client import disable_created_metrics
from pydantic import ValidationError

from serving import metrics as m
from serving import v2
from serving.inference_log import InferenceLogWriter
from serving.metrics import RouterMetrics, UpstreamProcess
from serving.pairs import PairStore
from serving.routing import Fault, RouterConfig, RoutingTable, Split, UpstreamSpec

JSON = "application/json"
NO_FAULT = Fault()
LOST_SAY_EVERY_S = 10.0
LEASE_CHECK_S = 0.1
DNS_TTL_S = 5
log = logging.getLogger("mlrelease.router")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call to one upstream: what the client (or the pair) gets, and how it went."""

    version: str
    status: int
    body: bytes
    latency_s: float
    error_kind: str | None
    scores: list[float] | None


@dataclass(frozen=True, slots=True)
class ShadowJob:
    request_id: str
    ts: float
    parsed: v2.ParsedRequest
    body: bytes
    primary: Outcome
    peer: str


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=JSON)


def _error(message: str, status: int) -> web.Response:
    return web.Response(body=v2.error_body(message), status=status, content_type=JSON)


class Router:
    """Routing state, the upstream session and the request handlers of one router process."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.table = RoutingTable({u.version: u for u in config.upstreams}, config.weights, config.incumbent)
        self.faults: dict[str, Fault] = {}
        self.ready: dict[str, bool] = {}
        self.health: dict[str, dict[str, Any]] = {}
        self.metrics = RouterMetrics(lambda: self.table.weights, self._processes)
        self.log = InferenceLogWriter(config.log_dir, config.log_flush_rows)
        self.pairs = PairStore(config.pairs_dir, config.pairs_in_memory, on_lost=self._pairs_lost)
        self.shadow_queue: asyncio.Queue[ShadowJob] = asyncio.Queue(config.shadow_queue_size)
        self._token = f"Bearer {config.admin_token}".encode()
        self._bare_token = config.admin_token.encode()
        self.split_version: str | None = None  # resourceVersion of the split object last applied, if any
        self._flush_lock = asyncio.Lock()
        self._loops: list[asyncio.Task[None]] = []
        self._flushes: set[asyncio.Task[list[Path]]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._connector: aiohttp.TCPConnector | None = None
        self._shadows_in_flight = 0
        self._lost_said = -LOST_SAY_EVERY_S
        self.lease_until: float | None = None  # monotonic deadline of a leased split

    # -- lifecycle ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._admin_auth])
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        app.router.add_get("/v2/models/{name}", self.model_metadata)
        app.router.add_get("/v2/models/{name}/ready", self.model_ready)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.server_ready)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/admin/weights", self.get_weights)
        app.router.add_put("/admin/weights", self.put_weights)
        app.router.add_get("/admin/upstreams", self.get_upstreams)
        app.router.add_post("/admin/upstreams", self.add_upstream)
        app.router.add_delete("/admin/upstreams/{version}", self.remove_upstream)
        app.router.add_put("/admin/incumbent", self.put_incumbent)
        app.router.add_get("/admin/faults", self.get_faults)
        app.router.add_put("/admin/faults/{version}", self.put_fault)
        app.router.add_delete("/admin/faults/{version}", self.delete_fault)
        app.router.add_get("/admin/health", self.get_health)
        app.router.add_get("/admin/pairs", self.get_pairs)
        app.router.add_post("/admin/flush", self.post_flush)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        # Idle upstream connections are dropped before MLServer's (uvicorn's) 5 s keep-alive closes them,
        # so a request is rarely sent on a connection the server is closing at that moment.
        # Upstream names are cached only briefly: a cluster Service re-created under the same name (a version
        # released again after a rollback removed it) gets a new ClusterIP, and apply_split drops the name.
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=3.0, ttl_dns_cache=DNS_TTL_S)
        self._connector = connector
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s),
            skip_auto_headers=("User-Agent",),
        )
        await self._check_health()
        self._loops.append(asyncio.create_task(self._health_loop()))
        self._loops.append(asyncio.create_task(self._flush_loop()))
        self._loops.append(asyncio.create_task(self._lease_loop()))
        self._loops += [asyncio.create_task(self._shadow_worker()) for _ in range(self.config.shadow_workers)]

    async def _stop(self, _app: web.Application) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, *self._flushes, return_exceptions=True)
        await self.flush()
        self.pairs.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "router not started"
        return self._session

    def _processes(self) -> dict[str, UpstreamProcess]:
        return {v: UpstreamProcess(u.pid, u.pid_file) for v, u in self.table.upstreams.items()}

    # -- upstream calls ----------------------------------------------------------------------------

    async def call(self, table: RoutingTable, version: str, parsed: v2.ParsedRequest, body: bytes) -> Outcome:
        """POST the request to one version, applying that version's injected fault.

        A request that names no outputs asks each version for the output its scores are read from (what the
        gates judged), so the client, the pairs and the watcher all see the same number.
        """
        spec = table.upstreams[version]
        if parsed.payload is not None:
            body = orjson.dumps({**parsed.payload, "outputs": [{"name": spec.output.tensor}]})
        fault = self.faults.get(version, NO_FAULT)
        start = time.perf_counter()
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.error_rate and random.random() < fault.error_rate:
            return Outcome(
                version,
                500,
                v2.error_body(f"injected fault on version {version!r}"),
                time.perf_counter() - start,
                m.INJECTED,
                None,
            )
        url = f"{spec.url}/v2/models/{spec.model_name}/infer"
        try:
            async with self.session.post(url, data=body, headers={"Content-Type": JSON}) as resp:
                payload = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectionError as exc:
            return Outcome(
                version,
                502,
                v2.error_body(f"upstream {version!r} unreachable: {exc}"),
                time.perf_counter() - start,
                m.CONNECTION,
                None,
            )
        except TimeoutError:
            return Outcome(
                version,
                504,
                v2.error_body(f"upstream {version!r} timed out"),
                time.perf_counter() - start,
                m.TIMEOUT,
                None,
            )
        latency = time.perf_counter() - start
        if status >= 500:
            return Outcome(version, status, payload, latency, m.UPSTREAM_5XX, None)
        if status >= 400:
            return Outcome(version, status, payload, latency, m.UPSTREAM_4XX, None)
        if fault.perturbation:
            payload, scores = v2.perturb(payload, fault.perturbation, spec.output)
        else:
            scores = v2.scores(payload, spec.output)
        return Outcome(version, status, payload, latency, None, scores)

    # -- client endpoint ---------------------------------------------------------------------------

    async def infer(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        received = datetime.now(UTC)
        request_id = request.headers.get("x-request-id")
        name = request.match_info["name"]
        if name != self.config.model_name:
            return self._rejected(
                f"model {name!r} not found (this router serves {self.config.model_name!r})", 404, start, request_id
            )
        body = await request.read()
        try:
            parsed = v2.parse_request(body, self.config.feature_names)
        except v2.BadRequest as exc:
            return self._rejected(str(exc), 400, start, request_id)
        request_id = request_id or parsed.request_id or uuid.uuid4().hex
        entity_key = request.headers.get("x-entity-key") or parsed.entity_key

        table = self.table
        if not table.upstreams:
            return self._rejected("no model version is routed yet: release one first", 503, start, request_id)
        version = table.choose(entity_key)
        if version != table.incumbent and not self.ready.get(version, False):
            self.metrics.error(version, m.UNREADY)
            version = table.incumbent
        outcome = await self.call(table, version, parsed, body)
        if outcome.error_kind == m.CONNECTION:
            if version != table.incumbent:
                # The candidate's failure is counted against it; the client is answered by the incumbent.
                self.metrics.error(version, m.CONNECTION)
            # For the incumbent itself this is one retry on a fresh connection: a pooled keep-alive
            # connection can be closed by the server just as it is reused. Counted only if it fails again.
            outcome = await self.call(table, table.incumbent, parsed, body)
        if outcome.error_kind is not None:
            self.metrics.error(outcome.version, outcome.error_kind)

        elapsed = time.perf_counter() - start
        self.metrics.request(outcome.version, outcome.status, elapsed)
        full = self.log.append(
            ts=received,
            request_id=request_id,
            version=outcome.version,
            status=outcome.status,
            latency_ms=elapsed * 1000,
            entity_key=entity_key,
            columns=parsed.columns,
            rows=parsed.rows,
            outputs=outcome.scores,
        )
        if full and not self._flushes:  # one flush at a time takes the whole buffer
            task = asyncio.create_task(self.flush_log())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        if outcome.status == 200 and self.config.shadow_fraction and (random.random() < self.config.shadow_fraction):
            self._enqueue_shadow(table, request_id, received, parsed, body, outcome)
        return web.Response(
            body=outcome.body,
            status=outcome.status,
            content_type=JSON,
            headers={"x-model-version": outcome.version, "x-request-id": request_id},
        )

    def _rejected(self, message: str, status: int, start: float, request_id: str | None) -> web.Response:
        self.metrics.error(m.NO_VERSION, m.BAD_REQUEST)
        self.metrics.request(m.NO_VERSION, status, time.perf_counter() - start)
        response = _error(message, status)
        response.headers["x-request-id"] = request_id or uuid.uuid4().hex
        return response

    # -- shadow pairs ------------------------------------------------------------------------------

    def _enqueue_shadow(
        self,
        table: RoutingTable,
        request_id: str,
        received: datetime,
        parsed: v2.ParsedRequest,
        body: bytes,
        primary: Outcome,
    ) -> None:
        peer = table.shadow_peer(primary.version, self.ready)
        if peer is None:
            if len(table.upstreams) > 1:
                self.metrics.shadow_skipped("peer_unready")
            return
        try:
            job = ShadowJob(request_id, received.timestamp(), parsed, body, primary, peer)
            self.shadow_queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.dropped()

    async def _shadow_worker(self) -> None:
        while True:
            job = await self.shadow_queue.get()
            self._shadows_in_flight += 1
            try:
                await self._shadow(job)
            except Exception:  # a bad pair must not stop shadowing for the rest of the router's life
                log.exception("shadow copy of request %s to %s failed", job.request_id, job.peer)
                self.metrics.error(job.peer, m.SHADOW)
            finally:
                self._shadows_in_flight -= 1

    async def _shadow(self, job: ShadowJob) -> None:
        table = self.table
        if job.peer not in table.upstreams:
            self.metrics.shadow_skipped("split_changed")
            return
        other = await self.call(table, job.peer, job.parsed, job.body)
        if other.error_kind is not None:
            self.metrics.error(other.version, m.SHADOW)
        inc, cand = (job.primary, other) if job.primary.version == table.incumbent else (other, job.primary)
        if inc.version == cand.version:  # the incumbent changed while the copy was queued
            self.metrics.shadow_skipped("split_changed")
            return
        disagreeing = None
        if inc.scores is not None and cand.scores is not None and len(inc.scores) == len(cand.scores):
            t = self.config.decision_threshold
            disagreeing = sum((a >= t) != (b >= t) for a, b in zip(inc.scores, cand.scores, strict=True))
        self.pairs.add(
            {
                "request_id": job.request_id,
                "ts": job.ts,
                "inputs_digest": job.parsed.digest,
                "inputs": job.parsed.columns,
                "primary": "incumbent" if job.primary is inc else "candidate",
                "incumbent": inc.version,
                "candidate": cand.version,
                "incumbent_output": inc.scores,
                "candidate_output": cand.scores,
                "incumbent_latency_ms": inc.latency_s * 1000,
                "candidate_latency_ms": cand.latency_s * 1000,
                "incumbent_status": inc.status,
                "candidate_status": cand.status,
                "disagreeing_rows": disagreeing,
            }
        )
        self.metrics.pair(inc.version, cand.version, bool(disagreeing))

    # -- background --------------------------------------------------------------------------------

    async def _check_one(self, spec: UpstreamSpec) -> None:
        url = f"{spec.url}/v2/models/{spec.model_name}/ready"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                ok, detail = resp.status == 200, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.ready[spec.version] = ok
        self.health[spec.version] = {
            "ready": ok,
            "url": spec.url,
            "model_name": spec.model_name,
            "detail": detail,
            "checked_at": time.time(),
        }

    async def _check_health(self) -> None:
        await asyncio.gather(*(self._check_one(s) for s in self.table.upstreams.values()))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self._check_health()

    async def _lease_loop(self) -> None:
        """Revert a leased split nobody renews: its writer (a canary step) is gone."""
        while True:
            await asyncio.sleep(LEASE_CHECK_S)
            if self.lease_until is not None and time.monotonic() >= self.lease_until:
                self.lease_until = None
                incumbent = self.table.incumbent
                self.table = self.table.with_weights({incumbent: 100})
                self.metrics.lease_expired()
                log.warning("the split's lease expired (its canary step stopped renewing it): 100%% on %s", incumbent)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_seconds)
            await self.flush()  # a failed write is counted inside and never stops the loop

    async def flush_log(self) -> list[Path]:
        """Write the buffered rows; rows that cannot be written (disk full) are counted, and serving goes on."""
        async with self._flush_lock:
            taken = self.log.take()
            try:
                return await asyncio.to_thread(self.log.write, taken)
            except OSError as exc:
                rows = len(taken["_ts"])
                self.metrics.log_dropped("inference", rows)
                log.error("inference log: %d rows dropped, the write failed: %s", rows, exc)
                return []

    def _pairs_lost(self, lines: int) -> None:
        self.metrics.log_dropped("pairs", lines)
        now = time.monotonic()
        if now - self._lost_said >= LOST_SAY_EVERY_S:  # a full disk fails every write: say so now and then
            self._lost_said = now
            log.error("pair log: pairs not written to %s (disk full?); counted, kept in memory", self.pairs.pairs_dir)

    async def flush(self) -> list[Path]:
        files = await self.flush_log()
        self.pairs.flush()
        return files

    # -- V2 health and metadata --------------------------------------------------------------------

    async def live(self, _request: web.Request) -> web.Response:
        return _json({"live": True})

    async def server_ready(self, _request: web.Request) -> web.Response:
        ok = bool(self.table.upstreams) and self.ready.get(self.table.incumbent, False)
        return _json({"ready": ok}, 200 if ok else 503)

    async def model_ready(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != self.config.model_name:
            return _error(f"model {request.match_info['name']!r} not found", 404)
        return await self.server_ready(request)

    async def model_metadata(self, request: web.Request) -> web.Response:
        """The incumbent's V2 model metadata, under the router's model name."""
        if request.match_info["name"] != self.config.model_name:
            return _error(f"model {request.match_info['name']!r} not found", 404)
        if not self.table.upstreams:
            return _error("no model version is routed yet", 503)
        spec = self.table.upstreams[self.table.incumbent]
        try:
            async with self.session.get(f"{spec.url}/v2/models/{spec.model_name}") as resp:
                payload, status = await resp.read(), resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _error(f"incumbent unreachable: {exc}", 502)
        if status != 200:
            return web.Response(body=payload, status=status, content_type=JSON)
        meta = orjson.loads(payload)
        meta["name"] = self.config.model_name
        return _json(meta)

    async def prometheus(self, _request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.metrics.render)
        return web.Response(body=body, headers={"Content-Type": m.CONTENT_TYPE})

    # -- admin -------------------------------------------------------------------------------------

    @web.middleware
    async def _admin_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/admin"):
            given = request.headers.get("Authorization", "").encode()
            bare = request.headers.get("X-Mlrelease-Token", "").encode()
            if not (hmac.compare_digest(given, self._token) | hmac.compare_digest(bare, self._bare_token)):
                response = _error("missing or wrong admin token (expected 'Authorization: Bearer <token>')", 401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="mlrelease-router"'
                return response
        return await handler(request)

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            message = v2.error_body(f"malformed JSON: {exc}")
            raise web.HTTPBadRequest(body=message, content_type=JSON) from None

    def _weights_view(self) -> dict[str, Any]:
        left = None if self.lease_until is None else max(0.0, self.lease_until - time.monotonic())
        return {
            "weights": self.table.weights,
            "incumbent": self.table.incumbent,
            "split_version": self.split_version,
            "lease_remaining_s": left,
        }

    async def apply_split(self, split: Split, version: str) -> None:
        """Make ``split`` the live table and faults in one swap, its new upstreams health-checked first.

        Checking before the swap means a candidate added at weight 0 is known ready (or not) the moment it
        is routable, and ``split_version`` reported back confirms a split whose upstreams were checked.
        A leased split is held until its ``lease_until`` (the lease loop reverts it then); one already past it,
        as a replica that starts or re-reads after its writer died finds it, is applied unsplit.
        """
        table = split.table()
        lease_until = None
        if split.lease_until is not None:
            left = split.lease_until - time.time()
            if left > 0:
                lease_until = time.monotonic() + left
            else:
                table = table.with_weights({table.incumbent: 100})
        for name, spec in table.upstreams.items():
            if name not in self.table.upstreams and self._connector is not None:
                url = urlsplit(spec.url)
                self._connector.clear_dns_cache(url.hostname, url.port)
        await asyncio.gather(*(self._check_one(s) for v, s in table.upstreams.items() if v not in self.table.upstreams))
        for gone in set(self.ready) - set(table.upstreams):
            self.ready.pop(gone, None)
            self.health.pop(gone, None)
        self.table, self.faults, self.split_version = table, dict(split.faults), version
        self.lease_until = lease_until

    async def get_weights(self, _request: web.Request) -> web.Response:
        return _json(self._weights_view())

    async def put_weights(self, request: web.Request) -> web.Response:
        payload = await self._body(request)
        weights = payload.get("weights") if isinstance(payload, dict) else None
        if not isinstance(weights, dict):
            return _error('body must be {"weights": {version: percent, ...}, "incumbent"?: version}', 400)
        try:
            table = self.table.with_weights(weights)
            if payload.get("incumbent") is not None:
                table = table.with_incumbent(str(payload["incumbent"]))
        except ValueError as exc:
            return _error(str(exc), 400)
        lease = payload.get("lease_s")
        valid = isinstance(lease, int | float) and not isinstance(lease, bool) and 0 < lease <= 3600
        if lease is not None and not valid:
            return _error("lease_s must be a number of seconds in (0, 3600]", 400)
        self.table = table  # weights and incumbent change in one assignment
        self.lease_until = None if lease is None else time.monotonic() + float(lease)
        return _json(self._weights_view())

    async def put_incumbent(self, request: web.Request) -> web.Response:
        payload = await self._body(request)
        version = payload.get("version") if isinstance(payload, dict) else None
        try:
            self.table = self.table.with_incumbent(str(version))
        except ValueError as exc:
            return _error(str(exc), 400)
        return _json(self._weights_view())

    async def get_upstreams(self, _request: web.Request) -> web.Response:
        return _json({v: s.model_dump(mode="json") for v, s in self.table.upstreams.items()})

    async def add_upstream(self, request: web.Request) -> web.Response:
        try:
            spec = UpstreamSpec.model_validate(await self._body(request))
        except ValidationError as exc:
            return _error(f"invalid upstream: {exc}", 400)
        try:
            self.table = self.table.with_upstream(spec)
        except ValueError as exc:
            return _error(str(exc), 409)
        await self._check_one(spec)
        return _json({**self._weights_view(), "health": self.health[spec.version]}, 201)

    async def remove_upstream(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        try:
            self.table = self.table.without_upstream(version)
        except KeyError:
            return _error(f"unknown version {version!r}", 404)
        except ValueError as exc:
            return _error(str(exc), 409)
        self.faults.pop(version, None)
        self.ready.pop(version, None)
        self.health.pop(version, None)
        return _json(self._weights_view())

    async def get_faults(self, _request: web.Request) -> web.Response:
        return _json({v: f.model_dump() for v, f in self.faults.items()})

    async def put_fault(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        if version not in self.table.upstreams:
            return _error(f"unknown version {version!r}", 404)
        try:
            fault = Fault.model_validate(await self._body(request))
        except ValidationError as exc:
            return _error(f"invalid fault: {exc}", 400)
        self.faults = {**self.faults, version: fault}
        return _json({version: fault.model_dump()})

    async def delete_fault(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        self.faults = {v: f for v, f in self.faults.items() if v != version}
        return _json({"cleared": version})

    async def get_health(self, _request: web.Request) -> web.Response:
        return _json(
            {v: self.health.get(v, {"ready": False, "detail": "not checked yet"}) for v in self.table.upstreams}
        )

    async def get_pairs(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            since = int(query["since"]) if "since" in query else None
            since_ts = float(query["since_ts"]) if "since_ts" in query else None
            limit = min(int(query.get("limit", "1000")), 10_000)
        except ValueError:
            return _error("since and limit must be integers, since_ts a number", 400)
        # pending: shadow copies queued or in flight; 0 means every sampled request so far has its pair.
        pending = self.shadow_queue.qsize() + self._shadows_in_flight
        body = self.pairs.page(since, since_ts, max(limit, 1), pending=pending)
        return web.Response(body=body, content_type=JSON)

    async def post_flush(self, _request: web.Request) -> web.Response:
        files = await self.flush()
        return _json({"files": [str(f) for f in files]})


Hook = Callable[[Router], Awaitable[None]]


async def serve(config: RouterConfig, *, prepare: Hook | None = None, follow: Hook | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then flush the inference log and pairs and close cleanly.

    ``prepare`` runs before the port opens (a cluster replica applies the live split first, so it never
    answers with an empty table); ``follow`` runs beside the server for its whole life (the split watch).
    """
    router = Router(config)
    runner = web.AppRunner(router.app(), access_log=None, handle_signals=False)
    await runner.setup()
    if prepare is not None:
        await prepare(router)
    following = asyncio.create_task(follow(router)) if follow is not None else None
    site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
    await site.start()
    # Everything allocated so far (modules, config, app) lives as long as the process: keep it out of the
    # collector's generations so full collections, and the latency spikes they cause, stay short.
    gc.collect()
    gc.freeze()
    log.info("router on http://%s:%d: %s, incumbent %s", config.host, config.port, config.weights, config.incumbent)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        await runner.cleanup()
        log.info("router stopped; inference log and pairs flushed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.router", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="RouterConfig JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = RouterConfig.model_validate_json(args.config.read_bytes())
    disable_created_metrics()  # no *_created series: they double the exposition and nobody reads them
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))


if __name__ == "__main__":
    main()
