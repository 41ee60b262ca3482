"""The cluster's one node: a real one (containerd, runc, CNI bridge, kubelet, kube-proxy, CoreDNS) or kwok's.

A real node runs pods. Some machines cannot (no cgroup access, no overlayfs, runc refused): there ``kwok``
simulates a node whose pods become Running and Ready without running anything, so resources and await logic
still work against a real API server; ``status`` says which mode is up.

Settings that matter on these machines, each found the hard way:
- root lacks CAP_SYS_RESOURCE, so runc cannot raise a container's ``oom_score_adj``: containerd's CRI plugin
  must restrict it (``restrict_oom_score_adj``), or every sandbox fails with "can't get final child's PID";
- cgroup v1 with the cgroupfs driver (no systemd), kubelet told not to refuse cgroup v1 or swap;
- kube-proxy masquerades all service traffic: without ``br_netfilter`` in this namespace a pod reaching a
  Service backed by a pod on the same bridge would get the reply from the wrong address;
- kube-proxy leaves conntrack sysctls alone (global on this kernel), kubelet's are restored by ``down``.
"""

from __future__ import annotations

import contextlib
import json

import yaml

from cluster import api, images, kubeconfig, processes
from cluster.files import write_if_changed
from cluster.layout import (
    CLUSTER_DOMAIN,
    DNS_SERVICE_IP,
    KWOK_POD_CIDR,
    NODE_IP,
    NODE_NAME,
    POD_CIDR,
    POD_GATEWAY,
    Layout,
    binary,
)
from cluster.netns import ClusterError, run
from serving.wait import wait_until

NODE_READY_TIMEOUT = 90.0
KWOK_NODE = "mlrelease-kwok-node"


def _containerd_socket(layout: Layout) -> str:
    return str(layout.run / "containerd" / "containerd.sock")


def _write_containerd_config(layout: Layout, pause_ref: str) -> str:
    base = layout.run / "containerd"
    base.mkdir(parents=True, exist_ok=True)
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{_containerd_socket(layout)}"
[ttrpc]
  address = "{base / "ttrpc.sock"}"
