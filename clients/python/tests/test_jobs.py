"""Jobs over REST from Python: typed answers, exact Decimal credits, and the
server's error codes as exceptions; plus the blocking facade and a worker's
registry heartbeats."""

import asyncio
import secrets
import threading
from decimal import Decimal

import pytest

from agentbus import (
    Agent,
    Client,
    Conflict,
    Invalid,
    InsufficientCredits,
    NotFound,
    SyncClient,
    Unauthorized,
    Worker,
)

from conftest import REDIS_URL

ITEM, OVERHEAD = Decimal("2.00"), Decimal("5.00")  # the server's default prices
SPEC = dict(orchestrator_agent="py-orch", worker_agent="py", task="square")


def tenant_client(server, credits):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, credits)
    return tenant, Client(REDIS_URL, tenant, prefix=server.prefix, api_url=server.url, token=token)


async def test_simulate_spawn_work_results_over_the_jobs_api(server):
    tenant, client = tenant_client(server, 100)
    async with client:
        jobs = client.jobs
        n = 20
        items = [{"x": i} for i in range(n)]
        sim = await jobs.simulate(items, **SPEC)
        assert sim.estimated_credits == OVERHEAD + ITEM * n and isinstance(sim.estimated_credits, Decimal)
        assert sim.budget_check.sufficient and sim.budget_check.available == Decimal(100)
        assert (await client.api.balance()).available == Decimal(100), "simulate reserves nothing"

        job = await jobs.spawn(items, **SPEC, max_retries=0)
        assert job.running and job.progress.total == n and job.credits_per_item == ITEM
        assert job.credits.reserved == OVERHEAD + ITEM * n
        balance = await client.api.balance()
        assert (balance.reserved, balance.available) == (ITEM * n, Decimal(100) - OVERHEAD - ITEM * n)

        async def square(item):
            return item.input["x"] ** 2

        tally = await Worker(client, job.id, "py-w", square, batch=8).run()
        assert tally.completed == n
        done = await jobs.get(job.id)
        assert (done.status, done.progress.completed) == ("completed", n)
        assert (done.credits.spent, done.credits.still_reserved) == (OVERHEAD + ITEM * n, 0)
        outputs = {r.item_index: r.output async for r in jobs.results(job.id, page=7)}
        assert outputs == {i: i * i for i in range(n)}

        # The server's error codes, typed.
        with pytest.raises(Conflict) as e:
            await jobs.cancel(job.id)
        assert e.value.state["status"] == "completed" and e.value.status == 409
        with pytest.raises(NotFound):
            await jobs.get("0190a1b2-0000-7000-8000-000000000000")
        with pytest.raises(InsufficientCredits) as e:
            await jobs.spawn(list(range(100)), **SPEC)
        assert (e.value.required, e.value.available) == (OVERHEAD + ITEM * 100, Decimal(100) - OVERHEAD - ITEM * n)
        assert isinstance(e.value.required, Decimal)
        with pytest.raises(Invalid) as e:
            await jobs.spawn([1], **SPEC, parallelism=-1)
        assert e.value.field == "parallelism"
        assert (await client.api.balance()).available == Decimal(100) - OVERHEAD - ITEM * n, "refusals cost nothing"
    async with Client(REDIS_URL, tenant, prefix=server.prefix, api_url=server.url, token="wrong") as stranger:
        with pytest.raises(Unauthorized):
            await stranger.api.balance()


async def test_a_worker_heartbeats_its_agent_while_it_works_and_leaves_it_idle(server):
    tenant, client = tenant_client(server, 100)
    async with client:
        job = await client.jobs.spawn(list(range(10)), **SPEC)
        agent = Agent(client, "py-hb", "py", job.id)
        await agent.register()
        await client.redis.hset(client.keys.agent("py-hb"), "heartbeat_at", 1)  # long silent

        async def slow(item):
            await asyncio.sleep(0.05)
            return item.input

        tally = await Worker(client, job.id, "py-hb", slow, concurrency=1, batch=2,
                             agent=agent, heartbeat_s=0.1).run()
        assert tally.completed == 10
        assert tally.heartbeats >= 2, tally
        seen = await client.api.request("GET", "/agents/py-hb")
        assert seen["status"] == "idle", seen
        assert int(await client.redis.hget(client.keys.agent("py-hb"), "heartbeat_at")) > 1


def test_the_blocking_facade_spawns_works_and_locks(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 50)
    with SyncClient(REDIS_URL, tenant, prefix=server.prefix, api_url=server.url, token=token) as client:
        job = client.jobs.spawn([1, 2, 3, 4], **SPEC)
        threads = set()

        def handler(item):  # plain code, in a thread of the facade's pool
            threads.add(threading.current_thread().name)
            return item.input * 10

        tally = client.work(job.id, "py-sync", handler, batch=4)
        assert tally.completed == 4 and threading.current_thread().name not in threads
        assert sorted(r.output for r in client.jobs.results(job.id)) == [10, 20, 30, 40]
        assert client.api.balance().available == Decimal(50) - OVERHEAD - ITEM * 4
        board = client.blackboard("sync")
        assert board.put("k", {"v": 1}) is False, "a new key did not exist"
        assert board.put("k", {"v": 2}) is True
        assert board.get("k") == {"v": 2}
        with client.lock("sync", "l", "me") as lock:
            with pytest.raises(Conflict):
                with client.lock("sync", "l", "someone-else"):
                    pass
            assert lock.fence[1] >= 1
        with pytest.raises(InsufficientCredits):
            client.jobs.spawn(list(range(100)), **SPEC)
