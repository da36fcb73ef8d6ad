"""The client's prices and limits are the server's: its defaults match a
default server's answer, and a server with other prices is read, not
assumed (the scripts charge what they are given)."""

import secrets
from decimal import Decimal

from agentbus import Agent, Blackboard, Client, send
from agentbus.settings import Settings

from conftest import REDIS_URL, Server, _clean


def balance(server, token):
    return Decimal(str(server.call("GET", "/credits", token)[1]["available"]))


async def test_the_client_defaults_are_a_default_servers_settings(server):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 10)
    async with Client(REDIS_URL, tenant, prefix=server.prefix, api_url=server.url, token=token) as client:
        assert await client.load_settings() == Settings.defaults()


async def test_a_server_with_its_own_prices_is_charged_at_them():
    prefix = "py" + secrets.token_hex(4)
    server = Server(prefix, extra_env={"AGENTBUS_PRICES": "agent_message=3.5,blackboard_write=0.25",
                                       "AGENTBUS_INBOX_CAP": "50"})
    try:
        tenant = "t" + secrets.token_hex(3)
        token = server.tenant(tenant, 100)
        async with Client(REDIS_URL, tenant, prefix=prefix, api_url=server.url, token=token) as client:
            settings = await client.load_settings()
            assert (settings.price("agent_message"), settings.price("blackboard_write")) == (350, 25)
            assert settings.inbox_cap == 50 and settings.price("agent_invoke") == 1000
            await Agent(client, "a", "py").register()
            await Agent(client, "b", "py").register()
            before = balance(server, token)
            await send(client, "a", "b", "note", {"n": 1})
            assert balance(server, token) == before - Decimal("3.50")
            await Blackboard(client, "ns").put("k", 1)
            assert balance(server, token) == before - Decimal("3.75")
    finally:
        server.stop()
        _clean(prefix)
