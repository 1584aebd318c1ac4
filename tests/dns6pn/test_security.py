"""Cross-tenant leaks through `.internal` DNS (issue 15): the SOA serial is per network."""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import dns.message
import dns.rdatatype

from catalog import State
from dns6pn import Engine
from tests.dns6pn.serving import eventually, running
from tests.dns6pn.test_names import ask
from tests.dns6pn.world import World


def serial(message: dns.message.Message) -> int:
    (soa,) = [rrset for rrset in (*message.answer, *message.authority) if rrset.rdtype == dns.rdatatype.SOA]
    return int(soa[0].serial)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def follow(world: World, engine: Engine, state: State) -> None:
    """What the server's catalog follower does: apply the new changes, hand them to the engine."""
    changes = world.catalog.changes_since(state.version)
    for change in changes:
        state.apply(change)
    engine.update(state, changes)


def test_soa_serial_moves_only_with_the_networks_own_changes(world: World) -> None:
    clock = Clock()
    state = world.catalog.snapshot()
    engine = Engine(state, clock=clock)
    acme, globex = world.acme_source, world.globex.address

    def serials() -> tuple[int, int, int]:
        return (serial(ask(engine, "internal", "SOA", source=acme)),  # the apex SOA
                serial(ask(engine, "nope.internal", source=acme)),  # NXDOMAIN's SOA (RFC 2308)
                serial(ask(engine, "nope.internal", source=globex)))

    first = serials()
    assert first == (int(clock.now),) * 3 and first[0] != state.version
    # globex writes (machines, apps, an app deleted) and a new org appears: acme sees none of it.
    clock.now += 60
    for _ in range(5):
        world.catalog.create_machine("api", "worker-gru", state="started")
    world.catalog.create_app("api2", "globex")
    world.catalog.delete_app("api2")
    world.catalog.create_org("initech")
    follow(world, engine, state)
    after = serials()
    assert after[:2] == first[:2]
    assert after[2] == int(clock.now)  # globex's own zone moved
    # acme's own change moves acme's serial, to the time of the change.
    clock.now += 60
    world.catalog.set_machine_state(world.web_sjc.id, "stopped")
    follow(world, engine, state)
    assert serials() == (int(clock.now), int(clock.now), after[2])
    # Two changes in one second, or a clock stepped back: still one step forward (RFC 1982).
    clock.now -= 3600
    world.catalog.set_machine_state(world.web_sjc.id, "started")
    follow(world, engine, state)
    assert serials()[0] == int(clock.now) + 3600 + 1


def dig_soa_serial(host: str, port: int, name: str, *options: str) -> int:
    """The serial of the SOA in `dig @host -p port <name> AAAA`'s authority section (NXDOMAIN, RFC 2308):
    `internal. 5 IN SOA ns.internal. hostmaster.internal. SERIAL 3600 600 86400 5`."""
    out = subprocess.run(["dig", f"@{host}", "-p", str(port), name, "AAAA", "+noall", "+authority", "+tries=1",
                          "+time=3", *options], capture_output=True, text=True, timeout=10, check=True).stdout.split()
    assert out[3:6] == ["SOA", "ns.internal.", "hostmaster.internal."], out
    return int(out[6])


def test_dig_sees_no_other_networks_writes_in_the_soa(world: World) -> None:
    """Each question is a new name, so no reply comes from a cache filled before the writes."""
    with running(world.catalog.state_dir, listen=(("127.0.0.1", 0),), source_override=world.acme_source) as server:
        host, port = server.addresses[0]
        first = dig_soa_serial(host, port, "nope1.internal")
        assert dig_soa_serial(host, port, "nope2.internal", "+tcp") == first
        for _ in range(3):
            world.catalog.create_machine("api", "worker-gru", state="started")  # globex
        version = world.catalog.version()
        eventually(lambda: server.engine.state.version >= version)
        assert dig_soa_serial(host, port, "nope3.internal") == first
        assert dig_soa_serial(host, port, "nope4.internal", "+tcp") == first
        world.catalog.set_machine_state(world.web_sjc.id, "stopped")  # acme
        eventually(lambda: dig_soa_serial(host, port, "nope5.internal") > first)


# -- TCP: one source against the others (issue 15, "DNS TCP cap shared") -----------------------------------

def dig_tcp(host: str, port: int, name: str = "web.internal") -> list[str]:
    out = subprocess.run(["dig", f"@{host}", "-p", str(port), name, "AAAA", "+tcp", "+short", "+tries=1",
                          "+time=3"], capture_output=True, text=True, timeout=10)
    return out.stdout.split() if out.returncode == 0 else [f"dig failed: {out.stdout.strip()}"]


def test_one_source_holding_tcp_connections_cannot_deny_another(world: World) -> None:
    """300 idle TCP connections from one source (127.0.0.2) leave the server answering another (127.0.0.1)."""
    want = sorted([world.web_gru.address, world.web_ams.address, world.web_sjc.address])
    with running(world.catalog.state_dir, listen=(("127.0.0.1", 0),), source_override=world.acme_source,
                 tcp_first_timeout=30.0, tcp_idle_timeout=30.0) as server:
        host, port = server.addresses[0]
        held: list[socket.socket] = []
        try:
            for _ in range(300):
                held.append(socket.create_connection((host, port), timeout=5, source_address=("127.0.0.2", 0)))
            eventually(lambda: server.tcp_book.by_source == {"127.0.0.2": 32})
            assert [sorted(dig_tcp(host, port)) for _ in range(5)] == [want] * 5
        finally:
            for sock in held:
                sock.close()
        eventually(lambda: server.tcp_book.open == 0)


def test_idle_and_trickling_tcp_connections_are_closed(world: World) -> None:
    """A new connection gets `tcp_first_timeout` for its first whole query: idle or trickling, it is closed."""
    with running(world.catalog.state_dir, listen=(("127.0.0.1", 0),), source_override=world.acme_source,
                 tcp_first_timeout=0.5, tcp_idle_timeout=10.0) as server:
        host, port = server.addresses[0]
        query = dns.message.make_query("a-longer-name-that-takes-a-while-to-trickle.web.internal", "AAAA").to_wire()
        framed = struct.pack("!H", len(query)) + query
        idle = socket.create_connection((host, port), timeout=5)
        trickle = socket.create_connection((host, port), timeout=5)
        started = time.monotonic()
        try:
            closed_after: float | None = None
            for i in range(len(framed) - 1):  # never the last byte: no query is ever complete
                try:
                    trickle.sendall(framed[i : i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - started
                    break
                time.sleep(0.05)
            assert closed_after is not None and closed_after < 2.0  # not 10 s re-armed by every byte
            assert idle.recv(10) == b""
        finally:
            idle.close()
            trickle.close()
        assert dig_tcp(host, port)  # answered as ever
