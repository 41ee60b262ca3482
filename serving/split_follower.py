"""A router replica on Kubernetes: serve, and apply the live split from the one object every replica watches.

Run in a pod as ``python -m serving.split_follower``. The split (upstreams, weights, incumbent, faults) lives
in ``data["split.json"]`` of one ConfigMap; this process reads it through the API server with the pod's
service-account token before its port opens (so a restarted or added replica never answers with another
split), then keeps a watch on it and applies every change in one table swap. The resourceVersion it applied
is reported by ``GET /admin/weights`` as ``split_version``, which is how the writer confirms that every
replica routes by the new split before a canary step starts baking.

A watch can end at any time (API server timeout, restart, ``410 Gone`` after compaction): the follower then
reads the object again and re-watches from its resourceVersion, so a change is never missed, only applied
late. An invalid split (it cannot be written by mlrelease, but a human can) is logged and not applied: the
replica keeps routing by the last valid one.

Environment: ``MLRELEASE_ROUTER_CONFIG`` (RouterConfig JSON without upstreams), ``MLRELEASE_ADMIN_TOKEN``,
``MLRELEASE_SPLIT`` (the ConfigMap's name), ``POD_NAMESPACE``; the API server from the variables every pod
gets (``KUBERNETES_SERVICE_HOST``/``_PORT``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from prometheus_client import disable_created_metrics
from pydantic import ValidationError

from serving.router import Router, serve
from serving.routing import SPLIT_KEY, RouterConfig, Split

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_TIMEOUT_S = 30  # short, so a silently broken watch is noticed soon
RETRY_S = 0.5
log = logging.getLogger("mlrelease.split_follower")


class SplitSource:
    """The split ConfigMap, read and watched through the API server as the pod's service account."""

    def __init__(self, namespace: str, name: str, api: str | None = None, account: Path = SERVICE_ACCOUNT) -> None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.api = api or f"https://{host}:{port}"
        self.namespace, self.name, self.account = namespace, name, account
        self.ssl = ssl.create_default_context(cafile=str(account / "ca.crt"))
        self.resource_version = ""

    def _headers(self) -> dict[str, str]:
        # Re-read on every call: a projected service-account token is rotated by the kubelet.
        return {"Authorization": f"Bearer {(self.account / 'token').read_text().strip()}"}

    @staticmethod
    def parse(configmap: dict[str, Any]) -> Split:
        return Split.model_validate_json((configmap.get("data") or {}).get(SPLIT_KEY) or "{}")

    async def read(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        url = f"{self.api}/api/v1/namespaces/{self.namespace}/configmaps/{self.name}"
        async with http.get(url, headers=self._headers(), ssl=self.ssl) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=await resp.text())
            return orjson.loads(await resp.read())

    async def watch(self, http: aiohttp.ClientSession) -> Any:
        """Yield the ConfigMap at each change after ``resource_version``; returns when the watch ends."""
        params = {
            "fieldSelector": f"metadata.name={self.name}",
            "watch": "1",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        url = f"{self.api}/api/v1/namespaces/{self.namespace}/configmaps"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_TIMEOUT_S + 10)
        async with http.get(url, params=params, headers=self._headers(), ssl=self.ssl, timeout=timeout) as resp:
            if resp.status != 200:  # e.g. 403: the watch is refused; say so and read again after a pause
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=await resp.text())
            async for line in resp.content:
                event = orjson.loads(line)
                if event.get("type") in ("ADDED", "MODIFIED"):
                    yield event["object"]
                elif event.get("type") == "ERROR":  # e.g. 410 Gone: the version was compacted; read again
                    return


async def _apply(router: Router, source: SplitSource, configmap: dict[str, Any]) -> None:
    version = configmap["metadata"]["resourceVersion"]
    source.resource_version = version
    try:
        split = source.parse(configmap)
    except ValidationError as exc:
        log.error("split %s/%s@%s is invalid, keeping the last one: %s", source.namespace, source.name, version, exc)
        return
    await router.apply_split(split, version)
    log.info("applied split @%s: %s, incumbent %s", version, split.weights, split.incumbent or "-")


def hooks(source: SplitSource) -> tuple[Any, Any]:
    """``prepare`` (apply the live split, retrying until the API answers) and ``follow`` (the watch loop)."""

    async def prepare(router: Router) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    await _apply(router, source, await source.read(http))
                    return
                except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                    log.warning("cannot read split %s/%s yet: %s", source.namespace, source.name, exc)
                    await asyncio.sleep(RETRY_S)

    async def follow(router: Router) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async for configmap in source.watch(http):
                        await _apply(router, source, configmap)
                    await _apply(router, source, await source.read(http))  # the watch ended: catch up
                except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
                    log.warning("split watch interrupted: %s; reading again", exc)
                    await asyncio.sleep(RETRY_S)

    return prepare, follow


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    base = orjson.loads(os.environ["MLRELEASE_ROUTER_CONFIG"])
    config = RouterConfig.model_validate(
        {**base, "admin_token": os.environ["MLRELEASE_ADMIN_TOKEN"], "upstreams": [], "weights": {}, "incumbent": ""}
    )
    source = SplitSource(os.environ["POD_NAMESPACE"], os.environ["MLRELEASE_SPLIT"])
    prepare, follow = hooks(source)
    disable_created_metrics()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, prepare=prepare, follow=follow))


if __name__ == "__main__":
    main()
