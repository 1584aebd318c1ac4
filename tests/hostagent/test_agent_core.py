"""The agent's bookkeeping without I/O: which changes of the catalog become start requests, what it reports
(only what changed), and its repr. The actions themselves are recorded, not done. On both catalogs: the
embedded one and the replicated one (a replica of a stream on a nats-server started for the test), since the
agent only uses the `Catalog` API and `Follower`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog
from catalog.replicated import ReplicatedCatalog
from hostagent.agent import Agent, Options, Slot, machine_uid
from hostagent.plan import Action, Start
from tests.catalog.conftest import host_config
from tests.natsserver import nats_server


@pytest.fixture(params=["embedded", "replicated"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "embedded":
        with Catalog(tmp_path / "state") as cat:
            yield cat
        return
    with nats_server(tmp_path / "nats") as server:
        replica = ReplicatedCatalog(host_config(server, tmp_path / "state", name="w1", role="worker"),
                                    fresh_reads=True)
        replica.init_stream(1)
        try:
            yield replica
        finally:
            replica.link.close()


@pytest.fixture
def world(catalog: Catalog, tmp_path: Path) -> tuple[Catalog, Agent, list[Action]]:
    cat = catalog
    cat.register_host("w1", "gru", "worker", "192.0.2.10")
    cat.register_host("w2", "gru", "worker", "192.0.2.11")
    cat.create_org("acme")
    cat.create_app("web", "acme", config={"http_service": {"internal_port": 8080}})
    agent = Agent(cat, Options(host="w1", run_dir=tmp_path / "run"))
    done: list[Action] = []

    def act(action: Action, mine: dict[str, Any]) -> None:
        done.append(action)
        agent.slots.setdefault(action.machine_id, Slot(action.machine_id)).phase = (
            "running" if isinstance(action, Start) else "down")

    agent.act = act  # type: ignore[method-assign]
    return cat, agent, done


def poll(agent: Agent) -> None:
    changes = agent.follower.poll()
    agent.on_changes(agent.state, changes)


def test_only_this_hosts_machines_and_a_start_request_after_a_stop(world: tuple[Catalog, Agent, list[Action]]) -> None:
    cat, agent, done = world
    mine = cat.create_machine("web", "w1")
    cat.create_machine("web", "w2")  # another host's: not this agent's business
    poll(agent)
    assert done == [Start(mine.id)]
    agent.slots[mine.id].phase = "down"  # left down by its restart policy, desired still started
    cat.set_machine_desired(mine.id, "started")  # a write that is not a transition: no start
    poll(agent)
    assert done == [Start(mine.id)]
    cat.set_machine_desired(mine.id, "stopped")
    cat.set_machine_desired(mine.id, "started")  # both seen in one batch: still a request
    poll(agent)
    assert done == [Start(mine.id), Start(mine.id)]
    assert agent.start_requests == {mine.id}  # the recorded action did not consume it; a real start does


def test_reports_only_what_changed(world: tuple[Catalog, Agent, list[Action]]) -> None:
    cat, agent, _ = world
    m = cat.create_machine("web", "w1")
    poll(agent)
    before = cat.version()
    agent.report(m.id, state="started", restarts=0, health="")  # restarts 0 and health "" are already so
    assert cat.version() == before + 1
    assert (cat.machine(m.id).state, cat.machine(m.id).obs_gen > 0) == ("started", True)
    agent.report(m.id, state="started")  # the follower has not seen it yet: still no second write
    assert cat.version() == before + 1
    agent.report(m.id, health="passing")
    assert cat.version() == before + 2 and cat.machine(m.id).health == "passing"


def test_repr_and_uids(world: tuple[Catalog, Agent, list[Action]]) -> None:
    cat, agent, _ = world
    a = cat.create_machine("web", "w1")
    b = cat.create_machine("web", "w2")
    poll(agent)
    assert repr(agent) == f"<Agent w1 v{agent.state.version}: 1 running>"
    assert repr(agent.slots[a.id]) == f"<Slot {a.id} running restarts 0>"
    assert machine_uid(a) != machine_uid(b) and min(machine_uid(a), machine_uid(b)) >= 100_000


def test_the_port_waited_for_is_the_process_groups_service() -> None:
    from catalog import App
    from hostagent.agent import internal_port

    def app(config: dict[str, Any]) -> App:
        return App("a", "acme", "acme", config)

    assert internal_port(app({}), "app") == 8080  # the sample app
    assert internal_port(app({"processes": {"app": "sleep 1000"}}), "app") is None  # nothing to listen on
    both = {"processes": {"app": "serve", "worker": "work"},
            "http_service": {"internal_port": 3000, "processes": ["app"]}}
    assert internal_port(app(both), "app") == 3000
    assert internal_port(app(both), "worker") is None
