"""The host's only path into the cluster: a TCP forwarder from host loopback to the API server.

A veth pair would need an address and a route on the host, which the cluster must never add. Instead this
process binds its listening socket on the host's 127.0.0.1 first, then moves itself into the cluster's
namespace (``setns``): every socket it opens afterwards, the upstream connections, lives there. Everything
else (services, pods) is reached through the API server's service proxy.

Run as ``python -m cluster.forward NETNS PORT_FILE TARGET_PORT``: it writes the port it bound to PORT_FILE
once it accepts connections.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from cluster.layout import Layout
from cluster.netns import enter

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


def main(argv: list[str]) -> None:
    netns, port_file, target_port = argv[0], Path(argv[1]), int(argv[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    requested = int(port_file.read_text()) if port_file.exists() else 0
    try:
        listener.bind(("127.0.0.1", requested))
    except OSError:
        listener.bind(("127.0.0.1", 0))  # the recorded port was taken meanwhile: any free one
    listener.listen(128)
    enter(Layout(run=port_file.parent, netns=netns))
    port_file.write_text(f"{listener.getsockname()[1]}\n")
    asyncio.run(_serve(listener, target_port))


if __name__ == "__main__":
    main(sys.argv[1:])
