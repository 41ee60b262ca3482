"""The local Kubernetes cluster that mlrelease's Kubernetes target is tested against.

Everything is built from the package registries (``scripts/cluster-tools.sh``) and runs inside a network
namespace this package creates, so the host's iptables, routes and interfaces are never touched. The host
reaches the API server through a loopback forwarder (``cluster.forward``); the kubeconfig points at it.
Entry point: ``scripts/cluster.sh up|down|status`` (``python -m cluster``).
"""
