"""The operator's door into the lab's NATS cluster (`python -m netns_lab.natsdoor DOOR_JSON READY_FILE`).

The operator's CLI runs in the root namespace, where the lab's underlay does not exist. The door listens on
127.0.0.1 in the root namespace, one port per region's NATS server, and forwards each connection to that
server from the backbone namespace (the socket is made there with setns(2), then the thread switches back):
the operator sits outside every region, so a cut host or a cut region is out of its reach too, and the NATS
client's own failover (the operator config lists every region's port) moves to a server it can still reach.

DOOR_JSON: {"netns": "<id>-bb", "routes": [{"region": "gru", "port": 41000, "host": "198.51.100.3",
"target_port": 4222}, ...]}. READY_FILE gets the pid once every port listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from netns_lab.system import in_netns

CONNECT_TIMEOUT = 3.0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _socket_in(netns: str, family: int) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def handler(netns: str, host: str, port: int) -> Any:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        sock = _socket_in(netns, family)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            sock.close()
            client_w.close()  # the client sees the server as down and fails over
            return
        server_r, server_w = await asyncio.open_connection(sock=sock)
        await asyncio.gather(_pump(client_r, server_w), _pump(server_r, client_w))

    return handle


async def serve(doc: dict[str, Any], ready: Path) -> None:
    servers = []
    for route in doc["routes"]:
        srv = await asyncio.start_server(handler(doc["netns"], route["host"], int(route["target_port"])),
                                         "127.0.0.1", int(route["port"]), reuse_address=True)
        servers.append(srv)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(ready)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m netns_lab.natsdoor DOOR_JSON READY_FILE", file=sys.stderr)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(doc, Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
