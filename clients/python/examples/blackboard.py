"""The blackboard: values, exact aggregates, fenced locks. Configured from
the environment (see jobs.py)."""

import asyncio

from agentbus import Blackboard, Client


async def main():
    async with Client.from_env() as client:
        board = Blackboard(client, "scores")
        await board.put("alice", 12.5, ttl_ms=60_000)  # JSON values; numbers aggregated exactly
        await board.put("bob", 7)
        await board.increment("alice", 0.25)  # 6 decimal places kept, never a float sum
        ok, current = await board.cas("state", None, "busy", absent=True)
        print(await board.top(3), await board.range("10", "+inf"))
        agg = await board.aggregate()  # count, sum, min, max (sum is a Decimal)
        print(agg.count, agg.sum, agg.mean)
        async with board.lock("leader", holder="py-1", ttl_ms=10_000) as held:
            await board.put("plan", {"step": 1}, fence=held.fence)  # refused once the lock is taken over
    print("ok")


asyncio.run(main())
