"""A worker agent: registered, heartbeating while it works, failing what it
cannot do. Configured from the environment (see jobs.py)."""

import asyncio

from agentbus import Agent, Client, Fail, Worker


async def double(item):
    if item.input is None:
        raise Fail("no input", retry=False)  # ends the item: dead-lettered, refunded
    return {"y": item.input["x"] * 2}


async def main():
    async with Client.from_env() as client:
        job = await client.jobs.spawn([{"x": 1}, None, {"x": 3}], orchestrator_agent="py-orch",
                                      worker_agent="python", task="double")
        agent = Agent(client, "py-worker-1", agent_id="python", job_id=job.id)
        await agent.register()
        tally = await Worker(client, job.id, "py-worker-1", double,
                             concurrency=4, batch=32, agent=agent).run()
        print(tally.completed, "completed,", tally.failed, "failed")
    print("ok")


asyncio.run(main())
