"""Agents from Python: registration, an inbox, invocations both ways.

Everything goes through the server's scripts (``agent_register``,
``inbox_redeliver``, ``inbox_poison``, ``invoke_start``, ``invoke_respond``,
``invoke_expire``), so a Python agent is charged, audited and dead-lettered
exactly as a Rust one is.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import msgpack
from redis.exceptions import ResponseError

from .client import Client, encode, event_base
from .errors import AgentbusError, Conflict, InsufficientCredits, InvokeRefused, NotFound, credits
from .keys import REAP, due_key, tenants_key

GROUP = "inbox"


@dataclass
class Message:
    entry_id: str
    id: str
    sender: str
    type: str
    job: str | None
    reply_to: str | None
    payload: Any
    invoke_id: str | None = None
    deadline_ms: int | None = None


def _id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _text(fields: dict[bytes, bytes], name: str) -> str | None:
    v = fields.get(name.encode())
    return v.decode() if v else None


class Undecodable(Exception):
    pass


def _message(entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
    raw = fields.get(b"payload")
    try:
        payload = msgpack.unpackb(raw, raw=False) if raw else None
    except Exception as e:  # any malformed MessagePack
        raise Undecodable(f"undecodable payload: {e}"[:1024]) from None
    deadline = _text(fields, "deadline")
    return Message(
        entry_id=entry_id.decode(),
        id=_text(fields, "id") or "",
        sender=_text(fields, "from") or "",
        type=_text(fields, "type") or "",
        job=_text(fields, "job"),
        reply_to=_text(fields, "reply_to"),
        payload=payload,
        invoke_id=_text(fields, "invoke_id"),
        deadline_ms=int(deadline) if deadline else None,
    )


class Agent:
    """One registered instance of an agent (``agent_id`` is its type)."""

    def __init__(self, client: Client, instance_id: str, agent_id: str, job_id: str | None = None):
        self.client, self.instance_id, self.agent_id, self.job_id = client, instance_id, agent_id, job_id

    def _index_args(self) -> list[tuple[str, Any]]:
        k = self.client.keys
        return [
            ("by_type", k.agents_of_type_prefix()),
            ("by_job", k.agents_of_job_prefix()),
            ("by_status", k.agents_with_status_prefix()),
        ]

    def _stale_at(self) -> list[tuple[str, str, int]]:
        """The reaper's deadline: when this instance turns stale if silent."""
        c = self.client
        at = int(time.time() * 1000) + c.settings.stale_after_secs * 1000 + 1
        return [(due_key(c.keys.prefix, REAP, c.tenant), c.tenant, at)]

    async def register(self, capabilities: Any = ()) -> None:
        k = self.client.keys
        await self.client.redis.sadd(tenants_key(k.prefix, self.client.tenant), self.client.tenant)
        answer = await self.client.scripts.agent_register(
            self.client.redis,
            [
                ("agents", k.agents()),
                ("agent", k.agent(self.instance_id)),
                ("inbox", k.inbox(self.instance_id)),
                ("read_early", k.inbox_read_early(self.instance_id)),
            ],
            [
                ("instance", self.instance_id),
                ("agent", self.agent_id),
                ("job", self.job_id or ""),
                ("capabilities", json.dumps(list(capabilities))),
                ("status", "running"),
                ("most_instances", self.client.settings.max_instances),
            ]
            + self._index_args(),
            self._stale_at(),
        )
        if answer.tag == "limit":
            raise Conflict(f"the tenant has {answer['registered']} instances registered")

    async def heartbeat(self, status: str | None = None) -> str:
        k = self.client.keys
        answer = await self.client.scripts.agent_heartbeat(
            self.client.redis,
            [("agents", k.agents()), ("agent", k.agent(self.instance_id))],
            [("instance", self.instance_id), ("status", status or "")] + self._index_args(),
            # A stale instance that beats again is live: due when it would
            # turn stale (ZADD LT keeps an earlier deadline).
            self._stale_at(),
        )
        if answer.tag == "missing":
            raise NotFound(f"agent instance {self.instance_id}")
        return answer["status"]


