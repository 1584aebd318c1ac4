"""The sample app over loopback (hypercorn on a free port), and `spread`."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import pytest

from netns_lab.errors import LabError
from netns_lab.machines import spread


def free_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "FLY_REGION": "gru", "FLY_MACHINE_ID": "0123456789abcd", "FLY_APP_NAME": "hello",
           "FLY_PRIVATE_IP": "fdaa:0:1:0:2:0:1:2"}
    proc = subprocess.Popen([sys.executable, "-m", "netns_lab.sampleapp", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("::1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "sample app did not start"
                time.sleep(0.05)
        yield f"http://[::1]:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_root_reports_identity_and_headers(app_url: str) -> None:
    async def go() -> dict[str, object]:
        async with aiohttp.ClientSession() as s, s.get(app_url + "/", headers={"X-Probe": "1"}) as r:
            assert r.status == 200
            doc: dict[str, object] = json.loads(await r.text())
            return doc

    doc = asyncio.run(go())
    assert doc["region"] == "gru" and doc["machine_id"] == "0123456789abcd" and doc["app"] == "hello"
    assert doc["private_ip"] == "fdaa:0:1:0:2:0:1:2"
    headers = doc["headers"]
    assert isinstance(headers, dict) and headers["x-probe"] == "1"


def test_healthz_echo_stream_and_websocket(app_url: str) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.get(app_url + "/healthz") as r:
                assert r.status == 200 and await r.text() == "ok\n"
            body = os.urandom(100_000)
            async with s.post(app_url + "/echo", data=body) as r:
                assert await r.read() == body
            async with s.get(app_url + "/stream") as r:
                chunks = [line async for line in r.content]
                assert len(chunks) == 10 and chunks[0].startswith(b"chunk 0")
            async with s.ws_connect(app_url + "/ws") as ws:
                await ws.send_str("hello")
                assert await ws.receive_str() == "hello"
                await ws.send_bytes(b"\x00\x01")
                assert await ws.receive_bytes() == b"\x00\x01"
            async with s.get(app_url + "/nope") as r:
                assert r.status == 404

    asyncio.run(go())


def test_spread_is_even_and_first_regions_get_the_rest() -> None:
    assert spread(3, ["gru", "gig", "sjc"]) == {"gru": 1, "gig": 1, "sjc": 1}
    assert spread(4, ["gru", "gig", "sjc"]) == {"gru": 2, "gig": 1, "sjc": 1}
    assert spread(0, ["gru"]) == {"gru": 0}
    with pytest.raises(LabError):
        spread(-1, ["gru"])
    with pytest.raises(LabError):
        spread(1, [])
