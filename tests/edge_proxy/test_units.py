"""Pure pieces: framing rules, hop-by-hop handling, health/load/RTT books, metrics exposition, the table."""

from __future__ import annotations

import pytest

from catalog import State
from catalog.models import App, Host, Machine
from edge_proxy.errors import HttpError
from edge_proxy.health import HealthBook, RttBook
from edge_proxy.http1 import head as h
from edge_proxy.metrics import Metrics
from edge_proxy.table import RoutingTable, override_resolver


def test_request_framing() -> None:
    assert h.request_framing([(b"content-length", b"5")], b"1.1") == ("length", 5)
    assert h.request_framing([(b"content-length", b"0")], b"1.1") == ("none", 0)
    assert h.request_framing([(b"transfer-encoding", b"Chunked")], b"1.1") == ("chunked", 0)
    assert h.request_framing([], b"1.0") == ("none", 0)
    for headers, version in [
        ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], b"1.1"),
        ([(b"content-length", b"5"), (b"content-length", b"5")], b"1.1"),
        ([(b"content-length", b"5, 5")], b"1.1"),
        ([(b"content-length", b"-5")], b"1.1"),
        ([(b"transfer-encoding", b"chunked")], b"1.0"),
        ([(b"transfer-encoding", b"gzip")], b"1.1"),
        ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], b"1.1"),
    ]:
        with pytest.raises(HttpError) as info:
            h.request_framing(headers, version)
        assert info.value.status in (400, 501)


def test_response_framing() -> None:
    assert h.response_framing(200, [(b"content-length", b"3")], b"GET") == ("length", 3)
    assert h.response_framing(200, [(b"content-length", b"3")], b"HEAD") == ("none", 0)
    assert h.response_framing(204, [], b"GET") == ("none", 0)
    assert h.response_framing(304, [(b"content-length", b"3")], b"GET") == ("none", 0)
    assert h.response_framing(200, [(b"transfer-encoding", b"chunked")], b"GET") == ("chunked", 0)
    assert h.response_framing(200, [], b"GET") == ("close", 0)
    with pytest.raises(HttpError):
        h.response_framing(200, [(b"content-length", b"3"), (b"content-length", b"4")], b"GET")


def test_strip_hop_by_hop_includes_connection_named_fields() -> None:
    headers = [(b"connection", b"keep-alive, X-Secret"), (b"x-secret", b"1"), (b"keep-alive", b"5"),
               (b"te", b"trailers"), (b"upgrade", b"websocket"), (b"x-kept", b"yes")]
    assert h.strip_hop_by_hop(headers) == [(b"x-kept", b"yes")]


def test_host_name() -> None:
    assert h.host_name(b"Web.Example.com:8080") == "web.example.com"
    assert h.host_name(b"[::1]:80") == "::1"
    assert h.host_name(b"web.sixpn.test.") == "web.sixpn.test"


def test_health_book_passive_and_active() -> None:
    now = [100.0]
    book = HealthBook(passive_down=10, clock=lambda: now[0])
    assert book.healthy("m")
    book.mark_down("m")
    assert not book.healthy("m")
    now[0] += 11
    assert book.healthy("m")
    book.mark_down("m")
    book.record("m", True)  # a passing check clears the passive mark
    assert book.healthy("m")
    book.record("m", False)
    now[0] += 100
    assert not book.healthy("m")  # an active failure lasts until a check passes
    book.forget(set())
    assert book.healthy("m")


def test_rtt_book_seeds_then_measures() -> None:
    book = RttBook(lambda host: 175.0, alpha=0.5, window=3)
    assert book.rtt("w") == 175.0
    book.sample("w", 0.010)
    assert book.rtt("w") == pytest.approx(10.0)
    book.sample("w", 0.200)  # one slow connect (queueing, CPU) does not move the estimate
    assert book.rtt("w") == pytest.approx(10.0)
    for _ in range(3):  # the path really got slower: the window forgets the old minimum
        book.sample("w", 0.030)
    assert book.rtt("w") > 20.0
    frozen = RttBook(lambda host: 8.0, measure=False)
    frozen.sample("w", 1.0)
    assert frozen.rtt("w") == 8.0


