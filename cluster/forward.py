"""TCP forwarders across the cluster's namespace boundary, the only paths between it and the host.

A veth pair would need an address and a route on the host, which the cluster must never add. Instead a
forwarder binds its listening socket in one namespace, then moves itself into the other (``setns``): every
socket it opens afterwards, the upstream connections, lives there.

- ``in`` (the API server): listens on the host's 127.0.0.1, connects inside the cluster. Everything else
  (services, pods) is reached through the API server's service proxy.
- ``out`` (a host service the pods need, such as the object store their model directories come from):
  listens on the node address inside the namespace, which pods reach through their default route, and
  connects to the host's 127.0.0.1. Nothing on the host listens beyond loopback.

Run as ``python -m cluster.forward in|out NETNS PORT_FILE TARGET_PORT``: it writes the port it bound to
PORT_FILE once it accepts connections.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from cluster.layout import NODE_IP, Layout
from cluster.netns import enter, setns

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _serve(listener: socket.socket, target_port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def _listen(host: str, port_file: Path) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    requested = int(port_file.read_text()) if port_file.exists() else 0
    try:
        listener.bind((host, requested))
    except OSError:
        listener.bind((host, 0))  # the recorded port was taken meanwhile: any free one
    listener.listen(128)
    return listener


def main(argv: list[str]) -> None:
    direction, netns, port_file, target_port = argv[0], argv[1], Path(argv[2]), int(argv[3])
    layout = Layout(run=port_file.parent, netns=netns)
    if direction == "in":
        listener = _listen("127.0.0.1", port_file)
        enter(layout)
    elif direction == "out":
        host = os.open("/proc/self/ns/net", os.O_RDONLY)
        enter(layout)
        listener = _listen(NODE_IP, port_file)
        setns(host, "the host's network namespace")
        os.close(host)
    else:
        raise SystemExit(f"usage: python -m cluster.forward in|out NETNS PORT_FILE TARGET_PORT (not {direction!r})")
    port_file.write_text(f"{listener.getsockname()[1]}\n")
    asyncio.run(_serve(listener, target_port))


if __name__ == "__main__":
    main(sys.argv[1:])
