"""The lab as a faithful fleet: per-host files (pure), region cuts (pure), and a lab with its NATS cluster: one
server per region clustered across the emulated RTT, the operator's door, cuts of a NATS host and of a region,
and nothing left behind by `down`."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from nats.js import api

from catalog import natsconf
from catalog.fleetconfig import load_host_config, read_credentials
from netns_lab import fleet, plan, system, topology
from netns_lab.errors import LabError
from netns_lab.lab import RUN_ROOT, Lab
from tests.conftest import lab_id, lab_unavailable

PLAN = plan.make_plan("fx", topology.default())
T = TypeVar("T")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- pure --------------------------------------------------------------------------------------------


def test_one_nats_server_per_region_on_its_first_worker() -> None:
    assert [n.name for n in plan.nats_hosts(PLAN)] == ["worker-gru", "worker-gig", "worker-sjc"]
    cluster = plan.nats_cluster(PLAN)
    assert [s.address for s in cluster.servers] == ["198.51.100.3", "198.51.100.35", "198.51.100.67"]


def test_every_host_gets_its_own_config_creds_and_state(tmp_path: Path) -> None:
    door = fleet.write_fleet(PLAN, tmp_path, "replicated", cluster=True)
    assert door is not None and list(door.ports) == ["gru", "gig", "sjc"]
    states = set()
    for node in PLAN.hosts():
        config = load_host_config(fleet.host_config_path(tmp_path, node.name))
        assert (config.name, config.role, config.region) == (node.name, node.role, node.region)
        assert config.underlay == str(node.v4) and config.catalog.replicated
        own = next(s for s in plan.nats_cluster(PLAN).servers if s.region == node.region)
        assert config.catalog.nats[0] == own.client_url  # its own region's server first
        assert config.state_dir == fleet.host_dir(tmp_path, node.name) / "state"
        states.add(config.state_dir)
        assert config.catalog.credentials is not None
        creds = read_credentials(config.catalog.credentials)  # refuses anything but 0600
        assert creds.user == natsconf.host_user(node.name)
        assert _mode(fleet.host_dir(tmp_path, node.name)) == 0o700
        conf = fleet.nats_conf_path(tmp_path, node.name)
        assert conf.exists() == (node.name in ("worker-gru", "worker-gig", "worker-sjc"))
        if conf.exists():
            assert _mode(conf) == 0o600
            assert creds.password not in conf.read_text()
    assert len(states) == len(PLAN.hosts())  # nothing shared between hosts
    operator = load_host_config(fleet.operator_config_path(tmp_path))
    assert operator.role == "operator" and list(operator.catalog.nats) == door.urls()
    assert read_credentials(operator.catalog.credentials or Path()).user == "admin"


def test_the_embedded_switch_shares_one_state_and_runs_no_cluster(tmp_path: Path) -> None:
    assert fleet.write_fleet(PLAN, tmp_path, "embedded", cluster=False) is None
    configs = [load_host_config(fleet.host_config_path(tmp_path, n.name)) for n in PLAN.hosts()]
    assert {c.state_dir for c in configs} == {tmp_path / "state"}
    assert not any(c.catalog.replicated or c.catalog.nats for c in configs)
    assert not list(tmp_path.glob("hosts/*/nats-server.conf"))


def test_host_services_run_as_their_units_would(tmp_path: Path) -> None:
    from netns_lab import services

    for spec in services.host_specs(PLAN, tmp_path, {"mesh", "dns", "proxy"}):
        node = spec.name.split(".", 1)[0]
        config = str(fleet.host_config_path(tmp_path, node))
        assert spec.argv[3:5] == ("--host-config", config) and "--state" not in spec.argv
        assert dict(spec.env)["SIXPN_CONFIG"] == config and spec.netns == PLAN.node(node).ns
    cluster = services.cluster_specs(PLAN, tmp_path, replicate=True)
    nats = [s for s in cluster if s.name.endswith(".nats")]
    assert [(s.name, s.netns) for s in nats] == [(f"{h}.nats", f"fx-{h}") for h in
                                                 ("worker-gru", "worker-gig", "worker-sjc")]
    assert nats[0].argv[1:] == ("-c", str(fleet.nats_conf_path(tmp_path, "worker-gru")))
    door = next(s for s in cluster if s.name == "natsdoor")
    assert door.netns is None  # the root namespace: it listens where the operator's CLI runs
    replicators = [s for s in cluster if s.name.endswith(".replicate")]
    assert len(replicators) == len(PLAN.hosts()) and replicators[0].argv[-2:] == ("catalog", "replicate")


def test_a_region_cut_keeps_its_own_edges_for_its_own_clients() -> None:
    from catalog import default_regions

    choice = plan.anycast_choice(PLAN, default_regions(), frozenset(), frozenset({"gru"}))
    assert {r: e.name if e else None for r, e in choice.items()} == {
        "gru": "edge-gru", "gig": "edge-gig", "sjc": "edge-sjc"}
    choice = plan.anycast_choice(PLAN, default_regions(), frozenset({"edge-gig"}), frozenset({"gru"}))
    assert choice["gig"] is not None and choice["gig"].name == "edge-sjc"  # not edge-gru, 8 ms but cut off
    lines = plan.region_cut_lines(PLAN, "gru", True, 4)
    assert "rule add pref 900 iif br-gru to 198.51.100.32/27 prohibit" in lines
    assert "rule add pref 900 iif br-sjc to 198.51.100.0/27 prohibit" in lines
    assert "rule add pref 900 iif lo to 198.51.100.0/27 prohibit" in lines  # the operator's door too
    assert not any("br-gig to 198.51.100.64" in line for line in lines)  # gig-sjc untouched


# -- a lab with its cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_lab() -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    try:
        lab = Lab.up(None, lab_id("n"), host_services=False, owner_pid=os.getpid(), catalog="embedded",
                     cluster=True)
        lab.timings["total"] = time.monotonic() - started
        print(f"\nlab up with the NATS cluster: {lab.timings}")
        yield lab
    finally:
        Lab.down(lab_id("n"))


def _door_url(lab: Lab, region: str) -> str:
    import json

    routes = json.loads((lab.run_dir / "door.json").read_text())["routes"]
    return next(f"nats://127.0.0.1:{r['port']}" for r in routes if r["region"] == region)


async def _connect(lab: Lab, user: str, region: str) -> object:
    import nats

    if user == "admin":
        creds = read_credentials(fleet.operator_dir(lab.run_dir) / "admin.creds")
    else:
        creds = read_credentials(fleet.host_dir(lab.run_dir, user) / "nats.creds")

    async def quiet(_exc: Exception) -> None:
        return None

    return await nats.connect(servers=[_door_url(lab, region)], user=creds.user, password=creds.password,
                              connect_timeout=3, allow_reconnect=False, error_cb=quiet)


async def _publish_seen(lab: Lab, writer_region: str, reader: str, reader_region: str, n: int) -> list[float]:
    """Publish `n` messages as the operator through `writer_region`'s server; a host reading the stream with an
    ordered consumer through `reader_region`'s server sees each; returns publish -> seen times (ms)."""
    admin = await _connect(lab, "admin", writer_region)
    host = await _connect(lab, reader, reader_region)
    times: list[float] = []
    try:
        js_admin = admin.jetstream(timeout=5)  # type: ignore[attr-defined]
        info = await js_admin.stream_info("SIXPN_CATALOG")
        start = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                   opt_start_seq=info.state.last_seq + 1)
        sub = await host.jetstream(timeout=5).subscribe(  # type: ignore[attr-defined]
            "sixpn.cat.>", stream="SIXPN_CATALOG", ordered_consumer=True, config=start)
        for i in range(n):
            sent = time.monotonic()
            await admin.publish("sixpn.cat.test", f"probe {i}".encode())  # type: ignore[attr-defined]
            msg = await sub.next_msg(timeout=5)
            times.append((time.monotonic() - sent) * 1000)
            assert msg.data == f"probe {i}".encode()
        await sub.unsubscribe()
    finally:
        await host.close()  # type: ignore[attr-defined]
        await admin.close()  # type: ignore[attr-defined]
    return times