class Inbox:
    """An instance's inbox: ``async for message in inbox`` yields typed
    :class:`Message`\\ s; :meth:`ack` after handling (at-least-once). Its
    own unacknowledged messages come first, then new ones; a message idle
    unacknowledged past ``redeliver_after_ms`` is handed back, and one
    delivered ``max_deliveries`` times goes to the dead-letter stream. An
    entry whose payload is not MessagePack is dead-lettered alone, with its
    reason, and the rest of its batch is delivered."""

    def __init__(
        self,
        client: Client,
        instance_id: str,
        *,
        batch: int = 64,
        block_ms: int = 1000,
        redeliver_after_ms: int | None = None,
        max_deliveries: int | None = None,
    ):
        self.client, self.instance_id = client, instance_id
        self.batch, self.block_ms = batch, block_ms
        # The server's (client.settings), unless given.
        self.redeliver_after_ms = redeliver_after_ms or client.settings.redeliver_after_ms
        self.max_deliveries = max_deliveries or client.settings.max_deliveries
        self.key = client.keys.inbox(instance_id)
        self.read_early = client.keys.inbox_read_early(instance_id)
        self._next_redeliver = 0.0
        self._pending_first = True
        self.closed = False

    async def ack(self, message: Message) -> None:
        await self.client.redis.xack(self.key, GROUP, message.entry_id)

    async def _set_aside(self, entries: list[tuple[bytes, dict]]) -> list[Message]:
        good, poison = [], []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                good.append(_message(entry_id, fields))
            except Undecodable as e:
                poison.append((entry_id.decode(), str(e)))
        if poison:
            args: list[tuple[str, Any]] = []
            for entry_id, reason in poison:
                args += [("entry", entry_id), ("reason", reason)]
            await self.client.scripts.inbox_poison(
                self.client.redis, [("inbox", self.key), ("dlq", self.client.keys.dlq())], args
            )
        return good

    async def _redeliver(self) -> list[Message]:
        answer = await self.client.scripts.inbox_redeliver(
            self.client.redis,
            [("inbox", self.key), ("dlq", self.client.keys.dlq())],
            [
                ("consumer", self.instance_id),
                ("min_idle", self.redeliver_after_ms),
                ("most_deliveries", self.max_deliveries),
                ("count", self.batch),
                ("most_bytes", ""),
            ],
        )
        # XCLAIM's form; an entry trimmed away meanwhile comes back without fields.
        entries = [(e[0], dict(zip(e[1][::2], e[1][1::2]))) for e in answer["entries"] or [] if e and e[1]]
        return await self._set_aside(entries)

    async def receive(self) -> list[Message]:
        """The next batch (possibly empty after ``block_ms``)."""
        if self._pending_first:
            self._pending_first = False
            read = await self.client.redis.xreadgroup(GROUP, self.instance_id, {self.key: "0"}, count=1000)
            mine = [(i, f) for _, entries in read or [] for i, f in entries]
            if mine:
                return await self._set_aside(mine)
        now = time.monotonic()
        if now >= self._next_redeliver:
            self._next_redeliver = now + self.redeliver_after_ms / 1000
            again = await self._redeliver()
            if again:
                return again
        # The read, and whether any message was marked read before delivery
        # (rare: only then are the new ones checked against the marks).
        pipe = self.client.redis.pipeline(transaction=False)
        pipe.xreadgroup(GROUP, self.instance_id, {self.key: ">"}, count=self.batch, block=self.block_ms)
        pipe.zcard(self.read_early)
        read, marked = await pipe.execute(raise_on_error=False)
        for e in (read, marked):
            if isinstance(e, ResponseError) and "NOGROUP" in str(e):
                raise NotFound(f"agent instance {self.instance_id} (no inbox)") from None
            if isinstance(e, Exception):
                raise e
        entries = [(i, f) for _, got in read or [] for i, f in got]
        if marked and entries:
            answer = await self.client.scripts.inbox_settle_read(
                self.client.redis,
                [("inbox", self.key), ("read_early", self.read_early)],
                [("entry", _id(i)) for i, _ in entries],
            )
            settled = {_id(x) for x in answer["value"] or []}
            entries = [(i, f) for i, f in entries if _id(i) not in settled]
        return await self._set_aside(entries)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while not self.closed:
            for m in await self.receive():
                yield m


