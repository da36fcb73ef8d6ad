"""Python workers on jobs the Rust server spawned: every item once, credits
exact to the minor unit, and a cancel while they run refunds exactly."""

import asyncio
import secrets
from collections import Counter
from decimal import Decimal

import pytest

from agentbus import Client, Fail, Worker

from conftest import REDIS_URL, Proxy, eventually, sync_redis

ITEM, OVERHEAD = Decimal("2.00"), Decimal("5.00")  # the server's default prices


def spawn(server, token, items, **extra):
    body = {"orchestrator_agent": "rust", "worker_agent": "py", "task": "double", "items": items}
    status, job = server.call("POST", "/jobs", token, {**body, **extra})
    assert status == 201, job
    return job["id"]


async def test_python_workers_complete_a_rust_spawned_job_exactly_once(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 5000)
    # Past the server's spawn chunk (100 items): enqueued in thirteen chunks.
    n = 1201
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
    assert sum(t.retried for t in tallies) == sum(1 for i in range(n) if i % 50 == 7)
    status, job = server.call("GET", f"/jobs/{job_id}", token)
    assert job["status"] == "completed", job
    assert job["progress"]["completed"] == n
    assert Decimal(str(job["credits"]["spent"])) == OVERHEAD + ITEM * n
    assert Decimal(str(job["credits"]["still_reserved"])) == 0
    status, balance = server.call("GET", "/credits", token)
    assert Decimal(str(balance["available"])) == Decimal(5000) - OVERHEAD - ITEM * n
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


async def test_python_workers_never_run_more_than_the_jobs_parallelism_at_once(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 1000)
    job_id = spawn(server, token, list(range(30)), parallelism=2)
    running, most = 0, 0

    async def slow(item):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        return item.input

    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        tallies = await asyncio.gather(
            *(Worker(client, job_id, f"py-{w}", slow, concurrency=4, batch=4, block_ms=100).run() for w in range(3))
        )
    assert sum(t.completed for t in tallies) == 30
    # Twelve slots among the workers; the job allows two in flight.
    assert most == 2, most


async def test_a_cancel_while_python_workers_run_refunds_exactly(server_pg):
    server = server_pg
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 1000)
    n = 200
    job_id = spawn(server, token, list(range(n)))
    started = asyncio.Event()

    async def slow(item):
        started.set()
        await asyncio.sleep(0.02)
        return item.input

    async with Client(REDIS_URL, tenant, prefix=server.prefix, api_url=server.url, token=token) as client:
        workers = [Worker(client, job_id, f"py-slow-{w}", slow, concurrency=1, batch=4, block_ms=200)
                   for w in range(2)]
        runs = [asyncio.create_task(w.run()) for w in workers]
        await started.wait()
        await asyncio.sleep(0.2)
        cancelled = await client.jobs.cancel(job_id, reason="enough", cancelled_by="py-orch")
        tallies = await asyncio.wait_for(asyncio.gather(*runs), 10)
        balance = await client.api.balance()
    done = cancelled.completed_items
    assert 0 < done < n and cancelled.status == "cancelled"
    # Completions racing the cancel are refused, never charged.
    assert sum(t.completed for t in tallies) == done
    assert cancelled.credits_refunded == ITEM * (n - done)
    assert balance.available == Decimal(1000) - OVERHEAD - ITEM * done
    assert balance.reserved == 0
    # Postgres, as the sink mirrored it: the cancellation and the ledger.
    db = server.database
    row = await asyncio.to_thread(eventually, lambda: db.rows(
        "SELECT items_completed, credits_refunded, reason, cancelled_by FROM agents.job_cancellations"
        f" WHERE job_id = '{job_id}'"))
    assert row == [[str(done), str(ITEM * (n - done)), "enough", "py-orch"]]

    def ledger():
        rows = db.rows("SELECT operation, sum(amount) FROM agents.credit_ledger"
                       f" WHERE job_id = '{job_id}' GROUP BY operation ORDER BY operation")
        return rows if any(op == "refund" for op, _ in rows) else None

    sums = {op: Decimal(total) for op, total in await asyncio.to_thread(eventually, ledger)}
    assert sums == {"reserve": OVERHEAD + ITEM * n, "spend": OVERHEAD + ITEM * done, "refund": ITEM * (n - done)}

    def pg_balance():
        rows = db.rows("SELECT total_credits, reserved_credits, spent_credits FROM agents.credit_balances"
                       f" WHERE tenant_id = '{tenant}'")
        return rows if rows and Decimal(rows[0][1]) == 0 else None

    total, reserved, spent = (await asyncio.to_thread(eventually, pg_balance))[0]
    assert (Decimal(total), Decimal(spent)) == (Decimal(1000), OVERHEAD + ITEM * done)


