"""``python -m cluster up|down|status [--json]|expose PORT``: the command behind scripts/cluster.sh."""

from __future__ import annotations

import json
import sys
import time

from cluster import control_plane, lifecycle
from cluster.layout import Layout
from cluster.netns import ClusterError

USAGE = "usage: scripts/cluster.sh up|down|status [--json]|expose PORT"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "expose"):
        print(USAGE, file=sys.stderr)
        return 2
    layout = Layout.default()
    try:
        if argv[0] == "up":
            started = time.monotonic()
            state = lifecycle.up(layout)
            print(
                f"cluster: up in {time.monotonic() - started:.1f} s, mode {state.mode}, "
                f"API https://127.0.0.1:{state.port}, kubeconfig {layout.kubeconfig}"
            )
        elif argv[0] == "expose":
            if len(argv) != 2 or not argv[1].isdigit():
                print("usage: scripts/cluster.sh expose PORT (a port on the host's 127.0.0.1)", file=sys.stderr)
                return 2
            if not lifecycle.status(layout)["up"]:
                raise ClusterError("the cluster is not up: run 'make cluster' (scripts/cluster.sh up) first")
            print(control_plane.expose(layout, int(argv[1])))
        elif argv[0] == "down":
            restored = lifecycle.down(layout)
            print("cluster: down" + (f"; restored sysctls {', '.join(restored)}" if restored else ""))
        else:
            report = lifecycle.status(layout)
            if "--json" in argv:
                print(json.dumps(report, indent=2))
            else:
                _print_status(report)
            return 0 if report["up"] else 3
    except (ClusterError, TimeoutError, FileNotFoundError) as exc:
        print(f"cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(report: dict) -> None:
    if not report["up"]:
        print("cluster: down" + (f" (namespace {report['netns']} still exists)" if report["netns"] else ""))
    else:
        print(f"cluster: up, mode {report['mode']}, node ready: {report.get('node_ready')}")
        print(f"kubeconfig: {report['kubeconfig']}")
    if report["fallback_reason"]:
        print(f"kwok because: {report['fallback_reason']}")
    for name, pid in report["processes"].items():
        print(f"  {name:24} {'pid ' + str(pid) if pid else 'NOT RUNNING'}")
    changed = report["sysctls_changed"]
    if changed:
        print("global sysctls changed by kubelet (restored by down): " + ", ".join(
            f"{k} {v['before']} -> {v['now']}" for k, v in changed.items()))  # fmt: skip
    elif report["up"]:
        print("global sysctls: unchanged")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
