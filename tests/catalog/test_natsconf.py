"""The NATS cluster's configs and permissions: rendering (pure), and the permissions enforced for real by a
three-server cluster on loopback (`tests/natscluster.py`)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import nats
import pytest

from catalog import ConfigError, default_regions, natsconf
from catalog.fleetconfig import DEFAULT_STREAM
from tests.natscluster import TEST_COST, nats_cluster, nats_server_binary

SERVERS = (natsconf.NatsServer("worker-gru", "gru", "198.51.100.3"),
           natsconf.NatsServer("worker-gig", "gig", "198.51.100.35"),
           natsconf.NatsServer("worker-sjc", "sjc", "198.51.100.67"))
CLUSTER = natsconf.Cluster(SERVERS)


def _users() -> dict[str, natsconf.NatsUser]:
    users = [natsconf.user_for("admin", "a-secret", cost=TEST_COST),
             natsconf.user_for("route", "r-secret", cost=TEST_COST),
             natsconf.user_for("host", "h-secret", "edge-gru", cost=TEST_COST)]
    return {u.user: u for u in users}


# -- pure ------------------------------------------------------------------------------------------------


def test_bcrypt_hash_is_checked_and_salted() -> None:
    one, two = natsconf.bcrypt_hash("pw", TEST_COST), natsconf.bcrypt_hash("pw", TEST_COST)
    assert one.startswith("$2a$04$") and one != two
    assert natsconf.bcrypt_check("pw", one) and not natsconf.bcrypt_check("px", one)


def test_server_conf_holds_hashes_routes_and_permissions() -> None:
    conf = natsconf.render_server_conf(CLUSTER, "worker-gig", "/var/lib/sixpn/nats", _users(), "r-secret")
    assert 'server_name: "worker-gig"' in conf
    assert 'listen: "198.51.100.35:4222"' in conf
    # It dials the servers before it (and itself, which nats-server skips): one dialer per pair.
    assert ('routes: ["nats-route://route:r-secret@198.51.100.3:6222", '
            '"nats-route://route:r-secret@198.51.100.35:6222"]') in conf
    first = natsconf.render_server_conf(CLUSTER, "worker-gru", "/s", _users(), "r-secret")
    assert "@198.51.100.3:6222" in first and "@198.51.100.35" not in first and "@198.51.100.67" not in first
    assert "a-secret" not in conf and "h-secret" not in conf  # only bcrypt hashes of user passwords
    assert 'user: "host-edge-gru"' in conf and '"sixpn.cat.host.edge-gru"' in conf
    assert 'store_dir: "/var/lib/sixpn/nats"' in conf


def test_nats_server_accepts_the_rendered_config(tmp_path: Path) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(natsconf.render_server_conf(CLUSTER, "worker-gru", tmp_path / "js", _users(), "r-secret"))
    out = subprocess.run([str(nats_server_binary()), "-t", "-c", str(conf)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout


def test_a_protected_cluster_needs_the_route_password() -> None:
    with pytest.raises(ConfigError, match="route credentials"):
        natsconf.render_server_conf(CLUSTER, "worker-gru", "/s", _users(), None)


def test_host_permissions_allow_only_its_own_subject_to_be_written() -> None:
    perms = natsconf.host_permissions("worker-gru")
    allow = perms["publish"]["allow"]
    assert "sixpn.cat.host.worker-gru" in allow
    assert not [s for s in allow if s.startswith("sixpn.cat.") and s != "sixpn.cat.host.worker-gru"]
    assert natsconf.GLOBAL_SUBJECT in perms["publish"]["deny"]
    assert not [s for s in allow if ".STREAM.DELETE" in s or ".PURGE" in s or ".STREAM.CREATE" in s]
    with pytest.raises(ConfigError):
        natsconf.host_permissions("worker.gru")  # a dot would be a subject wildcard's boundary


def test_users_table_round_trips() -> None:
    users = _users()
    assert natsconf.parse_users(natsconf.render_users(users)) == users
    with pytest.raises(ConfigError, match="host-<host>"):
        natsconf.parse_users('[users."host-a"]\nrole = "host"\nhash = "$2a$04$x"\nhost = "b"\n')


def test_client_urls_put_the_own_region_first_then_the_nearest() -> None:
    assert CLUSTER.client_urls("sjc", default_regions()) == [
        "nats://198.51.100.67:4222", "nats://198.51.100.3:4222", "nats://198.51.100.35:4222"]
    assert CLUSTER.client_urls("gig", default_regions())[:2] == ["nats://198.51.100.35:4222",
                                                                  "nats://198.51.100.3:4222"]


# -- enforced by a real cluster -------------------------------------------------------------------------


async def _permissions(cluster: object) -> None:
    from tests.natscluster import TestCluster

    assert isinstance(cluster, TestCluster)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    admin = await cluster.connect("admin")
    host_a = await cluster.connect("host-a", error_cb=on_error)
    try:
        js_a = host_a.jetstream(timeout=2)
        ack = await js_a.publish("sixpn.cat.host.a", b"a's machine")
        assert ack.stream == DEFAULT_STREAM

        for subject in ("sixpn.cat.host.b", natsconf.GLOBAL_SUBJECT):
            with pytest.raises(nats.errors.TimeoutError):
                await host_a.jetstream(timeout=0.5).publish(subject, b"forged")
        await asyncio.sleep(0.1)
        assert sum("permissions violation" in e.lower() for e in errors) >= 2, errors
        with pytest.raises(Exception):  # noqa: B017 - refused: timeout or a JetStream API error
            await host_a.jetstream(timeout=0.5).delete_stream(DEFAULT_STREAM)
        with pytest.raises(Exception):  # noqa: B017
            await host_a.jetstream(timeout=0.5).purge_stream(DEFAULT_STREAM)

        await admin.jetstream(timeout=2).publish(natsconf.GLOBAL_SUBJECT, b"global row")
        info = await admin.jetstream(timeout=2).stream_info(DEFAULT_STREAM)
        assert info.state.messages == 2  # only the host's own and the operator's writes reached the stream

        # The host reads the whole stream with an ordered consumer.
        sub = await js_a.subscribe("sixpn.cat.>", ordered_consumer=True, stream=DEFAULT_STREAM)
        got = [(await sub.next_msg(timeout=3)).data for _ in range(2)]
        assert got == [b"a's machine", b"global row"]
        await sub.unsubscribe()
    finally:
        await host_a.close()
        await admin.close()

    with pytest.raises(Exception, match=r"(?i)authorization"):
        await cluster.connect(None)  # a machine or a laptop: no credentials, no connection


def test_a_host_writes_only_its_own_subject_and_reads_the_stream(tmp_path: Path) -> None:
    with nats_cluster(tmp_path, hosts=["a", "b"]) as cluster:
        asyncio.run(_permissions(cluster))
