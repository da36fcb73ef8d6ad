"""Python agents and the Rust server, both ways: invocations (charged once,
answered or timed out), messages, and poison payloads dead-lettered alone."""

import asyncio
import json
import secrets
import threading
from decimal import Decimal

from agentbus import Agent, Blackboard, Client, Inbox, InvokeRefused, NotFound, invoke, send, serve_invocations

from conftest import REDIS_URL, Server, _clean, audit_row, eventually, sync_redis

INVOKE, MESSAGE = Decimal("10.00"), Decimal("2.00")  # the server's default prices


def register_rest(server, token, instance, agent="rust"):
    status, body = server.call("POST", "/agents/register", token, {"agent_id": agent, "instance_id": instance})
    assert status == 201, body


def available(server, token):
    return Decimal(str(server.call("GET", "/credits", token)[1]["available"]))


async def test_the_rust_server_invokes_a_python_agent(server_pg):
    server = server_pg
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 100)
    register_rest(server, token, "rust-caller")
    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        await Agent(client, "py-target", "python").register()

        async def answer(payload):
            if payload.get("fail"):
                raise ValueError("asked to fail")
            return {"echo": payload["x"], "by": "python"}

        serving = asyncio.create_task(serve_invocations(client, "py-target", answer))
        before = available(server, token)
        body = {"caller_instance_id": "rust-caller", "target_instance_id": "py-target",
                "request_payload": {"x": 7}, "timeout_seconds": 10}
        status, result = await asyncio.to_thread(server.call, "POST", "/invocations", token, body)
        assert status == 200, result
        assert result["success"] is True and result["response_payload"] == {"echo": 7, "by": "python"}
        assert available(server, token) == before - INVOKE
        answered = result["invoke_id"]
        status, result = await asyncio.to_thread(
            server.call, "POST", "/invocations", token, {**body, "request_payload": {"fail": True}})
        assert result["success"] is False and "asked to fail" in result["error"]
        assert available(server, token) == before - INVOKE, "a failed invocation is not charged"
        failed = result["invoke_id"]
        serving.cancel()
    # The audit trail in Postgres, as the sink mirrored it.
    row = await asyncio.to_thread(eventually, lambda: audit_row(server.database, answered))
    assert (row["caller_instance_id"], row["target_instance_id"], row["status"]) == ("rust-caller", "py-target", "completed")
    assert (Decimal(row["credits_charged"]), row["tenant_id"]) == (INVOKE, tenant)
    assert json.loads(row["request_payload"]) == {"x": 7}
    assert json.loads(row["response_payload"]) == {"echo": 7, "by": "python"}
    row = await asyncio.to_thread(eventually, lambda: audit_row(server.database, failed))
    assert row["status"] == "failed" and "asked to fail" in row["error_message"]
    assert Decimal(row["credits_charged"] or 0) == 0


async def test_a_python_agent_invokes_one_the_rust_server_answers(server_pg):
    server = server_pg
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 100)
    register_rest(server, token, "rust-target")
    stop = threading.Event()

    def rust_side():
        # The target answers through the REST API (the Rust code path).
        while not stop.is_set():
            status, got = server.call("POST", "/agents/rust-target/messages/receive?wait_ms=200", token)
            for m in got.get("messages", []):
                if m.get("invoke_id"):
                    server.call("POST", "/invocations/respond", token,
                                {"invoke_id": m["invoke_id"], "response_payload": {"sum": sum(m["payload"])}})
                server.call("POST", f"/agents/rust-target/messages/{m['message_id']}/read", token)

    t = threading.Thread(target=rust_side, daemon=True)
    t.start()
    try:
        async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
            await Agent(client, "py-caller", "python").register()
            before = available(server, token)
            results = await asyncio.gather(*(invoke(client, "py-caller", "rust-target", [i, 1, 2]) for i in range(5)))
            assert [r.response for r in results] == [{"sum": i + 3} for i in range(5)]
            assert all(r.success for r in results)
            assert available(server, token) == before - 5 * INVOKE
            # Nobody answers an unknown instance: refused before anything is reserved.
            try:
                await invoke(client, "py-caller", "nobody", 1, timeout=1)
                raise AssertionError("an unknown target was invoked")
            except InvokeRefused as e:
                # As REST answers it: audited under an id, the cause typed.
                assert isinstance(e.cause, NotFound) and e.reason == "unknown_target"
                assert e.invoke_id.startswith("inv_")
                refused = e.invoke_id
            assert available(server, token) == before - 5 * INVOKE
    finally:
        stop.set()
        t.join(5)
    for r, i in zip(results, range(5)):
        row = await asyncio.to_thread(eventually, lambda: audit_row(server.database, r.invoke_id))
        assert (row["caller_instance_id"], row["target_instance_id"], row["status"]) == ("py-caller", "rust-target", "completed")
        assert (Decimal(row["credits_charged"]), row["tenant_id"]) == (INVOKE, tenant)
        assert json.loads(row["request_payload"]) == [i, 1, 2]
        assert json.loads(row["response_payload"]) == {"sum": i + 3}
    row = await asyncio.to_thread(eventually, lambda: audit_row(server.database, refused))
    assert (row["target_instance_id"], row["status"]) == ("nobody", "failed")
    assert "unknown_target" in row["error_message"]


async def test_a_silent_target_times_out_and_its_reservation_comes_back(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 100)
    register_rest(server, token, "silent")
    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        await Agent(client, "py-caller", "python").register()
        before = available(server, token)
        result = await invoke(client, "py-caller", "silent", {"q": 1}, timeout=0.5)
        assert (result.success, result.error) == (False, "timeout")
        assert available(server, token) == before
        status, live = server.call("GET", "/credits", token)
        assert Decimal(str(live["reserved"])) == 0