class Replies:
    """This process's reply stream for one tenant, read by one task that
    hands each reply to the caller waiting for it."""

    def __init__(self, client: Client):
        self.client = client
        self.stream = client.keys.replies(f"py-{os.getpid()}-{os.urandom(4).hex()}")
        self._waiting: dict[str, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    def expect(self, reply_to: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiting[reply_to] = fut
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read())
        return fut

    def forget(self, reply_to: str) -> None:
        self._waiting.pop(reply_to, None)

    async def close(self) -> None:
        """Stops the reader (the client is closing)."""
        self._waiting.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _read(self) -> None:
        last = "0"
        r = self.client.redis
        while self._waiting:
            read = await r.xread({self.stream: last}, count=100, block=500)
            done = []
            for _, entries in read or []:
                for entry_id, fields in entries:
                    last = entry_id
                    done.append(entry_id)
                    fut = self._waiting.pop((fields.get(b"reply_to") or b"").decode(), None)
                    if fut and not fut.done():
                        fut.set_result(fields)
            if done:
                # One XDEL per batch read, not one per reply.
                await r.xdel(self.stream, *done)


async def send(
    client: Client,
    sender: str,
    to: str,
    message_type: str,
    payload: Any,
    *,
    job_id: str | None = None,
    reply_to: str | None = None,
    price: int | None = None,
) -> str:
    """Sends (and is charged for) one message to ``to``'s inbox; returns its
    message id."""
    k = client.keys
    message_id = str(uuid.uuid4())
    answer = await client.scripts.message_send(
        client.redis,
        [("credits", k.credits()), ("outbox", k.outbox()), ("agent", k.agent(to)), ("inbox", k.inbox(to))],
        [
            ("event_base", event_base()),
            ("tenant", client.tenant),
            ("price", client.settings.price("agent_message") if price is None else price),
            ("inbox_cap", client.settings.inbox_cap),
            ("message_id", message_id),
            ("from", sender),
            ("type", message_type),
            ("job", job_id or ""),
            ("reply_to", reply_to or ""),
            ("payload", encode(payload)),
            ("reply_stream", ""),
            ("registered", "1"),
        ],
    )
    if answer.tag == "unknown_recipient":
        raise NotFound(f"agent instance {to}")
    if answer.tag == "insufficient":
        raise InsufficientCredits(credits(answer["required"]), credits(answer["available"]))
    return message_id


@dataclass
class InvokeResult:
    invoke_id: str
    success: bool
    response: Any
    error: str | None


async def invoke(
    client: Client,
    caller: str,
    target: str,
    payload: Any,
    timeout: float = 30.0,
    *,
    job_id: str | None = None,
    price: int | None = None,
) -> InvokeResult:
    """Calls ``target`` and waits for its answer or ``timeout`` seconds; the
    price is reserved at the start and charged only on success."""
    replies = getattr(client, "_replies", None)
    if replies is None:
        replies = client._replies = Replies(client)  # type: ignore[attr-defined]
    k = client.keys
    invoke_id = "inv_" + os.urandom(8).hex()
    layout = [
        ("credits", k.credits()),
        ("outbox", k.outbox()),
        ("invoke", k.invoke(invoke_id)),
        ("pending", k.pending_invokes()),
    ]
    first = [("event_base", event_base()), ("tenant", client.tenant), ("invoke_id", invoke_id)]
    waiting = replies.expect(invoke_id)
    answer = await client.scripts.invoke_start(
        client.redis,
        layout + [("agents", k.agents()), ("target", k.agent(target)), ("target_inbox", k.inbox(target))],
        first
        + [
            ("price", client.settings.price("agent_invoke") if price is None else price),
            ("inbox_cap", client.settings.inbox_cap),
            ("message_id", str(uuid.uuid4())),
            ("caller", caller),
            ("target", target),
            ("job", job_id or ""),
            ("request", encode(payload)),
            ("timeout", int(timeout * 1000)),
            ("reply_stream", replies.stream),
            ("staleness", client.settings.stale_after_secs * 1000),
            ("retention", client.settings.invoke_retention_secs),
        ],
        # If this caller stops waiting, the server's reaper ends it then.
        [(due_key(k.prefix, REAP, client.tenant), client.tenant, int(time.time() * 1000) + int(timeout * 1000) + 1)],
    )
    if answer.tag != "ok":
        replies.forget(invoke_id)
        cause: AgentbusError
        if answer.tag == "unknown_target":
            cause = NotFound(f"target instance {target}")
        elif answer.tag == "insufficient_credits":
            cause = InsufficientCredits(credits(answer["required"]), credits(answer["available"]))
        elif answer.tag == "target_stopped":
            cause = Conflict(f"target instance {target} is {answer['status']}")
        else:
            raise Conflict(f"invocation {invoke_id} {answer.tag}")
        # Audited as refused under invoke_id, as the server's REST answer says.
        raise InvokeRefused(invoke_id, answer.tag, cause)
    try:
        fields = await asyncio.wait_for(waiting, timeout)
    except asyncio.TimeoutError:
        replies.forget(invoke_id)
        expired = await client.scripts.invoke_expire(
            client.redis, layout, first + [("own_timer", "1")]
        )
        if expired.tag == "timeout":
            return InvokeResult(invoke_id, False, None, "timeout")
        # Answered in the meantime: the reply is on the stream.
        return InvokeResult(invoke_id, False, None, f"timeout ({expired.tag})")
    status = (fields.get(b"status") or b"").decode()
    raw = fields.get(b"payload")
    error = (fields.get(b"error") or b"").decode() or None
    return InvokeResult(invoke_id, status == "completed", msgpack.unpackb(raw, raw=False) if raw else None, error)


Handler = Callable[[Any], Awaitable[Any]]


async def serve_invocations(client: Client, instance_id: str, handler: Handler, inbox: Inbox | None = None) -> None:
    """Answers the invocations addressed to ``instance_id`` with ``handler``
    (its return value is the response; an exception answers with its text
    as the error) until the task is cancelled. Other messages are acked."""
    inbox = inbox or Inbox(client, instance_id)
    k = client.keys
    async for m in inbox:
        if m.type == "invoke_request" and m.invoke_id:
            try:
                response, error = await handler(m.payload), ""
            except Exception as e:  # the handler's failure is the answer
                response, error = None, (str(e) or type(e).__name__)[:4096]
            await client.scripts.invoke_respond(
                client.redis,
                [
                    ("credits", k.credits()),
                    ("outbox", k.outbox()),
                    ("invoke", k.invoke(m.invoke_id)),
                    ("pending", k.pending_invokes()),
                ],
                [
                    ("event_base", event_base()),
                    ("tenant", client.tenant),
                    ("invoke_id", m.invoke_id),
                    ("response", encode(response)),
                    ("error", error),
                    ("responder", instance_id),
                ],
            )
        await inbox.ack(m)
