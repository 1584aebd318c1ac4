"""A tiny machine app for the lab tests: in region $REPLAY_FROM it answers every request with
`fly-replay: region=$REPLAY_TO`; elsewhere it answers JSON with its region and the `fly-replay-src` it got.
Standard library only, HTTP/1.1 with `Connection: close`; listens on [::]:$PORT."""

from __future__ import annotations

import asyncio
import json
import os


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    region = os.environ.get("FLY_REGION", "")
    extra = ""
    if region == os.environ.get("REPLAY_FROM"):
        body = b"replaying\n"
        extra = f"fly-replay: region={os.environ.get('REPLAY_TO', '')};state=from-{region}\r\n"
    else:
        body = json.dumps({"region": region, "machine_id": os.environ.get("FLY_MACHINE_ID", ""),
                           "fly_replay_src": headers.get("fly-replay-src", "")}).encode()
    writer.write((f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                  f"{extra}connection: close\r\n\r\n").encode() + body)
    await writer.drain()
    writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "::", int(os.environ.get("PORT", "8080")))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
