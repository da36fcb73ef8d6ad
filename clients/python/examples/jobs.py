"""Simulate, spawn, work, read and cancel jobs (REST for the jobs, the
scripts for the work). Configured from the environment: REDIS_URL,
AGENTBUS_TENANT, AGENTBUS_PREFIX, AGENTBUS_URL, AGENTBUS_TOKEN."""

import asyncio

from agentbus import Client, InsufficientCredits, Worker


async def main():
    async with Client.from_env() as client:
        items = [{"x": i} for i in range(20)]
        spec = dict(orchestrator_agent="py-orch", worker_agent="py", task="double")
        estimate = await client.jobs.simulate(items, **spec)
        print("estimate", estimate.estimated_credits, estimate.budget_check.sufficient)
        try:
            job = await client.jobs.spawn(items, **spec, max_retries=2)
        except InsufficientCredits as e:
            print("short by", e.required - e.available)
            return

        async def double(item):
            return {"y": item.input["x"] * 2}

        await Worker(client, job.id, "py-worker-1", double).run()
        job = await client.jobs.get(job.id)  # Job: status, progress, credits (Decimal)
        print(job.status, job.progress.completed, "items, spent", job.credits.spent)
        async for result in client.jobs.results(job.id):  # pages of 1000, in order
            assert result.output == {"y": 2 * result.item_index}

        second = await client.jobs.spawn(items, **spec)
        cancelled = await client.jobs.cancel(second.id, reason="enough")
        print("refunded", cancelled.credits_refunded)  # exact: price × uncompleted items
        print(await client.api.balance())  # Balance(total, reserved, spent, available)
    print("ok")


asyncio.run(main())
