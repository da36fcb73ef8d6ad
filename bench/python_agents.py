#!/usr/bin/env python3
"""Python agents, side by side in one run on one Redis (issue 19):

1. one agentbus Python worker process (clients/python, asyncio, one
   `Worker`) on a job of --items spawned through `agentbus serve`;
2. the Rust in-process worker of the same shape (`agentbus load`);
3. REST workers: --rest-workers asyncio tasks in one Python process, each
   claiming one item and completing it over HTTP (aiohttp), as a Python
   user without the package would;
4. BullMQ for Python (PyPI `bullmq`), one Worker at --bullmq-concurrency,
   on the same Redis;
5. message one-way latency received by a Python `Inbox`, sent by a Python
   agent (`send`, the message_send script) and through REST.

items/s runs from the first claim to the last completion (the Rust load
test counts its spawn too). claim→complete: for agentbus, the job scripts'
own record (delivery to completion, Redis's clock); for REST, from sending
the claim to the completion's answer; for BullMQ, from the job's
`processedOn` (set when it became active) to the `completed` event.

Usage: bench/python_agents.py BINARY [--items 100000] [--peer-items 20000]
(needs clients/python, aiohttp and bullmq installed in the running Python)
"""

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "clients" / "python" / "tests"))
from conftest import REDIS_URL, Server, sync_redis  # noqa: E402

import httpx  # noqa: E402

from agentbus import Agent, Client, Inbox, Worker, send  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("--items", type=int, default=100_000)
ap.add_argument("--peer-items", type=int, default=20_000, help="items for the REST and BullMQ runs")
ap.add_argument("--concurrency", type=int, default=8)
ap.add_argument("--batch", type=int, default=100)
ap.add_argument("--rest-workers", type=int, default=50)
ap.add_argument("--rest-wait-ms", type=int, default=200)
ap.add_argument("--bullmq-concurrency", type=int, default=50)
ap.add_argument("--messages", type=int, default=2000)
ap.add_argument("--only", default="", help="comma-separated subset: python,rust,rest,bullmq,inbox")
args = ap.parse_args()
os.environ["AGENTBUS_BIN"] = args.binary
PREFIX = "pybench"
ONLY = set(filter(None, args.only.split(",")))


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * q))] if v else float("nan")


def row(name, items, rate, lat, note=""):
    print(f"| {name} | {items} | {rate:,.0f} | {pct(lat, 0.5):.1f} ms | {pct(lat, 0.99):.1f} ms | {note} |", flush=True)


def spawn(server, token, n):
    status, job = server.call("POST", "/jobs", token, {
        "orchestrator_agent": "o", "worker_agent": "py", "task": "echo",
        "items": [{"i": i} for i in range(n)]})
    assert status == 201, job
    return job["id"]


async def python_worker(server, token):
    job_id = spawn(server, token, args.items)

    async def echo(item):
        return item.input

    async with Client(REDIS_URL, "bench", prefix=PREFIX) as client:
        t0, cpu0 = time.perf_counter(), time.process_time()
        tally = await Worker(client, job_id, "py-1", echo, concurrency=args.concurrency, batch=args.batch).run()
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert tally.completed == args.items, tally
    row("agentbus Python worker (1 process)", args.items, tally.completed / took, tally.durations_ms,
        f"{args.concurrency} loops × batch {args.batch}; {cpu / args.items * 1e6:.1f} µs CPU per item")


def rust_worker(concurrency):
    """`concurrency` is the Rust worker's handlers in flight; the Python
    worker's shape holds up to concurrency × batch."""
    env = dict(os.environ, REDIS_URL=REDIS_URL, AGENTBUS_PREFIX=PREFIX + "rust", RUST_LOG="warn")
    out = subprocess.run(
        [args.binary, "load", "--items", str(args.items), "--workers", "1", "--concurrency",
         str(concurrency), "--batch", str(args.batch), "--json"],
        env=env, check=True, capture_output=True, text=True).stdout
    report = json.loads(out[out.index("{"):])
    assert report["completed"] == args.items and report["credits_exact"], report
    c = report["claim_to_complete"]
    print(f"| agentbus Rust worker (in process) | {args.items} | {report['items_per_sec']:,.0f} | "
          f"{c['p50_ms']:.1f} ms | {c['p99_ms']:.1f} ms | {concurrency} handlers in flight, "
          f"batch {args.batch}; spawn counted |", flush=True)
    r = sync_redis()
    for k in r.scan_iter(PREFIX + "rust:*", count=1000):
        r.delete(k)