def test_metrics_render_and_merge() -> None:
    a, b = Metrics(), Metrics()
    a.inc("sixpn_edge_requests_total", app="web", region="gru", status="200")
    b.inc("sixpn_edge_requests_total", region="gru", app="web", status="200")  # label order does not matter
    b.observe("sixpn_edge_request_seconds", 0.003, app="web")
    a.merge(b.snapshot())
    text = a.render()
    assert 'sixpn_edge_requests_total{app="web",region="gru",status="200"} 2' in text
    assert 'sixpn_edge_request_seconds_bucket{app="web",le="0.005"} 1' in text
    assert 'sixpn_edge_request_seconds_count{app="web"} 1' in text
    assert "# TYPE sixpn_edge_requests_total counter" in text


def test_table_from_state_and_resolvers() -> None:
    state = State()
    state.put(Host("w1", "gru", "worker", 1, "192.0.2.1"))
    state.put(App("web", "acme", "acme", {"app": "web", "hostnames": ["www.example.test"],
                                           "http_service": {"internal_port": 9000, "processes": ["app"]}}))
    state.put(Machine("00000000000001", "web", "gru", "w1", "fdaa::2", "started"))
    state.put(Machine("00000000000002", "web", "gru", "w1", "fdaa::3", "stopped"))
    state.put(Machine("00000000000003", "web", "gru", "w1", "fdaa::4", "started", process_group="worker"))
    table = RoutingTable(state, "sixpn.test")
    app = table.app_for_host_header(b"web.sixpn.test")
    assert app is not None and [m.id for m in app.machines] == ["00000000000001", "00000000000002"]
    assert app.machines[0].port == 9000 and not app.machines[1].started
    assert table.app_for_host_header(b"www.example.test:443") is app
    assert table.app_for_host_header(b"other.sixpn.test") is None
    resolve = override_resolver({"00000000000001": "127.0.0.1:81", "fdaa::3": "[::1]:82"})
    assert resolve(app.machines[0]) == ("127.0.0.1", 81)
    assert resolve(app.machines[1]) == ("::1", 82)


def test_metrics_merge_keeps_per_edge_gauges() -> None:
    a, b, total = Metrics(), Metrics(), Metrics()
    for m in (a, b):
        m.set("sixpn_edge_host_rtt_ms", 8.0, host="worker-gig")
        m.set("sixpn_edge_machine_load", 3, app="web", machine="m1", type="requests")
    total.merge(a.snapshot())
    total.merge(b.snapshot())
    text = total.render()
    assert 'sixpn_edge_host_rtt_ms{host="worker-gig"} 8' in text
    assert 'sixpn_edge_machine_load{app="web",machine="m1",type="requests"} 6' in text


def test_published_health_routes_and_replaces_the_edges_own_probes() -> None:
    from edge_proxy.health import Checker

    state = State()
    state.put(Host("w1", "gru", "worker", 1, "192.0.2.1"))
    state.put(App("web", "acme", "acme", {"app": "web", "http_service": {
        "internal_port": 9000, "checks": [{"interval": "1s", "timeout": "1s", "path": "/healthz"}]}}))
    state.put(Machine("00000000000001", "web", "gru", "w1", "fdaa::2", "started", health="passing"))
    state.put(Machine("00000000000002", "web", "gru", "w1", "fdaa::3", "started", health="critical"))
    state.put(Machine("00000000000003", "web", "gru", "w1", "fdaa::4", "started"))  # no agent reports it
    table = RoutingTable(state, "sixpn.test")
    routes = {m.id[-1]: m for m in table.machines.values()}
    assert routes["1"].started and routes["1"].reported
    assert not routes["2"].started  # a critical report takes it out of routing at every edge
    assert routes["3"].started and not routes["3"].reported
    book = HealthBook()
    book.record("00000000000001", False)  # a stale result of this edge's own, from before the agent reported
    checker = Checker(book, RttBook(lambda _host: 1.0, measure=False), override_resolver({}))
    checker.table = table
    spawned: list[object] = []

    def spawn(coro: object) -> None:
        spawned.append(coro)
        coro.close()  # type: ignore[attr-defined]

    checker._spawn = spawn  # type: ignore[method-assign]
    checker.step(100.0)
    assert len(spawned) == 1  # only the unreported machine is probed by this edge
    assert book.healthy("00000000000001")  # the agent's report wins over the stale probe
    book.mark_down("00000000000001")
    checker.step(101.0)
    assert not book.healthy("00000000000001")  # passive marks still apply
