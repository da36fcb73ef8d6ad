"""The README's examples run: each is a script under examples/, run here
against a live server as a user would (configured from the environment),
and every Python block of the README is quoted from one of them."""

import os
import pathlib
import re
import secrets
import subprocess
import sys
import textwrap

import pytest

from conftest import REDIS_URL

HERE = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((HERE / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_example_runs(server, example):
    tenant = "t" + secrets.token_hex(3)
    token = server.tenant(tenant, 1000)
    env = dict(os.environ, REDIS_URL=REDIS_URL, AGENTBUS_TENANT=tenant, AGENTBUS_PREFIX=server.prefix,
               AGENTBUS_URL=server.url, AGENTBUS_TOKEN=token)
    run = subprocess.run([sys.executable, str(example)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "ok", run.stdout


def _quoted(block: str, source: str) -> bool:
    """Whether ``block`` is a run of whole lines of ``source`` (indentation
    removed from both)."""
    want = textwrap.dedent(block).splitlines()
    lines = source.splitlines()
    return any(
        textwrap.dedent("\n".join(lines[i : i + len(want)])).splitlines() == want
        for i in range(len(lines) - len(want) + 1)
    )


def test_every_readme_block_is_quoted_from_an_example():
    readme = (HERE / "README.md").read_text()
    sources = [p.read_text() for p in EXAMPLES]
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 5
    for block in blocks:
        assert any(_quoted(block, source) for source in sources), f"not in examples/:\n{block}"