async def rest_workers(server, token):
    """aiohttp, the fastest common asyncio HTTP client (httpx measured
    here at a tenth of its rate with 50 concurrent requests)."""
    import aiohttp

    n = args.peer_items
    job_id = spawn(server, token, n)
    lat: list[float] = []
    done = 0
    base = f"{server.url}/api/v1/jobs/{job_id}"
    connector = aiohttp.TCPConnector(limit=args.rest_workers)
    async with aiohttp.ClientSession(connector=connector, headers={"authorization": f"Bearer {token}"}) as http:
        async def one(w):
            nonlocal done
            params = {"worker_instance_id": f"rest-{w}", "wait_ms": str(args.rest_wait_ms)}
            while True:
                t = time.perf_counter()
                async with http.post(f"{base}/claim", params=params) as r:
                    if r.status != 200:
                        return  # the job ended
                    claimed = await r.json()
                if not claimed["claimed"]:
                    if done >= n:
                        return
                    continue
                item = claimed["items"][0]
                async with http.post(f"{base}/items/{item['item_id']}/complete",
                                     json={"output": item["input"]}) as r:
                    assert r.status == 200, await r.text()
                lat.append((time.perf_counter() - t) * 1000)
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(w) for w in range(args.rest_workers)))
        took = time.perf_counter() - t0
    assert done == n, done
    row("REST workers (1 Python process, aiohttp)", n, n / took, lat,
        f"{args.rest_workers} workers, 1 item per claim")


async def bullmq_worker():
    from bullmq import Queue, Worker as BullWorker

    n = args.peer_items
    name = PREFIX + "-bull"
    queue = Queue(name, {"connection": REDIS_URL})
    for start in range(0, n, 1000):
        await queue.addBulk([{"name": "echo", "data": {"i": i}, "opts": {"removeOnComplete": True}}
                             for i in range(start, min(n, start + 1000))])
    lat: list[float] = []
    finished = asyncio.Event()

    async def echo(job, token):
        return job.data

    def completed(job, result):
        lat.append(time.time() * 1000 - job.processedOn)
        if len(lat) == n:
            finished.set()

    t0 = time.perf_counter()
    worker = BullWorker(name, echo, {"connection": REDIS_URL, "concurrency": args.bullmq_concurrency})
    worker.on("completed", completed)
    await finished.wait()
    took = time.perf_counter() - t0
    await worker.close()
    await queue.obliterate(force=True)
    await queue.close()
    row(f"BullMQ for Python {pkg_version('bullmq')} (1 process)", n, n / took, lat,
        f"concurrency {args.bullmq_concurrency}")


def pkg_version(name):
    from importlib.metadata import version
    return version(name)


async def inbox_latency(server, token):
    async with Client(REDIS_URL, "bench", prefix=PREFIX) as client:
        await Agent(client, "py-recv", "python").register()
        await Agent(client, "py-send", "python").register()
        inbox = Inbox(client, "py-recv", block_ms=1000)
        for source in ("send", "rest"):
            lat: list[float] = []

            async def receive():
                async for m in inbox:
                    lat.append((time.time_ns() - m.payload["t"]) / 1e6)
                    await inbox.ack(m)
                    if len(lat) == args.messages:
                        return

            reader = asyncio.create_task(receive())
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=f"{server.url}/api/v1", timeout=30,
                                         headers={"authorization": f"Bearer {token}"}) as http:
                for _ in range(args.messages):
                    if source == "send":
                        await send(client, "py-send", "py-recv", "tick", {"t": time.time_ns()})
                    else:
                        r = await http.post("/agents/py-recv/messages", json={
                            "from_instance_id": "py-send", "message_type": "tick",
                            "payload": {"t": time.time_ns()}})
                        assert r.status_code == 201, r.text
                    await asyncio.sleep(0.002)  # ~400 messages/s: latency, not throughput
            await asyncio.wait_for(reader, 30)
            how = "Python `send` (message_send script)" if source == "send" else "REST POST /agents/{id}/messages"
            print(f"| message → Python Inbox, sent by {how} | {args.messages} | "
                  f"{pct(lat, 0.5):.2f} ms | {pct(lat, 0.99):.2f} ms |", flush=True)


async def main():
    server = Server(PREFIX)
    try:
        token = server.tenant("bench", 10_000_000)
        print("| worker | items | items/s | claim→complete p50 | p99 | shape |")
        print("|---|---|---|---|---|---|")
        if not ONLY or "python" in ONLY:
            await python_worker(server, token)
        if not ONLY or "rust" in ONLY:
            for concurrency in (args.concurrency, args.concurrency * args.batch):
                await asyncio.to_thread(rust_worker, concurrency)
        if not ONLY or "rest" in ONLY:
            await rest_workers(server, token)
        if not ONLY or "bullmq" in ONLY:
            await bullmq_worker()
        if not ONLY or "inbox" in ONLY:
            print()
            print("| messages | count | one-way p50 | p99 |")
            print("|---|---|---|---|")
            await inbox_latency(server, token)
    finally:
        server.stop()
        r = sync_redis()
        for k in r.scan_iter(PREFIX + ":*", count=1000):
            r.delete(k)


asyncio.run(main())