@pytest.mark.lab
def test_the_cluster_spans_the_regions_and_crosses_the_rtt(nats_lab: Lab) -> None:
    lab = nats_lab
    status = lab.status()
    assert status["nats"]["servers"] == ["worker-gru", "worker-gig", "worker-sjc"]
    assert status["nats"]["stream_seq"] == 0
    # Each server runs in its host's namespace, listening on the host's underlay address.
    svc = lab.service_status()
    for host in ("worker-gru", "worker-gig", "worker-sjc"):
        assert svc[f"{host}.nats"]["running"] and svc[f"{host}.nats"]["netns"] == lab.plan.node(host).ns

    async def replicas() -> list[str]:
        admin = await _connect(lab, "admin", "gig")
        try:
            info = await admin.jetstream(timeout=5).stream_info("SIXPN_CATALOG")  # type: ignore[attr-defined]
            return sorted([info.cluster.leader, *(r.name for r in info.cluster.replicas or [])])
        finally:
            await admin.close()  # type: ignore[attr-defined]

    assert asyncio.run(replicas()) == ["worker-gig", "worker-gru", "worker-sjc"]  # R3, one copy per region

    # Written through gru, read through sjc: at least one crossing of gru-sjc (175 ms RTT) one way.
    times = asyncio.run(_publish_seen(lab, "gru", "worker-sjc", "sjc", 10))
    print(f"\npublish via gru -> seen via sjc: min {min(times):.1f} ms, median {sorted(times)[5]:.1f} ms")
    assert min(times) >= 175 / 2 * 0.9
    assert lab.status()["nats"]["stream_seq"] == 10