async def test_an_undecodable_item_fails_for_good_alone_without_reaching_the_handler(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 100)
    job_id = spawn(server, token, [0, 1, 2])
    r = sync_redis()
    async with Client(REDIS_URL, tenant, prefix=server.prefix, api_url=server.url, token=token) as client:
        items = client.keys.job_items(job_id)
        # Another writer rewrites item 1 with bytes that are not MessagePack
        # (same index, a later entry id), as the Rust suite does.
        entries = r.xrange(items)
        entry_id, fields = next((i, f) for i, f in entries if f[b"idx"] == b"1")
        r.xdel(items, entry_id)
        last_ms = int(entries[-1][0].split(b"-")[0])
        r.xadd(items, {**fields, b"input": b"\xc1\x00"}, id=f"{last_ms + 1}-1")
        handled = []

        async def handler(item):
            handled.append(item.index)
            return item.input

        tally = await Worker(client, job_id, "py-poison", handler, batch=10).run()
        assert sorted(handled) == [0, 2], "the undecodable item reached the handler"
        assert (tally.completed, tally.failed, tally.retried) == (2, 1, 0)
        job = await client.jobs.get(job_id)
        assert (job.progress.completed, job.progress.failed, job.status) == (2, 1, "failed")
        assert job.credits.spent == OVERHEAD + ITEM * 2 and job.credits.refunded == ITEM
        dead = r.xrange(client.keys.dlq())
        assert len(dead) == 1 and b"undecodable input" in dead[0][1][b"reason"], dead
        assert dead[0][1][b"input"] == b"\xc1\x00", "the poison bytes are kept for inspection"


async def test_a_worker_rides_out_a_redis_outage_and_rewalks_what_it_held(server):
    if REDIS_URL.startswith("redis+cluster://"):
        pytest.skip("the proxy fronts one Redis (cluster nodes redirect past it); the single-Redis pass runs this")
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 1000)
    n = 300
    job_id = spawn(server, token, list(range(n)))  # 60 s per item before the reclaimer would act
    proxy = await Proxy().start()
    seen: Counter = Counter()

    async def handler(item):
        seen[item.index] += 1
        await asyncio.sleep(0.05)
        return item.input

    try:
        async with Client(proxy.url, tenant, prefix=server.prefix, api_url=server.url, token=token) as client:
            worker = Worker(client, job_id, "py-outage", handler, concurrency=2, batch=16)
            run = asyncio.create_task(worker.run())
            while len(seen) < 60:
                await asyncio.sleep(0.005)
            await proxy.cut(1.5)  # both loops hold items whose completion now fails
            tally = await asyncio.wait_for(run, 30)  # far inside the items' 60 s timeout
            job = await client.jobs.get(job_id)
    finally:
        proxy.close()
    assert tally.reconnects >= 1 and tally.rewalked >= 1, tally
    assert set(seen) == set(range(n))
    # Handlers ran again only for what the outage cut off; each item charged once.
    assert sum(seen.values()) - n <= tally.rewalked
    assert (job.status, job.progress.completed) == ("completed", n)
    assert (job.credits.spent, job.credits.still_reserved) == (OVERHEAD + ITEM * n, 0)
