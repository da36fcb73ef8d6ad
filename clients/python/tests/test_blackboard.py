"""The blackboard from Python and from the Rust server: one namespace, the
same values, exact aggregates, charges and fencing."""

import asyncio
import secrets
from decimal import Decimal

import pytest

from agentbus import Client, Conflict
from agentbus.blackboard import Blackboard, micro_units

from conftest import REDIS_URL


def test_micro_units_round_as_the_server_does():
    assert micro_units(1) == 1_000_000
    assert micro_units(0.1) == 100_000
    assert micro_units(-2.5) == -2_500_000
    assert micro_units(1.0000005) == 1_000_000  # half to even
    assert micro_units(1.0000015) == 1_000_002
    for bad in (True, "1", None, 1e20, -1.1908014246670206e24, float("inf"), float("nan")):
        assert micro_units(bad) is None, bad


async def test_python_and_rust_share_one_namespace(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 100)
    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        board = Blackboard(client, "scores")
        spent = lambda: Decimal(str(server.call("GET", "/credits", token)[1]["spent"]))  # noqa: E731
        before = spent()
        assert await board.put("a", 1.5) is False
        assert await board.put("b", {"n": 1}) is False
        await board.get("a")
        # Two writes and a read at the server's prices (1.00 each).
        assert spent() - before == Decimal("3.00")
        status, b = server.call("PUT", "/namespaces/scores/entries/c", token, {"value": 2.25})
        assert status == 200, b
        # Rust reads what Python wrote, Python what Rust wrote.
        status, got = server.call("GET", "/namespaces/scores/entries/a", token)
        assert got["value"] == Decimal("1.5")
        assert await board.get("c") == Decimal("2.25")
        assert await board.get("missing", "none") == "none"
        assert await board.increment("a", Decimal("0.000001")) == Decimal("1.500001")
        agg = await board.aggregate()
        status, rust = server.call("GET", "/namespaces/scores/aggregate", token)
        assert (agg.keys, agg.count, agg.sum) == (rust["keys"], rust["count"], Decimal(str(rust["sum"])))
        assert agg.sum == Decimal("3.750001") and agg.max == Decimal("2.25")
        assert [k for k, _ in await board.top(2)] == ["c", "a"]
        ok, current = await board.cas("b", {"n": 2}, {"n": 3})
        assert (ok, current) == (False, {"n": 1})
        assert (await board.cas("b", {"n": 1}, {"n": 3}))[0]
        assert await board.delete("b") is True
        # Fenced: a holder whose lock was taken over cannot write.
        async with board.lock("l", "py", ttl_ms=50) as held:
            old = held.fence
            await board.put("guarded", 1, fence=old)
        async with board.lock("l", "other") as again:
            assert again.token > old[1]
            with pytest.raises(Conflict):
                await board.put("guarded", 2, fence=old)
            assert await board.get("guarded") == 1

