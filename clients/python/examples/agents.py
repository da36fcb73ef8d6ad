"""Agents: register, answer invocations, invoke, send and read messages.
Configured from the environment (see jobs.py)."""

import asyncio

from agentbus import Agent, Client, Inbox, invoke, send, serve_invocations


async def main():
    async with Client.from_env() as client:
        await Agent(client, "py-1", agent_id="python").register()
        await Agent(client, "py-2", agent_id="python").register()

        # Answer invocations addressed to py-2 (a raised exception is the error).
        async def answer(payload):
            return {"echo": payload}

        serving = asyncio.create_task(serve_invocations(client, "py-2", answer))

        # Call another agent: the price is reserved, charged only on success.
        result = await invoke(client, "py-1", "py-2", {"q": 1}, timeout=10)
        print(result.success, result.response, result.error)
        serving.cancel()

        # Messages: charged when sent; an inbox yields typed messages, ack after.
        await send(client, "py-2", "py-1", "note", {"hello": "from python"})
        inbox = Inbox(client, "py-1")
        async for message in inbox:
            print(message.sender, message.type, message.payload)
            await inbox.ack(message)
            break
    print("ok")


asyncio.run(main())
