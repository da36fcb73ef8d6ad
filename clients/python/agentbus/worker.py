"""Working a job's items from Python, through the server's job scripts.

A :class:`Worker` claims items (``job_claim``, which refuses a job that is
not running and never puts more than the job's ``parallelism`` in flight;
when nothing is new it blocks in ``XREAD`` on the job's items stream, and
at the parallelism it pauses), runs the handler on each, and completes the batch in one
``job_complete`` call (each item charged exactly once; a second completion
is a duplicate and costs nothing) or reports a failure (``job_fail``:
retried while attempts remain). It first re-walks its own pending entries,
and again whenever Redis answers after an outage (which it rides out for
up to ``reconnect_for_s``), so after a crash or a lost connection nothing
it held waits for the reclaimer; handlers are run at least once, items are
charged exactly once. It stops when the job is no longer running (completed,
cancelled, failed) or on :meth:`Worker.stop`.

Given the :class:`~agentbus.agents.Agent` it runs as, the worker keeps that
instance alive in the registry while it works (a heartbeat every
``heartbeat_s``, well inside the server's 60 s staleness) and marks it
``idle`` when it stops. A heartbeat does not extend an item's time: an item
held past the job's ``timeout_per_item`` is redelivered, as the job asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .client import Client, decode, encode

if TYPE_CHECKING:
    from .agents import Agent


@dataclass
class Item:
    item_id: str
    index: int
    input: Any
    attempt: int = 0
    #: Why the stored input is not MessagePack: such an item fails for good
    #: without reaching the handler (as the Rust worker does).
    undecodable: str | None = None


class Fail(Exception):
    """Raised by a handler to fail its item; ``retry=False`` ends it for good."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


@dataclass
class Tally:
    completed: int = 0
    duplicates: int = 0
    stale: int = 0
    retried: int = 0
    failed: int = 0
    heartbeats: int = 0
    #: Calls that met Redis unreachable, and entries finished by a re-walk.
    reconnects: int = 0
    rewalked: int = 0
    durations_ms: list[int] = field(default_factory=list)


Handler = Callable[[Item], Awaitable[Any]]

#: What a lost or refused connection raises.
_LOST = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


def _item(entry_id: Any, fields: dict[bytes, bytes]) -> Item:
    def get(name: str) -> bytes | None:
        return fields.get(name.encode())

    item_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    index, attempt = get("idx"), get("attempt")
    try:
        value, why = decode(get("input")), None
    except Exception as e:  # another writer's bytes: this item alone fails
        value, why = None, f"undecodable input: {e}"[:1024]
    return Item(
        item_id=item_id,
        index=int(index) if index and index.isdigit() else -1,
        input=value,
        attempt=int(attempt) if attempt and attempt.isdigit() else 0,
        undecodable=why,
    )


