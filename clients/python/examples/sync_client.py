"""The blocking facade, for code that is not asyncio. Configured from the
environment (see jobs.py)."""

from agentbus import SyncClient

with SyncClient.from_env() as client:
    job = client.jobs.spawn([1, 2, 3], orchestrator_agent="o", worker_agent="py", task="x10")
    tally = client.work(job.id, "py-sync-1", lambda item: item.input * 10)  # a plain function
    print(sorted(r.output for r in client.jobs.results(job.id)))
    board = client.blackboard("scores")
    board.put("alice", 3)
    with client.lock("scores", "leader", holder="py-sync-1") as held:
        board.put("plan", {"step": 1}, fence=held.fence)
    client.agent("py-sync-1", "python").register()
    client.agent("py-sync-2", "python").register()
    client.send("py-sync-1", "py-sync-2", "note", {"hi": 1})
    inbox = client.inbox("py-sync-2")
    for message in inbox:
        print(message.sender, message.payload)
        inbox.ack(message)
        break
print("ok")
