"""A thin blocking facade for code that is not asyncio (scripts, notebooks,
thread-based frameworks).

:class:`SyncClient` runs one private event loop on a daemon thread and
hands every call to it, so the blocking API is the async one, call for
call: ``client.jobs.spawn(...)`` blocks where ``await client.jobs.spawn(...)``
would wait. Async iterators become plain iterators; a worker's handler is a
plain function, run in the loop's thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from typing import Any, Callable, Coroutine, Iterator, TypeVar

from . import agents
from .agents import Agent, Inbox, InvokeResult
from .blackboard import Blackboard
from .client import Client
from .worker import Item, Tally, Worker

T = TypeVar("T")


class _Loop:
    """An event loop of its own, on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agentbus-sync", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("a blocking agentbus call from inside its own loop would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: Any) -> Iterator[Any]:
        while True:
            try:
                yield self.run(agen.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Blocking:
    """Any agentbus object with its coroutine methods made blocking and its
    async generators made iterators; other attributes pass through."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target, self._loop = target, loop

    def __iter__(self) -> Iterator[Any]:
        """An async-iterable target (an Inbox) iterated, blocking."""
        return self._loop.iterate(self._target.__aiter__())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **k: self._loop.run(attr(*a, **k))
        if inspect.isasyncgenfunction(attr):
            return lambda *a, **k: self._loop.iterate(attr(*a, **k))
        return attr


class SyncClient:
    """:class:`~agentbus.client.Client`, blocking. Takes the same arguments."""

    def __init__(self, redis_url: str, tenant: str, **options: Any) -> None:
        self._loop = _Loop()

        async def make() -> Client:
            return Client(redis_url, tenant, **options)

        self.client = self._loop.run(make())

    @classmethod
    def from_env(cls, **options: Any) -> "SyncClient":
        """As :meth:`Client.from_env <agentbus.client.Client.from_env>`."""
        made = cls.__new__(cls)
        made._loop = _Loop()

        async def make() -> Client:
            return Client.from_env(**options)

        made.client = made._loop.run(make())
        return made

    def close(self) -> None:
        try:
            self._loop.run(self.client.close())
        finally:
            self._loop.close()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def jobs(self) -> Any:
        return Blocking(self.client.jobs, self._loop)

    @property
    def api(self) -> Any:
        return Blocking(self.client.api, self._loop)

    def agent(self, instance_id: str, agent_id: str, job_id: str | None = None) -> Any:
        return Blocking(Agent(self.client, instance_id, agent_id, job_id), self._loop)

    def inbox(self, instance_id: str, **options: Any) -> Any:
        return Blocking(Inbox(self.client, instance_id, **options), self._loop)

    def blackboard(self, namespace: str) -> Any:
        return Blocking(Blackboard(self.client, namespace), self._loop)

    @contextlib.contextmanager
    def lock(self, namespace: str, name: str, holder: str, ttl_ms: int = 10_000) -> Iterator[Any]:
        """A fenced lock, held for the ``with`` block."""
        lock = Blackboard(self.client, namespace).lock(name, holder, ttl_ms)
        self._loop.run(lock.__aenter__())
        try:
            yield lock
        finally:
            self._loop.run(lock.__aexit__(None, None, None))

    def send(self, sender: str, to: str, message_type: str, payload: Any, **options: Any) -> str:
        return self._loop.run(agents.send(self.client, sender, to, message_type, payload, **options))

    def invoke(self, caller: str, target: str, payload: Any, timeout: float = 30.0, **options: Any) -> InvokeResult:
        return self._loop.run(agents.invoke(self.client, caller, target, payload, timeout, **options))

    def work(self, job_id: str, instance_id: str, handler: Callable[[Item], Any], **options: Any) -> Tally:
        """Works the job until it ends, ``handler`` running in threads (as
        many at once as ``concurrency`` × ``batch``)."""

        async def threaded(item: Item) -> Any:
            return await asyncio.to_thread(handler, item)

        return self._loop.run(Worker(self.client, job_id, instance_id, threaded, **options).run())
