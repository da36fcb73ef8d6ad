"""The blackboard from Python, through the server's scripts: a namespace of
JSON values with exact numeric aggregates (micro-units), compare-and-set,
TTLs and fenced locks. Each operation is charged as the server charges it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from .client import Client
from .errors import Conflict, InsufficientCredits, credits
from .keys import REAP, due_key

#: Numbers aggregated are at most 9e9 in magnitude (as the server bounds them).
MAX_AGGREGATED = 9_000_000_000_000_000
_MISSING = object()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def micro_units(value: Any) -> int | None:
    """A JSON number as integer micro-units (10^-6, halves to even, as the
    server rounds), or None when it is not a number or out of range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        d = Decimal(str(value)).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
        micro = int(d.scaleb(6))
    except (InvalidOperation, OverflowError, ValueError):
        return None
    return micro if abs(micro) <= MAX_AGGREGATED else None


def _value(text: Any) -> Any:
    if isinstance(text, bytes):
        text = text.decode()
    return json.loads(text, parse_float=Decimal) if text else None


@dataclass
class Aggregate:
    keys: int
    count: int
    sum: Decimal
    min: Any
    max: Any

    @property
    def mean(self) -> Decimal | None:
        return (self.sum / self.count).quantize(Decimal("0.000001")).normalize() if self.count else None


class Lock:
    """A fenced lock as an async context manager: acquired on entry,
    released on exit; ``token`` fences writes made while holding it."""

    def __init__(self, board: "Blackboard", name: str, holder: str, ttl_ms: int):
        self.board, self.name, self.holder, self.ttl_ms = board, name, holder, ttl_ms
        self.token: int | None = None

    async def __aenter__(self) -> "Lock":
        answer = await self.board._lock(self.name, "acquire", self.holder, self.ttl_ms)
        if answer.tag == "held":
            raise Conflict(f"lock {self.name} is held by {answer['holder']}", {"holder": answer["holder"]})
        self.token = answer["token"]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.board._lock(self.name, "release", self.holder, self.ttl_ms)

    @property
    def fence(self) -> tuple[str, int]:
        assert self.token is not None, "not acquired"
        return (self.name, self.token)


