from __future__ import annotations

import ipaddress

import pytest

from wgmesh.dump import parse_dump
from wgmesh.errors import MeshError

PRIV = "cHJpdmF0ZWtleXByaXZhdGVrZXlwcml2YXRla2V5cHI="
DUMP = (
    f"{PRIV}\tPUBSELF=\t51820\toff\n"
    "PEERA=\t(none)\t192.0.2.2:51820\tfdaa:0:1:2::/80,fdaa:0:0:2::1/128\t1700000000\t100\t200\toff\n"
    "PEERB=\t(none)\t(none)\t(none)\t0\t0\t0\t15\n"
)


def test_parse_dump_fields() -> None:
    obs = parse_dump(DUMP)
    assert obs.public_key == "PUBSELF="
    assert obs.listen_port == 51820
    a = obs.peers["PEERA="]
    assert a.endpoint == "192.0.2.2:51820"
    assert a.allowed_ips == {ipaddress.ip_network("fdaa:0:1:2::/80"), ipaddress.ip_network("fdaa:0:0:2::1/128")}
    assert (a.latest_handshake, a.rx_bytes, a.tx_bytes, a.keepalive) == (1700000000, 100, 200, 0)
    b = obs.peers["PEERB="]
    assert b.endpoint is None and b.allowed_ips == frozenset() and b.keepalive == 15


def test_private_key_is_not_kept() -> None:
    assert PRIV not in repr(parse_dump(DUMP))


@pytest.mark.parametrize("text", ["", "a\tb\n", f"{PRIV}\tP\t1\toff\nPEER\tx\n"])
def test_malformed_dump(text: str) -> None:
    with pytest.raises(MeshError):
        parse_dump(text)
