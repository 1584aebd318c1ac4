"""HTTP/2 edge cases with a scripted h2 client over TLS: stream resets, flow-control back-pressure, GOAWAY."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, Event, ResponseReceived, StreamEnded

from edge_proxy.tls import make_self_signed
from tests.edge_proxy.harness import Lab, aio, edge_lab

NAME = "web.sixpn.test"


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.flush()

    @classmethod
    async def open(cls, port: int, ca: Path) -> Client:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=NAME)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        return cls(reader, writer)

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def get(self, path: str) -> int:
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"https"),
                                        (b":authority", NAME.encode())], end_stream=True)
        self.flush()
        return stream

    async def events(self) -> list[Event]:
        data = await asyncio.wait_for(self.reader.read(65536), 10)
        assert data, "connection closed"
        events = self.conn.receive_data(data)
        self.flush()
        return events


async def setup(lab: Lab, certs: Path) -> tuple[int, Path]:
    return lab.service.addresses[1][1], certs / f"{NAME}.crt"


@aio
async def test_stream_reset_leaves_connection_usable(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_self_signed(NAME, certs)
    async with edge_lab(tmp_path, {"w": ("web", "gru")}, tls_listen=("127.0.0.1:0",), cert_dir=str(certs)) as lab:
        client = await Client.open(*(await setup(lab, certs)))
        first = client.get("/stream")
        while not any(isinstance(e, ResponseReceived) for e in await client.events()):
            pass
        client.conn.reset_stream(first)
        client.flush()
        second = client.get("/")
        status = b""
        body = b""
        done = False
        while not done:
            for e in await client.events():
                if isinstance(e, ResponseReceived) and e.stream_id == second:
                    status = dict(e.headers or [])[b":status"]
                elif isinstance(e, DataReceived) and e.stream_id == second:
                    body += e.data or b""
                    client.conn.acknowledge_received_data(e.flow_controlled_length or 0, second)
                elif isinstance(e, StreamEnded) and e.stream_id == second:
                    done = True
            client.flush()
        assert status == b"200" and b'"machine": "w"' in body
        client.writer.close()


@aio
async def test_shut_window_holds_the_machine_back(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_self_signed(NAME, certs)
    async with edge_lab(tmp_path, {"w": ("web", "gru")}, tls_listen=("127.0.0.1:0",), cert_dir=str(certs)) as lab:
        client = await Client.open(*(await setup(lab, certs)))
        stream = client.get("/big")
        got = 0
        while got < 65535:  # the default window: the edge may send this much, then must stop
            for e in await client.events():
                if isinstance(e, DataReceived):
                    got += len(e.data or b"")
        await asyncio.sleep(0.5)
        assert not lab.backends["w"].seen[0].finished  # 64 MiB cannot have gone anywhere
        total = got
        client.conn.acknowledge_received_data(got, stream)
        client.flush()
        ended = False
        while not ended:
            for e in await client.events():
                if isinstance(e, DataReceived):
                    total += len(e.data or b"")
                    client.conn.acknowledge_received_data(e.flow_controlled_length or 0, stream)
                elif isinstance(e, StreamEnded):
                    ended = True
            client.flush()
        assert total == 64 * 1024 * 1024
        client.writer.close()


@aio
async def test_drain_finishes_open_streams(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_self_signed(NAME, certs)
    async with edge_lab(tmp_path, {"w": ("web", "gru")}, tls_listen=("127.0.0.1:0",), cert_dir=str(certs)) as lab:
        port, ca = await setup(lab, certs)
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--http2", "-m", "20", "--cacert", str(ca), "--resolve", f"{NAME}:{port}:127.0.0.1",
            "-w", "\n%{http_version} %{http_code}", f"https://{NAME}:{port}/slow", stdout=asyncio.subprocess.PIPE)
        for _ in range(200):  # the request reached the machine (which answers after 3 s)
            if lab.backends["w"].seen:
                break
            await asyncio.sleep(0.02)
        assert lab.backends["w"].seen
        await lab.service.drain(10.0)  # GOAWAY, then waits for the open stream
        out, _ = await curl.communicate()
        assert curl.returncode == 0 and out.decode().endswith("late\n\n2 200"), out
