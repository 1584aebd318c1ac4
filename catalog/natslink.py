"""The replicated catalog's link to NATS JetStream: connect, create the stream, publish with
compare-and-set, read the stream from a sequence. `AsyncLink` for asyncio code (the replicator);
`SyncLink` runs one on a private event loop thread for the synchronous `Catalog` API (the CLI, the lab).

Every failure becomes a `ClusterUnavailable` or `WriteConflict` with a message fit for a user; nothing here
logs a credential."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.client import JetStreamContext

from catalog.errors import ClusterUnavailable, WriteConflict
from catalog.fleetconfig import CatalogConfig
from catalog.replica import SUBJECTS, Message

T = TypeVar("T")
CONNECT_TIMEOUT = 2.0
OP_TIMEOUT = 5.0
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a failed Nats-Expected-Last-*-Sequence
STREAM_NOT_FOUND = 10059


async def _quiet(_exc: Exception) -> None:
    return None  # nats-py reports every reconnect attempt; the caller turns failures into one clear error


class AsyncLink:
    def __init__(self, config: CatalogConfig, name: str = "sixpn", reconnect: bool = False) -> None:
        self.config = config
        self.name = name
        self.reconnect = reconnect
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None

    def __repr__(self) -> str:
        state = "connected" if self.nc is not None and self.nc.is_connected else "not connected"
        return f"AsyncLink({self.config.stream}, {len(self.config.nats)} servers, {state})"

    async def connect(self, **callbacks: Callable[..., Awaitable[None]]) -> JetStreamContext:
        if self.js is not None:
            return self.js
        creds = self.config.load_credentials()
        options: dict[str, Any] = {
            "servers": list(self.config.nats), "name": self.name, "connect_timeout": CONNECT_TIMEOUT,
            "allow_reconnect": True, "max_reconnect_attempts": -1 if self.reconnect else 1,
            "reconnect_time_wait": 0.25, "error_cb": _quiet, **callbacks,
        }
        if creds is not None:
            options.update(user=creds.user, password=creds.password)
        budget = CONNECT_TIMEOUT * (len(self.config.nats) + 1)
        try:
            self.nc = await asyncio.wait_for(nats.connect(**options), timeout=budget)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise ClusterUnavailable(
                f"cannot reach the catalog's NATS cluster ({', '.join(self.config.nats)}): {_describe(exc)}"
            ) from None
        self.js = self.nc.jetstream(timeout=OP_TIMEOUT)
        return self.js

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.nc = self.js = None

    async def ensure_stream(self, replicas: int = 1) -> None:
        js = await self.connect()
        config = api.StreamConfig(
            name=self.config.stream, subjects=[SUBJECTS], retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE, num_replicas=replicas, duplicate_window=120.0,
            discard=api.DiscardPolicy.NEW, allow_direct=True,
        )
        try:
            await js.stream_info(self.config.stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterUnavailable(f"catalog stream {self.config.stream}: {_describe(exc)}") from None
        try:
            await js.add_stream(config)
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterUnavailable(f"cannot create catalog stream {self.config.stream}: {_describe(exc)}") from None

    async def last_seq(self) -> int:
        js = await self.connect()
        try:
            info = await js.stream_info(self.config.stream)
        except nats.js.errors.NotFoundError:
            raise ClusterUnavailable(f"the catalog stream {self.config.stream} does not exist yet "
                                     "(`sixpn catalog init` creates it)") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterUnavailable(f"catalog stream {self.config.stream}: {_describe(exc)}") from None
        return int(info.state.last_seq)

    async def fetch(self, after: int, upto: int) -> list[Message]:
        """Every message with sequence in (after, upto], in order, over one ordered consumer."""
        if upto <= after:
            return []
        js = await self.connect()
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        out: list[Message] = []
        try:
            sub = await js.subscribe(SUBJECTS, stream=self.config.stream, ordered_consumer=True, config=config)
            try:
                while not out or out[-1].seq < upto:
                    msg = await sub.next_msg(timeout=OP_TIMEOUT)
                    out.append(Message(msg.metadata.sequence.stream, msg.subject, msg.data))
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterUnavailable(f"reading the catalog stream: {_describe(exc)}") from None
        return [m for m in out if m.seq <= upto]

    async def publish(self, subject: str, body: bytes, expect_subject_seq: int | None = None,
                      msg_id: str | None = None) -> int:
        js = await self.connect()
        headers: dict[str, str] = {}
        if expect_subject_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expect_subject_seq)
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        try:
            ack = await js.publish(subject, body, stream=self.config.stream, headers=headers or None)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise WriteConflict("another write was published first") from None
            raise ClusterUnavailable(f"the catalog cluster refused the write: {_describe(exc)}") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClusterUnavailable(
                f"the catalog cluster did not confirm the write ({_describe(exc)}; no quorum reachable?)"
            ) from None
        return int(ack.seq)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | nats.errors.TimeoutError):
        return "timed out"
    if isinstance(exc, nats.js.errors.APIError):
        return exc.description or f"error {exc.err_code}"
    if isinstance(exc, nats.errors.NoServersError):
        return "no server answered"
    text = str(exc).strip() or type(exc).__name__
    return text.removeprefix("nats: ")


class SyncLink:
    """An `AsyncLink` driven from synchronous code, on an event loop in a daemon thread of its own."""

    def __init__(self, config: CatalogConfig, name: str = "sixpn") -> None:
        self.link = AsyncLink(config, name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SyncLink({self.link!r})"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="sixpn-nats", daemon=True)
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def ensure_stream(self, replicas: int = 1) -> None:
        self._run(self.link.ensure_stream(replicas))

    def last_seq(self) -> int:
        return self._run(self.link.last_seq())

    def fetch(self, after: int, upto: int) -> list[Message]:
        return self._run(self.link.fetch(after, upto))

    def publish(self, subject: str, body: bytes, expect_subject_seq: int | None = None,
                msg_id: str | None = None) -> int:
        return self._run(self.link.publish(subject, body, expect_subject_seq, msg_id))

    def close(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._run(self.link.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._loop.close()
        self._loop = None
