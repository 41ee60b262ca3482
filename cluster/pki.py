"""Certificates, keys and the operator token of the local cluster, made with the openssl command.

One CA signs the API server's serving certificate and one client certificate per component; Kubernetes takes
the user from the certificate's CN and the groups from its O. The Node authorizer needs kubelet as
``system:node:<name>`` in ``system:nodes``. Elliptic-curve keys keep generation to milliseconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from cluster.layout import API_SERVICE_IP, CLUSTER_DOMAIN, NODE_IP, NODE_NAME, Layout
from cluster.netns import run

DAYS = "3650"


@dataclass(frozen=True)
class Client:
    name: str  # file stem
    user: str  # CN
    group: str = ""  # O


CLIENTS = (
    Client("admin", "mlrelease:bootstrap", "system:masters"),
    Client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
    Client("kube-controller-manager", "system:kube-controller-manager"),
    Client("kube-scheduler", "system:kube-scheduler"),
    Client("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
    Client("kube-proxy", "system:kube-proxy"),
    Client("kwok", "system:kwok-controller", "system:masters"),
)

API_SERVER_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
    "localhost",
)
API_SERVER_IPS = ("127.0.0.1", NODE_IP, API_SERVICE_IP)


def _key(path: Path) -> None:
    run(
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path)], f"generating {path.name}"
    )
    path.chmod(0o600)


def _sign(pki: Path, name: str, subject: str, extensions: str) -> None:
    key, csr, cert, ext = (pki / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt", ".ext"))
    _key(key)
    run(["openssl", "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)], f"requesting {name}")
    ext.write_text(extensions)
    run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
         "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", str(ext), "-out", str(cert)],
        f"signing {name}",
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def ensure(layout: Layout) -> None:
    """Create the CA, the API server's certificate, every client certificate, the service-account key pair
    and the operator token, each only if missing (so ``up`` after ``up`` keeps working credentials)."""
    pki = layout.pki
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    if not (pki / "ca.crt").exists():
        _key(pki / "ca.key")
        run(
            ["openssl", "req", "-x509", "-new", "-key", str(pki / "ca.key"), "-subj", "/CN=mlrelease-local-ca",
             "-days", DAYS, "-sha256", "-out", str(pki / "ca.crt")],
            "creating the cluster CA",
        )  # fmt: skip
    if not (pki / "apiserver.crt").exists():
        sans = ",".join([*(f"DNS:{n}" for n in API_SERVER_NAMES), *(f"IP:{ip}" for ip in API_SERVER_IPS)])
        _sign(
            pki,
            "apiserver",
            "/CN=kube-apiserver",
            f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
        )
    if not (pki / "kubelet-serving.crt").exists():
        _sign(
            pki,
            "kubelet-serving",
            f"/CN={NODE_NAME}",
            f"subjectAltName=DNS:{NODE_NAME},IP:{NODE_IP}\nextendedKeyUsage=serverAuth\n",
        )
    for client in CLIENTS:
        if not (pki / f"{client.name}.crt").exists():
            subject = f"/CN={client.user}" + (f"/O={client.group}" if client.group else "")
            _sign(pki, client.name, subject, "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n")
    if not (pki / "sa.key").exists():
        _key(pki / "sa.key")
        run(
            ["openssl", "ec", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")], "service-account key"
        )
    tokens = pki / "tokens.csv"
    if not tokens.exists():
        # The operator authenticates with a bearer token; RBAC (a ClusterRoleBinding made by ``up``) grants it
        # cluster-admin. Format: token,user,uid.
        tokens.write_text(f"{secrets.token_hex(24)},mlrelease,mlrelease-operator\n")
        tokens.chmod(0o600)


def operator_token(layout: Layout) -> str:
    return (layout.pki / "tokens.csv").read_text().split(",", 1)[0]