@pytest.mark.lab
def test_a_host_cannot_write_another_hosts_subject_through_the_lab(nats_lab: Lab) -> None:
    async def attempt() -> None:
        import nats.errors

        host = await _connect(nats_lab, "edge-gru", "gru")
        try:
            js = host.jetstream(timeout=1)  # type: ignore[attr-defined]
            await js.publish("sixpn.cat.host.edge-gru", b"own")
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish("sixpn.cat.host.worker-gru", b"forged")
        finally:
            await host.close()  # type: ignore[attr-defined]

    asyncio.run(attempt())


def _eventually(attempt: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.lab
def test_cutting_a_nats_host_or_a_region_cuts_its_server(nats_lab: Lab) -> None:
    lab = nats_lab
    lab.cut("worker-sjc")  # the host's veth goes down: its NATS server with it
    try:
        def answered() -> int:
            seq = lab.status()["nats"]["stream_seq"]
            assert seq is not None
            return int(seq)

        _eventually(answered, 30.0)  # the quorum (gru, gig) answers, once it has a stream leader of its own
        with pytest.raises(Exception):  # noqa: B017 - the door cannot reach sjc's server
            asyncio.run(_publish_seen(lab, "sjc", "worker-gig", "gig", 1))
    finally:
        lab.heal("worker-sjc")

    lab.cut("gru")
    try:
        assert lab.cut_regions() == frozenset({"gru"})
        ok = lab.exec("client-gru", ["ping", "-c1", "-W1", str(lab.plan.node("edge-gru").v4)])
        assert ok.returncode == 0  # inside the region, traffic flows
        cut = lab.exec("client-gig", ["ping", "-c1", "-W1", str(lab.plan.node("worker-gru").v4)])
        assert cut.returncode != 0
        # The rest keeps a quorum: once it has elected leaders of its own (when gru held one), writes go on.
        cut_at = time.monotonic()
        times = _eventually(lambda: asyncio.run(_publish_seen(lab, "gig", "worker-sjc", "sjc", 3)), 30.0)
        print(f"\nwrites through gig seen in sjc {time.monotonic() - cut_at:.1f} s after gru was cut")
        assert len(times) == 3
        with pytest.raises(Exception):  # noqa: B017 - the operator is outside gru: its door there is shut
            asyncio.run(_publish_seen(lab, "gru", "worker-gig", "gig", 1))
    finally:
        lab.heal("gru")
    assert lab.cut_regions() == frozenset()
    assert lab.exec("client-gig", ["ping", "-c1", "-W2", str(lab.plan.node("worker-gru").v4)]).returncode == 0


@pytest.mark.lab
def test_a_failed_up_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    lid = lab_id("f")

    def no_stream(run_dir: Path, timeout: float = 0, prefer_leader: str | None = None) -> None:
        raise LabError("the cluster never came (injected)")

    monkeypatch.setattr(fleet, "init_stream", no_stream)  # fails once the servers and the door run
    with pytest.raises(LabError, match="injected"):
        Lab.up(None, lid, host_services=False, owner_pid=os.getpid(), catalog="embedded", cluster=True)
    assert not system.pids_with_marker(lid)
    assert not (RUN_ROOT / lid).exists()
    assert not [n for n in system.list_netns() if n.startswith(f"{lid}-")]


@pytest.mark.lab
def test_down_leaves_no_server_door_or_directory() -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    lid = lab_id("m")
    lab = Lab.up(None, lid, host_services=False, owner_pid=os.getpid(), catalog="embedded", cluster=True)
    pids = {s["pid"] for s in lab.service_status().values() if s.get("pid")}
    assert len(pids) >= 5  # delay line, three servers, the door
    Lab.down(lid)
    assert not [p for p in pids if system.alive(p)]
    assert not system.pids_with_marker(lid)
    assert not lab.run_dir.exists()
    assert not [n for n in system.list_netns() if n.startswith(f"{lid}-")]