[{cri}]
  sandbox_image = "{pause_ref}"
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{layout.run / "cni" / "net.d"}"
"""
    path = base / "config.toml"
    write_if_changed(path, config)
    return str(path)


def _write_cni_config(layout: Layout) -> None:
    conf_dir = layout.run / "cni" / "net.d"
    conf_dir.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "mlrelease",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.run / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    write_if_changed(conf_dir / "10-mlrelease.conflist", json.dumps(conflist, indent=2))


def _ctr(layout: Layout, *args: str) -> str:
    cmd = ["ctr", f"--address={_containerd_socket(layout)}", "--namespace=k8s.io", *args]
    return run(cmd, f"ctr {args[0]} {args[1] if len(args) > 1 else ''}".strip()).stdout


def _import_images(layout: Layout, wanted: list[images.Image]) -> None:
    present = set(_ctr(layout, "images", "ls", "-q").split())
    for image in wanted:
        if image.ref not in present:
            _ctr(layout, "images", "import", "--no-unpack=false", str(image.tarball))


def _start_kubelet(layout: Layout) -> None:
    kubeconfig.write_component(layout, "kubelet")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(layout.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(layout.pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(layout.pki / "kubelet-serving.key"),
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(layout.run / "resolv.conf"),
        "podCIDR": POD_CIDR,
        "containerRuntimeEndpoint": f"unix://{_containerd_socket(layout)}",
        "podLogsDir": str(layout.run / "pod-logs"),
        # The node is the whole test machine: never evict for disk or memory the suite itself is using.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }
    write_if_changed(layout.run / "resolv.conf", f"search {CLUSTER_DOMAIN}\nnameserver {DNS_SERVICE_IP}\n")
    path = layout.run / "kubelet.yaml"
    write_if_changed(path, yaml.safe_dump(config))
    processes.start(
        layout,
        "kubelet",
        [
            str(binary("kubelet")), f"--config={path}", f"--kubeconfig={layout.component_kubeconfig('kubelet')}",
            f"--root-dir={layout.run / 'kubelet'}", f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}",
            "--v=1",
        ],
    )  # fmt: skip


def _start_kube_proxy(layout: Layout) -> None:
    kubeconfig.write_component(layout, "kube-proxy")
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(layout.component_kubeconfig("kube-proxy"))},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "iptables": {"masqueradeAll": True},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    path = layout.run / "kube-proxy.yaml"
    write_if_changed(path, yaml.safe_dump(config))
    processes.start(layout, "kube-proxy", [str(binary("kube-proxy")), f"--config={path}", "--v=1"])


def coredns_manifest(image_ref: str) -> str:
    corefile = f""".:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        ttl 30
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"""
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-dns"}},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image_ref,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                ],
                                "securityContext": {
                                    "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                    "runAsUser": 0,
                                },
                                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "selector": {"k8s-app": "kube-dns"},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
    ]
    return yaml.safe_dump_all(objects)


REAL_PROCESSES = ["containerd", "kubelet", "kube-proxy"]


def up_real(layout: Layout, wanted: list[images.Image]) -> dict[str, str]:
    """Start the real node with ``wanted`` imported, and CoreDNS; return the image references by name."""
    refs = {image.name: image.ref for image in wanted}
    config = _write_containerd_config(layout, refs["pause"])
    _write_cni_config(layout)
    processes.start(layout, "containerd", ["/usr/bin/containerd", f"--config={config}"])
    wait_until(
        lambda: (
            processes.check_running(layout, "containerd") or (layout.run / "containerd" / "containerd.sock").exists()
        ),
        30.0,
        "containerd's socket",
    )
    _import_images(layout, wanted)
    _start_kubelet(layout)
    _start_kube_proxy(layout)

    def node_up() -> bool:
        for name in REAL_PROCESSES:
            processes.check_running(layout, name)
        return api.node_ready(layout, NODE_NAME)

    wait_until(node_up, NODE_READY_TIMEOUT, f"node {NODE_NAME} to be Ready")
    api.kubectl(layout, "apply", "-f", "-", stdin=coredns_manifest(refs["coredns"]))
    wait_until(
        lambda: api.pods_ready(layout, "kube-system", "k8s-app=kube-dns"), NODE_READY_TIMEOUT, "CoreDNS to be Ready"
    )
    return refs


def down_real(layout: Layout) -> None:
    processes.stop(layout, ["kubelet", "kube-proxy"])
    if processes.pid_of(layout, "containerd") is not None:
        # Stop every container before containerd itself, so no shim or workload outlives the node. A task that
        # is already gone, or a containerd that no longer answers, leaves nothing for ctr to kill.
        with contextlib.suppress(ClusterError):
            for task in _ctr(layout, "tasks", "ls", "-q").split():
                with contextlib.suppress(ClusterError):
                    _ctr(layout, "tasks", "kill", "-s", "SIGKILL", task)
    processes.stop(layout, ["containerd"])


def kwok_node_manifest() -> str:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": KWOK_NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": KWOK_NODE, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }
    return yaml.safe_dump(node)


def up_kwok(layout: Layout) -> None:
    kubeconfig.write_component(layout, "kwok")
    processes.start(
        layout,
        "kwok",
        [
            str(binary("kwok")), f"--kubeconfig={layout.component_kubeconfig('kwok')}",
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={KWOK_POD_CIDR}", f"--node-ip={NODE_IP}",
        ],
    )  # fmt: skip
    api.kubectl(layout, "apply", "-f", "-", stdin=kwok_node_manifest())

    def node_up() -> bool:
        processes.check_running(layout, "kwok")
        return api.node_ready(layout, KWOK_NODE)

    wait_until(node_up, NODE_READY_TIMEOUT, f"kwok node {KWOK_NODE} to be Ready")
