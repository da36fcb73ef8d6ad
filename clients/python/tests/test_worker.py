"""Python workers on jobs the Rust server spawned: every item once, credits
exact to the minor unit, and a cancel while they run refunds exactly."""

import asyncio
import secrets
from decimal import Decimal

from agentbus import Client, Fail, Worker

from conftest import REDIS_URL

ITEM, OVERHEAD = Decimal("2.00"), Decimal("5.00")  # the server's default prices


def spawn(server, token, items, **extra):
    body = {"orchestrator_agent": "rust", "worker_agent": "py", "task": "double", "items": items}
    status, job = server.call("POST", "/jobs", token, {**body, **extra})
    assert status == 201, job
    return job["id"]


async def test_python_workers_complete_a_rust_spawned_job_exactly_once(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 1000)
    n = 300
    job_id = spawn(server, token, [{"x": i} for i in range(n)])
    seen: list[int] = []

    async def double(item):
        seen.append(item.index)
        if item.index % 50 == 7 and item.attempt == 0:
            raise Fail("first attempt of a few fails; the retry succeeds")
        return {"y": item.input["x"] * 2}

    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        tallies = await asyncio.gather(
            *(Worker(client, job_id, f"py-{w}", double, concurrency=3, batch=16).run() for w in range(3))
        )
    assert sum(t.completed for t in tallies) == n
    assert sum(t.duplicates + t.stale for t in tallies) == 0
    assert sum(t.retried for t in tallies) == 6
    status, job = server.call("GET", f"/jobs/{job_id}", token)
    assert job["status"] == "completed", job
    assert job["progress"]["completed"] == n
    assert Decimal(str(job["credits"]["spent"])) == OVERHEAD + ITEM * n
    assert Decimal(str(job["credits"]["still_reserved"])) == 0
    status, balance = server.call("GET", "/credits", token)
    assert Decimal(str(balance["available"])) == Decimal(1000) - OVERHEAD - ITEM * n
    # Every item's output once, as the handler made it.
    outputs, after = {}, None
    while True:
        q = f"?limit=1000" + (f"&after={after}" if after else "")
        status, page = server.call("GET", f"/jobs/{job_id}/results{q}", token)
        for r in page["results"]:
            assert r["item_index"] not in outputs, "a result twice"
            outputs[r["item_index"]] = r["output"]
        after = page.get("next")
        if not after:
            break
    assert outputs == {i: {"y": 2 * i} for i in range(n)}


async def test_a_cancel_while_python_workers_run_refunds_exactly(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 1000)
    n = 200
    job_id = spawn(server, token, list(range(n)))
    started = asyncio.Event()

    async def slow(item):
        started.set()
        await asyncio.sleep(0.02)
        return item.input

    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        worker = Worker(client, job_id, "py-slow", slow, concurrency=1, batch=4, block_ms=200)
        run = asyncio.create_task(worker.run())
        await started.wait()
        await asyncio.sleep(0.2)
        status, cancelled = await asyncio.to_thread(
            server.call, "POST", f"/jobs/{job_id}/cancel", token, {"reason": "enough"}
        )
        assert status == 200, cancelled
        tally = await asyncio.wait_for(run, 10)
    done = cancelled["completed_items"]
    assert 0 < done < n
    # Completions racing the cancel are refused, never charged.
    assert tally.completed == done
    assert Decimal(str(cancelled["credits_refunded"])) == ITEM * (n - done)
    status, balance = server.call("GET", "/credits", token)
    assert Decimal(str(balance["available"])) == Decimal(1000) - OVERHEAD - ITEM * done
    assert Decimal(str(balance["reserved"])) == 0