async def test_messages_both_ways_and_poison_dead_lettered_alone(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 100)
    register_rest(server, token, "rust-agent")
    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        await Agent(client, "py-agent", "python").register()
        # Rust → Python, with a poison entry between two good ones.
        status, _ = server.call("POST", "/agents/py-agent/messages", token,
                                {"from_instance_id": "rust-agent", "message_type": "note", "payload": {"n": 1}})
        assert status == 201, _
        r = sync_redis()
        r.xadd(client.keys.inbox("py-agent"), {"id": "bad", "from": "x", "type": "note", "payload": b"\xc1"})
        status, _ = server.call("POST", "/agents/py-agent/messages", token,
                                {"from_instance_id": "rust-agent", "message_type": "note", "payload": {"n": 2}})
        inbox = Inbox(client, "py-agent", block_ms=200)
        got = []
        while len(got) < 2:
            for m in await inbox.receive():
                got.append(m)
                await inbox.ack(m)
        assert [(m.sender, m.type, m.payload) for m in got] == [("rust-agent", "note", {"n": 1}),
                                                                ("rust-agent", "note", {"n": 2})]
        dead = r.xrange(client.keys.dlq())
        assert len(dead) == 1 and b"undecodable payload" in dead[0][1][b"reason"], dead
        # Python → Rust, charged like any message.
        before = available(server, token)
        await send(client, "py-agent", "rust-agent", "hello", {"from": "python"})
        status, got = server.call("POST", "/agents/rust-agent/messages/receive", token)
        assert [(m["from_instance_id"], m["payload"]) for m in got["messages"]] == [("py-agent", {"from": "python"})]
        assert available(server, token) == before - MESSAGE


async def test_a_message_marked_read_before_delivery_never_reaches_a_python_inbox(server):
    """The original's flow (list the inbox, mark one read) on the server;
    the Python Inbox honours the mark: it is acknowledged, never handed out."""
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 100)
    register_rest(server, token, "rust-agent")
    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        await Agent(client, "py-reader", "python").register()
        for n in range(3):
            status, _ = server.call("POST", "/agents/py-reader/messages", token,
                                    {"from_instance_id": "rust-agent", "message_type": "note", "payload": {"n": n}})
            assert status == 201, _
        status, listed = server.call("GET", "/agents/py-reader/messages?status=pending", token)
        assert listed["count"] == 3, listed
        skipped = listed["messages"][1]["message_id"]
        status, body = server.call("POST", f"/agents/py-reader/messages/{skipped}/read", token)
        assert status == 200, body
        inbox = Inbox(client, "py-reader", block_ms=200)
        got = []
        for _ in range(5):
            for m in await inbox.receive():
                got.append(m)
                await inbox.ack(m)
        assert [m.payload["n"] for m in got] == [0, 2]
        r = sync_redis()
        assert r.exists(client.keys.inbox_read_early("py-reader")) == 0, "the mark is settled"
        assert r.xpending(client.keys.inbox("py-reader"), "inbox")["pending"] == 0
        status, listed = server.call("GET", "/agents/py-reader/messages?status=read", token)
        assert listed["count"] == 3, listed


async def test_a_python_write_reaches_postgres_through_its_ready_signal(server_pg):
    """Nothing but the Python client writes after the grant: its message's
    charge reaches the ledger because the client signals the sink as the
    server does (the sink's sweep is minutes away)."""
    server = server_pg
    tenant = "t" + secrets.token_hex(3)
    server.tenant(tenant, 100)
    db = server.database

    def skills():
        return sorted(r[0] for r in db.rows(
            f"SELECT skill FROM agents.credit_ledger WHERE tenant_id = '{tenant}'"))

    await asyncio.to_thread(eventually, lambda: skills() == ["grant"])
    async with Client(REDIS_URL, tenant, prefix=server.prefix) as client:
        await Agent(client, "py-a", "python").register()
        await Agent(client, "py-b", "python").register()
        await send(client, "py-a", "py-b", "note", {"n": 1})
    got = await asyncio.to_thread(eventually, lambda: len(skills()) == 2 and skills(), 10)
    assert got == ["agent_message", "grant"], got


async def test_the_servers_reaper_finds_what_python_calls_left_by_their_deadlines():
    # The server sweeps every tenant only at start (and then in an hour):
    # it reaches this tenant only through the deadlines the client writes.
    prefix = "py" + secrets.token_hex(4)
    server = Server(prefix, extra_env={"AGENTBUS_STALE_AFTER_SECS": "1", "AGENTBUS_REAP_INTERVAL_MS": "100",
                                       "AGENTBUS_SWEEP_SECS": "3600"})
    try:
        tenant = "t" + secrets.token_hex(3)
        token = server.tenant(tenant, 100)
        async with Client(REDIS_URL, tenant, prefix=prefix, api_url=server.url, token=token) as client:
            await client.load_settings()
            await Agent(client, "silent", "py").register()
            board = Blackboard(client, "ns")
            await board.get("k")  # metered: the server's reaper turns it into a ledger event
            await board.put("short", 1, ttl_ms=300)
            r = sync_redis()
            unbilled = client.keys.credits()
            await asyncio.to_thread(
                eventually, lambda: r.hget(unbilled, "unbilled:blackboard_read") == b"0", 5)
            await asyncio.to_thread(
                eventually, lambda: (server.call("GET", "/agents/silent", token)[1] or {}).get("status") == "stale", 5)
            await asyncio.to_thread(eventually, lambda: r.zcard(client.keys.blackboard("ns").exp) == 0, 5)
    finally:
        server.stop()
        _clean(prefix)
