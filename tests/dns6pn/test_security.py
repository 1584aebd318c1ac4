"""Cross-tenant leaks through `.internal` DNS (issue 15): the SOA serial is per network."""

from __future__ import annotations

import subprocess

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
