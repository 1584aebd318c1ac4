"""The lab's sample app, the default command of a machine: `python -m netns_lab.sampleapp [--port N]`.

An ASGI app served by hypercorn on [::]:PORT (default $PORT, else 8080), answering
  GET  /         JSON: region, machine id, app, private IP, the request's headers
  GET  /healthz  "ok"
  POST /echo     the request body, as received
  GET  /stream   ten chunks, one every 50 ms (chunked transfer), to test streaming through the proxy
  WS   /ws       echoes every message
Identity comes from the machine's environment (FLY_REGION, FLY_MACHINE_ID, FLY_APP_NAME, FLY_PRIVATE_IP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def identity() -> dict[str, str]:
    return {
        "region": os.environ.get("FLY_REGION", ""),
        "machine_id": os.environ.get("FLY_MACHINE_ID", ""),
        "app": os.environ.get("FLY_APP_NAME", ""),
        "private_ip": os.environ.get("FLY_PRIVATE_IP", ""),
    }


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    path, method = scope["path"], scope["method"]
    if path == "/" and method in ("GET", "HEAD"):
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1")
            headers[name] = f"{headers[name]}, {v.decode('latin-1')}" if name in headers else v.decode("latin-1")
        doc = {**identity(), "headers": headers, "client": list(scope.get("client") or [])}
        await _respond(send, 200, json.dumps(doc).encode() + b"\n", b"application/json")
    elif path == "/healthz":
        await _respond(send, 200, b"ok\n")
    elif path == "/echo" and method == "POST":
        await _respond(send, 200, await _read_body(receive), b"application/octet-stream")
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(10):
            await send({"type": "http.response.body", "body": f"chunk {i} from {identity()['machine_id']}\n".encode(),
                        "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})
    else:
        await _respond(send, 404, b"not found\n")


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] != "/ws":
        await send({"type": "websocket.close", "code": 1008})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        else:
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await _http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _websocket(scope, receive, send)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def serve(port: int) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"[::]:{port}"]  # dual-stack: the 6PN address and the IPv4 loopback
    config.accesslog = None
    config.graceful_timeout = 1.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await hypercorn_serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sampleapp", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
