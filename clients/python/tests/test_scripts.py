"""The bundled scripts are the repository's, assembled as the server
assembles them, and calls are checked against their headers."""

import pathlib

import pytest

from agentbus import ContractError, Scripts, parse_header
from agentbus.client import scripts

from conftest import REPO

def test_the_installed_scripts_are_the_repositorys():
    from agentbus.scripts import lua_dir

    installed = pathlib.Path(str(lua_dir()))
    assert installed != REPO / "lua", "the package under test carries no scripts of its own"
    repo = {p.relative_to(REPO / "lua"): p.read_bytes() for p in (REPO / "lua").rglob("*.lua")}
    bundled = {p.relative_to(installed): p.read_bytes() for p in installed.rglob("*.lua")}
    assert repo.keys() == bundled.keys()
    stale = [str(k) for k in repo if repo[k] != bundled[k]]
    assert not stale, f"installed scripts differ from lua/ ({stale}): reinstall the package"


def test_each_script_assembles_to_the_servers_sha(contract):
    s = scripts()
    assert {x.name for x in s} == set(contract["script_sha1"])
    for script in s:
        assert script.sha == contract["script_sha1"][script.name], script.name


def test_layouts_come_first_and_groups_repeat():
    s = Scripts()
    assert s.job_complete.header.keys[:3] == ["credits", "outbox", "job"]
    assert s.job_complete.header.args[:4] == ["event_base", "tenant", "job_id", "retention"]
    assert s.job_complete.header.arg_group == ["entry", "output"]
    assert s.message_broadcast.header.key_group == ["agent", "inbox"]


async def test_a_call_against_its_header_is_refused_before_sending():
    s = Scripts()

    class NoRedis:
        async def evalsha(self, *a):
            raise AssertionError("sent")

    with pytest.raises(ContractError, match="ARGV"):
        await s.outbox_ack(NoRedis(), [("outbox", "k")], [("entry", "1-0")])
    with pytest.raises(ContractError, match="KEYS"):
        await s.credits_flush(NoRedis(), [("credits", "c")], [])


def test_replies_are_parsed_against_their_shape():
    s = Scripts()
    ok = s.credits_move.parse([b"ok", 500, 100, 200])
    assert (ok.tag, ok["total"], ok["spent"]) == ("ok", 500, 200)
    with pytest.raises(ContractError):
        ok["required"]
    with pytest.raises(ContractError):
        s.credits_move.parse([b"ok", 1])
    with pytest.raises(ContractError):
        s.credits_move.parse([b"nope"])
    assert s.job_claim.parse([b"ok"])["entries"] == []
    assert s.credits_flush.parse(7)["value"] == 7


def test_the_header_grammar():
    h = parse_header(
        "-- x: prose\n-- @include common job\n-- @layout job\n-- @key a the a\n"
        "-- @arg b the b\n-- @arg (c, d)... pairs\n-- @reply ok(n:int, s:text) fine\n"
        "-- @reply missing\nlocal x = 1\n-- @key not_header\n"
    )
    assert h.includes == ["common", "job"] and h.layouts == ["job"]
    assert h.keys == ["a"] and h.args == ["b"] and h.arg_group == ["c", "d"]
    assert [r.tag for r in h.replies] == ["ok", "missing"]
    assert h.replies[0].fields == (("n", "int"), ("s", "text"))
    with pytest.raises(ContractError):
        parse_header("-- @frobnicate\n")


async def test_a_flushed_script_cache_is_refilled(server):
    """After SCRIPT FLUSH (or a Redis restart) the first call answers
    NOSCRIPT: the script is sent again and the call succeeds."""
    from agentbus import Client
    from conftest import REDIS_URL, sync_redis

    async with Client(REDIS_URL, "flush", prefix=server.prefix) as client:
        r = sync_redis()
        r.script_flush()  # on a cluster, redis-py sends it to every primary
        k = client.keys
        answer = await client.scripts.credits_flush(
            client.redis, [("credits", k.credits()), ("outbox", k.outbox())],
            [("event_base", "e"), ("tenant", "flush")],
        )
        assert answer["value"] == 0