def _pairs(flat: list[Any]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _printable(text: str) -> str:
    """Error text as the ledger's mirror holds it: control characters other
    than tab and newlines are replaced (the server refuses them in text it
    mirrors)."""
    return "".join(c if c in "\t\n\r" or ord(c) >= 32 and c != "\x7f" else "\ufffd" for c in text)


class Worker:
    """Works ``job_id`` as ``instance_id``: ``concurrency`` loops, each
    claiming up to ``batch`` items, running ``handler`` on them together and
    completing them in one call."""

    def __init__(
        self,
        client: Client,
        job_id: str,
        instance_id: str,
        handler: Handler,
        *,
        concurrency: int = 4,
        batch: int = 32,
        block_ms: int = 1000,
        agent: "Agent | None" = None,
        heartbeat_s: float = 10.0,
        reconnect_for_s: float = 60.0,
    ) -> None:
        if not 1 <= batch <= 100:
            raise ValueError("batch: 1 to 100 items per claim (as the server allows)")
        self.client, self.job_id, self.instance_id = client, job_id, instance_id
        self.handler, self.concurrency, self.batch = handler, max(1, concurrency), batch
        self.block_ms = block_ms
        self.agent, self.heartbeat_s = agent, heartbeat_s
        self.reconnect_for_s = reconnect_for_s
        self._rewalking = asyncio.Lock()
        self._needs_rewalk = False
        self._in_flight: set[str] = set()
        self._full_pause = 0.01
        self.tally = Tally()
        self._stopping = asyncio.Event()
        self._ended = False

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> Tally:
        beating = asyncio.create_task(self._heartbeats()) if self.agent else None
        try:
            await self._rewalk_own_pending()
            await asyncio.gather(*(self._loop() for _ in range(self.concurrency)))
        finally:
            if beating is not None:
                beating.cancel()
                await asyncio.gather(beating, return_exceptions=True)
                with contextlib.suppress(*_LOST):
                    await self.agent.heartbeat("idle")  # type: ignore[union-attr]
        return self.tally

    async def _heartbeats(self) -> None:
        assert self.agent is not None
        while True:
            with contextlib.suppress(*_LOST):  # an outage is the loops' to report
                await self.agent.heartbeat("running")
                self.tally.heartbeats += 1
            await asyncio.sleep(self.heartbeat_s)

    async def _rewalk_own_pending(self) -> None:
        """Entries delivered to this instance and never completed (a crash,
        a lost connection): finished now rather than after their timeout.
        Entries a loop of this worker holds right now are left to it."""
        async with self._rewalking:
            self._needs_rewalk = False
            after = "0"
            while not self._ended:
                try:
                    read = await self.client.redis.xreadgroup(
                        "workers",
                        self.instance_id,
                        {self.client.keys.job_items(self.job_id): after},
                        count=self.batch,
                    )
                except ResponseError as e:
                    if "NOGROUP" in str(e):
                        self._ended = True
                        return
                    raise
                entries = [(i, f) for _, batch in read or [] for i, f in batch]
                if not entries:
                    return
                after = entries[-1][0]
                items = [_item(i, f) for i, f in entries if f]
                items = [i for i in items if i.item_id not in self._in_flight]
                if items:
                    self.tally.rewalked += len(items)
                    await self._work(items)

    async def _loop(self) -> None:
        outage_since: float | None = None
        delay = 0.05
        while not self._stopping.is_set() and not self._ended:
            try:
                if self._needs_rewalk:
                    await self._rewalk_own_pending()
                items = await self._claim()
                outage_since, delay = None, 0.05
                if items is None:
                    self._ended = True
                    return
                if items:
                    await self._work(items)
            except _LOST:
                # Redis went away: what this worker held stays pending under
                # its name; once Redis answers again it is re-walked (and
                # charged once: a completion that did land is a duplicate).
                now = asyncio.get_running_loop().time()
                outage_since = outage_since or now
                if now - outage_since > self.reconnect_for_s:
                    raise
                self.tally.reconnects += 1
                self._needs_rewalk = True
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)

    async def _claim(self) -> list[Item] | None:
        """Up to `batch` items; None when the job no longer runs."""
        k = self.client.keys
        answer = await self.client.scripts.job_claim(
            self.client.redis,
            [("job", k.job(self.job_id)), ("items", k.job_items(self.job_id))],
            [("consumer", self.instance_id), ("count", self.batch)],
        )
        if answer.tag == "full":
            # The job's `parallelism` items are in flight: claim again shortly.
            await asyncio.sleep(self._full_pause)
            self._full_pause = min(self._full_pause * 2, 0.2)
            return []
        self._full_pause = 0.01
        if answer.tag == "empty":
            # Nothing new: wait for an entry after the last one delivered
            # (XREAD delivers nothing; the next claim does, within parallelism).
            await self.client.redis.xread(
                {self.client.keys.job_items(self.job_id): answer["after"]}, count=1, block=self.block_ms
            )
            return []
        if answer.tag != "ok":
            return None
        return [_item(entry[0], _pairs(entry[1])) for entry in answer["entries"]]

    async def _work(self, items: list[Item]) -> None:
        ids = {i.item_id for i in items}
        self._in_flight |= ids
        try:
            await self._work_held(items)
        finally:
            self._in_flight -= ids

    async def _work_held(self, items: list[Item]) -> None:
        for item in items:
            if item.undecodable:
                await self._fail(item, Fail(item.undecodable, retry=False))
        items = [i for i in items if not i.undecodable]
        results = await asyncio.gather(
            *(self.handler(i) for i in items), return_exceptions=True
        )
        done: list[tuple[Item, Any]] = []
        for item, result in zip(items, results):
            if isinstance(result, BaseException):
                await self._fail(item, result)
            else:
                done.append((item, result))
        if done:
            await self._complete(done)

    async def _complete(self, done: list[tuple[Item, Any]]) -> None:
        keys, args = self.client.job_layout(self.job_id)
        k = self.client.keys
        args += [
            ("bb_root", k.blackboard_root()),
            ("bb_namespaces", k.blackboard_namespaces()),
            ("bb_names", k.blackboard_names()),
        ]
        for item, output in done:
            args += [("entry", item.item_id), ("output", encode(output))]
        answer = await self.client.scripts.job_complete(self.client.redis, keys, args)
        if answer.tag != "ok":
            self._ended = True
            return
        for outcome in answer["outcomes"]:
            if outcome == "completed":
                self.tally.completed += 1
            elif outcome == "duplicate":
                self.tally.duplicates += 1
            else:
                self.tally.stale += 1
        self.tally.durations_ms += answer["durations"]
        if answer["ended"] > 0:
            self._ended = True

    async def _fail(self, item: Item, error: BaseException) -> None:
        retry = error.retry if isinstance(error, Fail) else True
        keys, args = self.client.job_layout(self.job_id)
        args += [
            ("entry", item.item_id),
            ("error", _printable(str(error) or type(error).__name__)[:4096]),
            ("retry", "1" if retry else "0"),
        ]
        answer = await self.client.scripts.job_fail(self.client.redis, keys, args)
        if answer.tag == "retried":
            self.tally.retried += 1
        elif answer.tag == "failed":
            self.tally.failed += 1
            if answer["ended"] > 0:
                self._ended = True
        elif answer.tag in ("missing", "not_running"):
            self._ended = True
