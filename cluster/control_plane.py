"""The control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and the host forwarder.

All listen inside the cluster's namespace. The API server binds every address there (its loopback, the node
address, the pods' bridge) so that pods reach it through the ``kubernetes`` Service with their service-account
token; the host reaches it only through the forwarder on its own 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cluster import api, kubeconfig, pki, processes
from cluster.layout import API_PORT, NODE_IP, SERVICE_CIDR, Layout, binary
from cluster.netns import ClusterError
from serving.wait import wait_until

READY_TIMEOUT = 90.0

# The operator (token user ``mlrelease``) is a cluster admin through RBAC, not through a privileged group.
OPERATOR_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: mlrelease-operator
subjects:
- {kind: User, name: mlrelease, apiGroup: rbac.authorization.k8s.io}
roleRef: {kind: ClusterRole, name: cluster-admin, apiGroup: rbac.authorization.k8s.io}
"""


def _pki(layout: Layout, name: str) -> str:
    return str(layout.pki / name)


def start_etcd(layout: Layout) -> None:
    processes.start(
        layout,
        "etcd",
        [
            "/usr/bin/etcd", "--name=mlrelease", f"--data-dir={layout.run / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=mlrelease=http://127.0.0.1:2380", "--log-level=warn",
        ],
    )  # fmt: skip


def start_apiserver(layout: Layout) -> None:
    processes.start(
        layout,
        "kube-apiserver",
        [
            str(binary("kube-apiserver")),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0", f"--secure-port={API_PORT}", f"--advertise-address={NODE_IP}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={_pki(layout, 'apiserver.crt')}",
            f"--tls-private-key-file={_pki(layout, 'apiserver.key')}",
            f"--client-ca-file={_pki(layout, 'ca.crt')}",
            f"--kubelet-client-certificate={_pki(layout, 'apiserver-kubelet-client.crt')}",
            f"--kubelet-client-key={_pki(layout, 'apiserver-kubelet-client.key')}",
            f"--kubelet-certificate-authority={_pki(layout, 'ca.crt')}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={_pki(layout, 'sa.pub')}",
            f"--service-account-signing-key-file={_pki(layout, 'sa.key')}",
            f"--token-auth-file={_pki(layout, 'tokens.csv')}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ],
    )  # fmt: skip


def _forward(layout: Layout, name: str, port_file: Path, direction: str, target_port: int, what: str) -> int:
    """Start forwarder ``name`` (``cluster/forward.py``, ``in`` or ``out``) unless it runs; return its port."""
    processes.start(
        layout,
        name,
        [sys.executable, "-m", "cluster.forward", direction, layout.netns, str(port_file), str(target_port)],
        in_netns=False,
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )

    def port() -> int | None:
        processes.check_running(layout, name)
        text = port_file.read_text().strip() if port_file.exists() else ""
        return int(text) if text else None

    return wait_until(port, 15.0, f"{what} to listen")


def start_forwarder(layout: Layout) -> int:
    """Start the host-side forwarder and return the host port it listens on."""
    return _forward(layout, "forwarder", layout.run / "forward.port", "in", API_PORT, "the API forwarder")


def expose(layout: Layout, host_port: int) -> str:
    """Make the host's ``127.0.0.1:host_port`` reachable from the pods; return the URL they use.

    For a service the pods need that runs on the host, the local object store above all: a Kubernetes
    target's pods fetch ``s3://`` model directories themselves. Idempotent: a second call returns the same URL.
    """
    if not 0 < host_port < 65536:
        raise ClusterError(f"cannot expose port {host_port}: give the host's 127.0.0.1 port, 1-65535")
    name = f"expose-{host_port}"
    port = _forward(layout, name, layout.run / f"{name}.port", "out", host_port, f"the forwarder of port {host_port}")
    return f"http://{NODE_IP}:{port}"


def start_controllers(layout: Layout) -> None:
    for name in ("kube-controller-manager", "kube-scheduler"):
        kubeconfig.write_component(layout, name)
    kcm = str(layout.component_kubeconfig("kube-controller-manager"))
    processes.start(
        layout,
        "kube-controller-manager",
        [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={kcm}", f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={_pki(layout, 'sa.key')}", f"--root-ca-file={_pki(layout, 'ca.crt')}",
            f"--cluster-signing-cert-file={_pki(layout, 'ca.crt')}",
            f"--cluster-signing-key-file={_pki(layout, 'ca.key')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--v=1",
        ],
    )  # fmt: skip
    sched = str(layout.component_kubeconfig("kube-scheduler"))
    processes.start(
        layout,
        "kube-scheduler",
        [
            str(binary("kube-scheduler")),
            f"--kubeconfig={sched}", f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--v=1",
        ],
    )  # fmt: skip


def up(layout: Layout) -> int:
    """Bring the control plane up (idempotent); return the forwarder's host port."""
    pki.ensure(layout)
    kubeconfig.write_component(layout, "admin")
    start_etcd(layout)
    start_apiserver(layout)
    port = start_forwarder(layout)
    kubeconfig.write_operator(layout, port, pki.operator_token(layout))

    def apiserver_ready() -> bool:
        for name in ("etcd", "kube-apiserver", "forwarder"):
            processes.check_running(layout, name)
        return api.ready(layout)  # /readyz is open to every authenticated user (system:public-info-viewer)

    wait_until(apiserver_ready, READY_TIMEOUT, "the API server to report /readyz")
    api.kubectl(layout, "apply", "-f", "-", stdin=OPERATOR_RBAC, as_admin=True)
    start_controllers(layout)
    return port
