#!/usr/bin/env python3
"""One Python worker process (clients/python, asyncio) on a job of N items
spawned through `agentbus serve`: items/s from the first claim to the last
completion, and claim→complete p50/p99 (the job scripts' own per-item
delivery-to-completion ms).

Usage: bench/python_worker.py BINARY [--items 100000] [--concurrency 8] [--batch 100]
(needs the package installed: pip install ./clients/python)"""

import argparse
import asyncio
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "clients" / "python" / "tests"))
from conftest import REDIS_URL, Server  # noqa: E402

from agentbus import Client, Worker  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("--items", type=int, default=100000)
ap.add_argument("--concurrency", type=int, default=8)
ap.add_argument("--batch", type=int, default=100)
args = ap.parse_args()
os.environ["AGENTBUS_BIN"] = args.binary


async def main():
    server = Server("pybench")
    try:
        token = server.tenant("bench", 10_000_000)
        status, job = server.call("POST", "/jobs", token, {
            "orchestrator_agent": "o", "worker_agent": "py", "task": "echo",
            "items": [{"i": i} for i in range(args.items)]})
        assert status == 201, job

        async def echo(item):
            return item.input

        async with Client(REDIS_URL, "bench", prefix="pybench") as client:
            t0 = time.perf_counter()
            tally = await Worker(client, job["id"], "py-1", echo, concurrency=args.concurrency,
                                 batch=args.batch).run()
            took = time.perf_counter() - t0
        d = sorted(tally.durations_ms)
        print(f"| {args.items} | {args.concurrency}/{args.batch} | {tally.completed / took:.0f} | "
              f"{statistics.median(d):.0f} ms | {d[int(len(d) * 0.99) - 1]:.0f} ms |")
        assert tally.completed == args.items
    finally:
        server.stop()
        from conftest import sync_redis
        r = sync_redis()
        for k in r.scan_iter("pybench:*", count=1000):
            r.delete(k)


asyncio.run(main())
