"""The Kubernetes API as mlrelease reaches it: one kubeconfig context, HTTPS to the API server, nothing else.

A firm's kubeconfig names the API server, its CA and a credential. The credentials read here are the ones
a CI runner holds without a helper program: a bearer token (inline or ``tokenFile``) or a client certificate
(inline ``-data`` or files). An ``exec`` or ``auth-provider`` credential is refused with a line saying what to
use instead. Every error names the kubeconfig and the fix; nothing is sent before the context validates.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from pathlib import Path
from typing import Any

import httpx
import yaml

from components.targets.base import TargetError
from serving.private_files import write_private

PROXY_TIMEOUT_S = 10.0


class KubeConfigError(TargetError):
    """The kubeconfig cannot be used: missing, malformed, unknown context, or a credential we cannot use."""


def _material(entry: dict[str, Any], key: str, base: Path, cache: Path) -> Path | None:
    """A file holding ``key`` of a kubeconfig entry: the ``key`` path itself, or ``key-data`` written once."""
    if entry.get(key):
        path = Path(entry[key])
        return path if path.is_absolute() else base / path
    data = entry.get(f"{key}-data")
    if not data:
        return None
    raw = base64.b64decode(data)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{key}-{hashlib.sha256(raw).hexdigest()[:16]}.pem"
    if not path.exists():
        write_private(path, raw)
    return path


class KubeAPI:
    """One context of a kubeconfig: an httpx client to its API server with its credential."""

    def __init__(self, kubeconfig: Path, context: str | None, cache: Path, timeout: float = PROXY_TIMEOUT_S) -> None:
        self.kubeconfig = Path(kubeconfig)
        where = f"kubeconfig {self.kubeconfig}"
        try:
            config = yaml.safe_load(self.kubeconfig.read_text())
        except FileNotFoundError:
            missing = f"{where} does not exist: set mlrelease:kubernetes.kubeconfig to a readable file"
            raise KubeConfigError(missing) from None
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"{where} cannot be read as YAML ({exc}): fix the file") from None
        if not isinstance(config, dict):
            raise KubeConfigError(f"{where} is not a kubeconfig (no mapping at the top): fix the file")
        name = context or config.get("current-context")
        contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or []}
        if name not in contexts:
            raise KubeConfigError(
                f"{where} has no context {name!r} (contexts: {', '.join(map(str, contexts)) or 'none'}):"
                " set mlrelease:kubernetes.context to one of them"
            )
        self.context = str(name)
        ctx = contexts[name]
        clusters = {c.get("name"): c.get("cluster") or {} for c in config.get("clusters") or []}
        users = {u.get("name"): u.get("user") or {} for u in config.get("users") or []}
        cluster, user = clusters.get(ctx.get("cluster")), users.get(ctx.get("user"), {})
        if not cluster or not cluster.get("server"):
            raise KubeConfigError(f"{where}: context {name!r} names no cluster with a server: fix the file")
        if "exec" in user or "auth-provider" in user:
            raise KubeConfigError(
                f"{where}: context {name!r} authenticates with a helper program, which mlrelease does not run:"
                " give the runner a service-account token (users[].user.token or tokenFile) or a client certificate"
            )
        base = self.kubeconfig.parent
        self.server = str(cluster["server"]).rstrip("/")
        self.ca_file: Path | None = None
        if cluster.get("insecure-skip-tls-verify"):
            verify: ssl.SSLContext | bool = False
        else:
            self.ca_file = _material(cluster, "certificate-authority", base, cache)
            verify = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        headers: dict[str, str] = {}
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        cert, key = _material(user, "client-certificate", base, cache), _material(user, "client-key", base, cache)
        self.cert_files = (cert, key) if cert and key else None
        if self.cert_files and isinstance(verify, ssl.SSLContext):
            verify.load_cert_chain(str(cert), str(key))
        if not token and not (cert and key):
            raise KubeConfigError(
                f"{where}: context {name!r} has no token or client certificate: add one for the runner's identity"
            )
        self.http = httpx.Client(base_url=self.server, verify=verify, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; TargetError when the API server cannot be reached at all."""
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TargetError(
                f"the Kubernetes API server {self.server} (context {self.context}) is unreachable:"
                f" {type(exc).__name__}: {exc}; check the kubeconfig and that the cluster is up"
            ) from None

    def get(self, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """The object at ``path``, or None when it does not exist; TargetError on any other refusal."""
        response = self.request("GET", path, **kwargs)
        if response.status_code == 404:
            return None
        return self.checked(response, f"GET {path}")

    def checked(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise TargetError(f"Kubernetes refused {what} ({response.status_code}): {message.strip()[:300]}")
        return response.json()
