"""Machine health (active checks from the app's config + passive marking), load counters and RTT estimates.

`HealthBook`, `LoadBook` and `RttBook` are plain state with an injectable clock; `Checker` is the asyncio
adapter that runs the checks and the RTT probes against the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from catalog.appconfig import HttpCheck, TcpCheck
from edge_proxy.table import Resolver, RoutingTable

log = logging.getLogger("edge_proxy.health")
Clock = Callable[[], float]


class HealthBook:
    """Active results win; a passive mark (connect failure) takes a machine out for `passive_down` seconds
    or until an active check passes again."""

    def __init__(self, passive_down: float = 10.0, clock: Clock = time.monotonic) -> None:
        self.passive_down = passive_down
        self.clock = clock
        self.active: dict[str, bool] = {}
        self.down_until: dict[str, float] = {}

    def healthy(self, machine_id: str) -> bool:
        if self.active.get(machine_id) is False:
            return False
        until = self.down_until.get(machine_id)
        return until is None or until <= self.clock()

    def mark_down(self, machine_id: str) -> None:
        self.down_until[machine_id] = self.clock() + self.passive_down

    def record(self, machine_id: str, passing: bool) -> None:
        before = self.active.get(machine_id)
        self.active[machine_id] = passing
        if passing:
            self.down_until.pop(machine_id, None)
        if before != passing:
            log.info("machine %s %s its checks", machine_id, "passes" if passing else "fails")

    def forget(self, keep: set[str]) -> None:
        for book in (self.active, self.down_until):
            for key in [k for k in book if k not in keep]:
                del book[key]


class LoadBook:
    """In-flight requests and routed client connections per machine, counted by the proxy itself."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.connections: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    def load(self, machine_id: str, kind: str) -> int:
        book = self.requests if kind == "requests" else self.connections
        return book.get(machine_id, 0)

    def add(self, book: dict[str, int], machine_id: str, delta: int) -> None:
        value = book.get(machine_id, 0) + delta
        if value > 0:
            book[machine_id] = value
        else:
            book.pop(machine_id, None)
        if delta < 0 and self._waiters:
            self._wake()

    async def wait_for_capacity(self, timeout: float) -> bool:
        """Wait until some load goes down (or `timeout`); False on timeout."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        return True

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class RttBook:
    """RTT from this edge to each worker host, from measured TCP connect times, seeded by the region matrix.

    The estimate is the EWMA (weight `alpha`) of a windowed minimum (the last `window` samples): the minimum
    tracks the path's propagation delay the way BBR's min-RTT filter does, so a burst of queueing or CPU delay
    on one connect does not move a host between routing tiers; the EWMA smooths the window sliding.
    """

    def __init__(self, seed: Callable[[str], float], alpha: float = 0.5, measure: bool = True,
                 window: int = 8) -> None:
        self.seed = seed
        self.alpha = alpha
        self.measure = measure
        self.window = window
        self.ms: dict[str, float] = {}
        self.samples: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def rtt(self, host: str) -> float:
        if host not in self.ms:
            self.ms[host] = self.seed(host)
        return self.ms[host]

    def sample(self, host: str, seconds: float) -> None:
        if not self.measure:
            return
        recent = self._recent.setdefault(host, deque(maxlen=self.window))
        recent.append(seconds * 1000.0)
        floor = min(recent)
        self.samples[host] = self.samples.get(host, 0) + 1
        if self.samples[host] == 1:
            self.ms[host] = floor
        else:
            self.ms[host] = (1 - self.alpha) * self.rtt(host) + self.alpha * floor


@dataclass
class _Due:
    next_at: float
    running: bool = False


class Checker:
    """Runs the HTTP/TCP checks of every machine that no host agent reports on, at their interval, and a TCP
    RTT probe per host."""

    def __init__(self, health: HealthBook, rtt: RttBook, resolve: Resolver, rtt_interval: float = 2.0) -> None:
        self.health = health
        self.rtt = rtt
        self.resolve = resolve
        self.rtt_interval = rtt_interval
        self.table: RoutingTable | None = None
        self._due: dict[tuple[str, int], _Due] = {}
        self._first_seen: dict[str, float] = {}
        self._results: dict[str, dict[int, bool]] = {}
        self._probe_due: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, tick: float = 0.25) -> None:
        try:
            while True:
                self.step(time.monotonic())
                await asyncio.sleep(tick)
        finally:
            for task in list(self._tasks):
                task.cancel()

    def step(self, now: float) -> None:
        table = self.table
        if table is None:
            return
        live: set[str] = set()
        reported: set[str] = set()
        for app in table.apps.values():
            service = app.service
            checks: list[HttpCheck | TcpCheck] = [*service.http_checks, *service.tcp_checks] if service else []
            for machine in app.machines:
                if not machine.started:
                    continue
                live.add(machine.id)
                if machine.reported:
                    # Its host's agent runs the app's checks and publishes the result (fleet.md): N edges do
                    # not each probe M machines; a critical report already took it out of the table. Only
                    # the passive marks of this edge's own failed connections still apply.
                    reported.add(machine.id)
                    continue
                self._first_seen.setdefault(machine.id, now)
                for index, check in enumerate(checks):
                    due = self._due.setdefault((machine.id, index), _Due(now))
                    if not due.running and due.next_at <= now:
                        due.running = True
                        due.next_at = now + check.interval
                        self._spawn(self._check(machine.id, machine.host, index, check, due))
        self.health.forget(live)
        for machine_id in reported:
            self.health.active.pop(machine_id, None)
        for key in [k for k in self._due if k[0] not in live or k[0] in reported]:
            del self._due[key]
        if self.rtt.measure:
            self._probe_hosts(table, now)

    def _probe_hosts(self, table: RoutingTable, now: float) -> None:
        seen: set[str] = set()
        for app in table.apps.values():
            for machine in app.machines:
                if not machine.started or machine.host in seen:
                    continue
                seen.add(machine.host)
                if self._probe_due.get(machine.host, 0.0) <= now:
                    self._probe_due[machine.host] = now + self.rtt_interval
                    self._spawn(self._probe(machine.host, self.resolve(machine)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, host: str, target: tuple[str, int],
                       timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(target[0], target[1])
        self.rtt.sample(host, time.monotonic() - started)
        return reader, writer

    async def _probe(self, host: str, target: tuple[str, int]) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            _, writer = await self._connect(host, target, 2.0)
            writer.close()

    async def _check(self, machine_id: str, host: str, index: int, check: HttpCheck | TcpCheck, due: _Due) -> None:
        try:
            machine = self.table.machine(machine_id) if self.table else None
            if machine is None:
                return
            target = self.resolve(machine)
            try:
                async with asyncio.timeout(check.timeout):
                    passing = await self._run_check(host, target, check)
            except (OSError, TimeoutError):
                passing = False
            in_grace = time.monotonic() - self._first_seen.get(machine_id, 0.0) < check.grace_period
            if not passing and in_grace:
                return
            results = self._results.setdefault(machine_id, {})
            results[index] = passing
            self.health.record(machine_id, all(results.values()))
        finally:
            due.running = False

    async def _run_check(self, host: str, target: tuple[str, int], check: HttpCheck | TcpCheck) -> bool:
        reader, writer = await self._connect(host, target, check.timeout)
        try:
            if isinstance(check, TcpCheck):
                return True
            host = f"[{target[0]}]" if ":" in target[0] else target[0]  # RFC 3986 §3.2.2 IP-literal
            lines = [f"{check.method} {check.path} HTTP/1.1", f"Host: {host}:{target[1]}", "Connection: close",
                     "User-Agent: sixpn-edge-check", *(f"{k}: {v}" for k, v in check.headers)]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            status_line = await reader.readline()
            parts = status_line.split()
            # Checks pass on 2xx only; redirects fail (spec).
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and len(parts[1]) == 3 and parts[1][:1] == b"2"
        finally:
            writer.close()