class Blackboard:
    """One namespace of the tenant's blackboard."""

    def __init__(self, client: Client, namespace: str):
        self.client, self.namespace = client, namespace
        self.keys = client.keys.blackboard(namespace)

    def _layout(self, price: int) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        k = self.keys
        keys = [
            ("credits", self.client.keys.credits()),
            ("vals", k.vals),
            ("nums", k.nums),
            ("lex", k.lex),
            ("score", k.score),
            ("agg", k.agg),
            ("exp", k.exp),
            ("fence", k.fence),
            ("namespaces", k.namespaces),
            ("names", k.names),
        ]
        return keys, [("namespace", self.namespace), ("price", price)]

    @staticmethod
    def _charged(answer: Any) -> Any:
        if answer.tag == "insufficient":
            raise InsufficientCredits(credits(answer["price"]), credits(answer["available"]))
        if answer.tag == "fenced":
            raise Conflict("stale fencing token: the lock was acquired again since; write refused")
        return answer

    def _due(self, price: int, ttl_ms: int = 0) -> list[tuple[str, str, int]]:
        """The reaper's deadline this call creates, as the server writes it:
        a metered charge is due at once (the reaper turns it into a ledger
        event), else an entry with a TTL when it expires."""
        key, now = due_key(self.client.keys.prefix, REAP, self.client.tenant), int(time.time() * 1000)
        if price > 0:
            return [(key, self.client.tenant, now)]
        return [(key, self.client.tenant, now + ttl_ms)] if ttl_ms > 0 else []

    async def _read(self, mode: str, *params: Any) -> list[Any]:
        price = self.client.settings.price("blackboard_read")
        keys, args = self._layout(price)
        args += [("mode", mode)] + [("params", p) for p in params]
        answer = self._charged(
            await self.client.scripts.bb_read(self.client.redis, keys, args, self._due(price))
        )
        return answer["values"]

    async def get(self, key: str, default: Any = None) -> Any:
        values = await self._read("get", key)
        return _value(values[0]) if values and values[0] else default

    async def _write(self, mode: str, key: str, value: Any, ttl_ms: int, expected: Any, fence) -> Any:
        price = self.client.settings.price("blackboard_write")
        keys, args = self._layout(price)
        micro = micro_units(value) if mode != "delete" else None
        args += [
            ("mode", mode),
            ("key", key),
            ("value", _json(value) if mode != "delete" else ""),
            ("micro", "" if micro is None else micro),
            ("ttl", ttl_ms),
            ("expected", "" if expected is _MISSING else _json(expected)),
            ("fence_lock", fence[0] if fence else ""),
            ("fence_token", fence[1] if fence else 0),
        ]
        return self._charged(
            await self.client.scripts.bb_write(self.client.redis, keys, args, self._due(price, ttl_ms))
        )

    async def put(self, key: str, value: Any, *, ttl_ms: int = 0, fence: tuple[str, int] | None = None) -> bool:
        """Sets ``key``; returns whether it existed."""
        return (await self._write("set", key, value, ttl_ms, _MISSING, fence))["existed"] == 1

    async def cas(self, key: str, expected: Any, value: Any, *, absent: bool = False,
                  ttl_ms: int = 0, fence: tuple[str, int] | None = None) -> tuple[bool, Any]:
        """Sets ``value`` only if the current value is ``expected`` (or, with
        ``absent=True``, if there is none). Returns (set, current)."""
        answer = await self._write("cas", key, value, ttl_ms, _MISSING if absent else expected, fence)
        if answer.tag == "ok":
            return True, value
        return False, _value(answer["current"])

    async def delete(self, key: str, *, fence: tuple[str, int] | None = None) -> bool:
        return (await self._write("delete", key, None, 0, _MISSING, fence))["existed"] == 1

    async def increment(self, key: str, amount: Any = 1, *, fence: tuple[str, int] | None = None) -> Any:
        """Adds ``amount`` exactly (6 decimal places); an absent key counts as 0."""
        micro = micro_units(amount)
        if micro is None:
            raise ValueError("amount: a number of at most 9e9 (6 decimal places kept)")
        price = self.client.settings.price("blackboard_write")
        keys, args = self._layout(price)
        args += [
            ("key", key),
            ("amount", micro),
            ("fence_lock", fence[0] if fence else ""),
            ("fence_token", fence[1] if fence else 0),
        ]
        answer = self._charged(
            await self.client.scripts.bb_increment(self.client.redis, keys, args, self._due(price))
        )
        if answer.tag == "not_a_number":
            raise Conflict(f"{key} holds a value that is not a number")
        if answer.tag == "out_of_range":
            raise ValueError("amount: the result would exceed 9e9")
        return _value(answer["value"])

    @staticmethod
    def _entries(values: list[Any]) -> list[tuple[str, Any]]:
        return [(values[i].decode(), _value(values[i + 1])) for i in range(0, len(values) - 1, 2)]

    async def top(self, k: int = 10, *, descending: bool = True) -> list[tuple[str, Any]]:
        return self._entries(await self._read("top", k, "desc" if descending else "asc"))

    async def range(self, lo: str = "-inf", hi: str = "+inf", *, offset: int = 0, limit: int = 100):
        """Numeric entries with values in [lo, hi] (`(x` for exclusive)."""
        return self._entries(await self._read("range", lo, hi, offset, limit))

    async def keys_page(self, after: str = "", limit: int = 100) -> list[tuple[str, Any]]:
        return self._entries(await self._read("keys", after, limit))

    async def aggregate(self) -> Aggregate:
        keys, count, lo, _, mn, _, mx, hi = await self._read("aggregate")
        micro = int(hi) * 10**12 + int(lo)
        return Aggregate(int(keys), int(count), Decimal(micro).scaleb(-6).normalize(), _value(mn), _value(mx))

    async def _lock(self, name: str, action: str, holder: str, ttl_ms: int) -> Any:
        price = self.client.settings.price("blackboard_lock")
        keys, args = self._layout(price)
        keys.append(("lock", self.keys.lock(name)))
        args += [("lock", name), ("action", action), ("holder", holder), ("ttl", ttl_ms)]
        return self._charged(
            await self.client.scripts.bb_lock(self.client.redis, keys, args, self._due(price))
        )

    def lock(self, name: str, holder: str, ttl_ms: int = 10_000) -> Lock:
        """``async with board.lock("l", "me") as held: await board.put(k, v, fence=held.fence)``"""
        return Lock(self, name, holder, ttl_ms)
