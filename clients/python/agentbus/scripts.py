"""The Lua scripts and their contracts, read from the scripts' own headers.

Each ``lua/<name>.lua`` declares in ``@`` lines what it includes, its KEYS
and ARGV by name and the shapes of its replies (the grammar of
src/scripts/header.rs, documented in docs/wire-protocol.md, "Script
headers"). This module parses the same lines the Rust server's build does,
assembles each script from its includes, and calls it with keys and
arguments given by name, checked against the header before anything is
sent; a reply is parsed against the declared shapes into an :class:`Answer`.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping, Sequence

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from .keys import ready_signal

_log = logging.getLogger("agentbus")

TYPES = {"int", "text", "texts", "ints", "raw", "rest"}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ContractError(Exception):
    """A call or a reply that does not match the script's header."""


@dataclass(frozen=True)
class Shape:
    tag: str | None
    fields: tuple[tuple[str, str], ...] = ()
    bare: str | None = None


@dataclass
class Header:
    includes: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    key_group: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    arg_group: list[str] = field(default_factory=list)
    replies: list[Shape] = field(default_factory=list)


def _names(rest: str) -> tuple[list[str], bool]:
    rest = rest.lstrip()
    if rest.startswith("("):
        close = rest.index(")")
        if not rest[close + 1 :].startswith("..."):
            raise ContractError("a (…) group must be followed by ...")
        names = [n.strip() for n in rest[1:close].split(",")]
        group = True
    else:
        word = rest.split()[0]
        group = word.endswith("...")
        names = [word[:-3] if group else word]
    for n in names:
        if not _NAME.match(n):
            raise ContractError(f"{n!r} is not a snake_case name")
    return names, group


def _fields(spec: str) -> tuple[tuple[str, str], ...]:
    inner = spec[1 : spec.index(")")]
    out = []
    for f in inner.split(","):
        name, _, ty = f.strip().partition(":")
        if ty.strip() not in TYPES:
            raise ContractError(f"unknown type {ty!r}")
        out.append((name.strip(), ty.strip()))
    return tuple(out)


def parse_header(source: str) -> Header:
    """The ``@`` lines of the leading comment of ``source``."""
    h = Header()
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        text = line.lstrip("-").lstrip()
        if not text.startswith("@"):
            continue
        tag, _, rest = text[1:].partition(" ")
        if tag == "include":
            h.includes += rest.split()
        elif tag == "layout":
            h.layouts += rest.split()
        elif tag in ("key", "arg"):
            names, group = _names(rest)
            fixed, rep = (h.keys, h.key_group) if tag == "key" else (h.args, h.arg_group)
            if rep:
                raise ContractError(f"@{tag} after its repeating group")
            (rep if group else fixed).extend(names)
        elif tag == "reply":
            spec = rest.lstrip()
            m = re.match(r"[a-z][a-z0-9_]*", spec)
            if not m:
                raise ContractError(f"bad reply {spec!r}")
            after = spec[m.end() :]
            fields = _fields(after) if after.startswith("(") else ()
            h.replies.append(Shape(m.group(0), fields))
        elif tag == "returns":
            spec = rest.lstrip()
            if spec.startswith("("):
                h.replies.append(Shape(None, _fields(spec)))
            else:
                h.replies.append(Shape(None, (), spec.split()[0]))
        else:
            raise ContractError(f"unknown tag @{tag}")
    return h


def _slot(fixed: Sequence[str], group: Sequence[str], i: int) -> str | None:
    if i < len(fixed):
        return fixed[i]
    if not group:
        return None
    return group[(i - len(fixed)) % len(group)]


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (str, int)):
        return str(v)
    raise ContractError(f"{v!r} is not text")


def _int(v: Any) -> int:
    if isinstance(v, int):
        return v
    return int(_text(v))


@dataclass
class Answer:
    """A reply parsed against its declared shape: ``tag`` and named fields."""

    script: str
    tag: str
    fields: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        if name not in self.fields:
            raise ContractError(f"{self.script}'s reply {self.tag!r} has no field {name!r}")
        return self.fields[name]


class Script:
    """One script: its header, its assembled text, and typed calls."""

    def __init__(self, name: str, header: Header, text: str):
        self.name, self.header, self.text = name, header, text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def _check(self, names: Sequence[str], fixed: Sequence[str], group: Sequence[str], what: str):
        for i, n in enumerate(names):
            expected = _slot(fixed, group, i)
            if expected != n:
                raise ContractError(f"{self.name}: {what}[{i + 1}] is {expected!r}, given as {n!r}")
        extra = len(names) - len(fixed)
        if extra < 0 or (extra and not group) or (group and extra % len(group)):
            raise ContractError(f"{self.name}: {len(names)} {what} do not fill {fixed}")

    def parse(self, value: Any) -> Answer:
        shapes = self.header.replies
        if len(shapes) == 1 and shapes[0].bare:
            return Answer(self.name, "", {"value": _int(value) if shapes[0].bare == "int" else value})
        if not isinstance(value, list):
            raise ContractError(f"{self.name} replied {value!r}")
        items = list(value)
        if len(shapes) == 1 and shapes[0].tag is None:
            shape = shapes[0]
        else:
            tag = _text(items[0]) if items else None
            shape = next((s for s in shapes if s.tag == tag), None)
            if shape is None:
                raise ContractError(f"{self.name} replied an undeclared tag {tag!r}")
            items = items[1:]
        open_ = bool(shape.fields) and shape.fields[-1][1] == "rest"
        if (open_ and len(items) + 1 < len(shape.fields)) or (not open_ and len(items) != len(shape.fields)):
            raise ContractError(f"{self.name} replied {len(items)} elements for {shape}")
        out: dict[str, Any] = {}
        for i, (name, ty) in enumerate(shape.fields):
            v = items[i] if ty != "rest" else items[i:]
            out[name] = {
                "int": _int,
                "text": _text,
                "texts": lambda x: [_text(e) for e in (x or [])],
                "ints": lambda x: [_int(e) for e in (x or [])],
                "raw": lambda x: x,
                "rest": lambda x: x,
            }[ty](v)
        return Answer(self.name, shape.tag or "", out)

    async def __call__(
        self,
        redis: Any,
        keys: Sequence[tuple[str, str]],
        args: Sequence[tuple[str, Any]],
        due: Sequence[tuple[str, str, int]] = (),
    ) -> Answer:
        """Runs the script (EVALSHA, loaded again on NOSCRIPT) with ``keys``
        and ``args`` as (header name, value) pairs, in order; then, if it
        answered ``ok``, writes each (key, tenant, at_ms) of ``due``, a
        background chore's deadline (keys.due_key, ``ZADD LT``), as the
        server does (a refused call creates none and changes nothing)."""
        h = self.header
        self._check([k for k, _ in keys], h.keys, h.key_group, "KEYS")
        self._check([a for a, _ in args], h.args, h.arg_group, "ARGV")
        key_values = [v for _, v in keys]
        arg_values = [v for _, v in args]
        # A call that writes a tenant's outbox tells the sink, as the server
        # does (keys.rs ready_signal): it visits only signalled tenants.
        outbox = next((v for name, v in keys if name == "outbox"), None)
        signal = ready_signal(outbox) if isinstance(outbox, str) else None
        followers: list[tuple[str, str, int, bool]] = []
        if signal is not None:
            followers.append((signal[0], signal[1], _now_ms(), True))
        followed: list[Any] = []
        if followers and not isinstance(redis, RedisCluster):
            # One round trip: the script, then what follows it. (A cluster
            # sends them apart: their keys are not in the tenant's slot.)
            pipe = redis.pipeline(transaction=False)
            pipe.evalsha(self.sha, len(key_values), *key_values, *arg_values)
            for f in followers:
                _zadd(pipe, f)
            value, *followed = await pipe.execute(raise_on_error=False)
            if isinstance(value, Exception):
                if not _no_script(value):
                    raise value
                value = await redis.eval(self.text, len(key_values), *key_values, *arg_values)
                followed = [await _follow(redis, f) for f in followers]
        else:
            try:
                value = await redis.evalsha(self.sha, len(key_values), *key_values, *arg_values)
            except Exception as e:
                if not _no_script(e):
                    raise
                # EVAL caches the script on the node that runs it (the one
                # owning the keys' slot, on a cluster).
                value = await redis.eval(self.text, len(key_values), *key_values, *arg_values)
            followed = [await _follow(redis, f) for f in followers]
        answer = self.parse(value)
        if due and answer.tag == "ok":
            followed += [await _follow(redis, (k, t, at, False)) for k, t, at in due]
        for f in followed:
            if isinstance(f, Exception):
                # The script ran: its answer stands; a sweep finds what the
                # signal or deadline would have pointed at.
                _log.warning("sink signal or deadline not written after %s: %s", self.name, f)
        return answer


def _no_script(e: BaseException) -> bool:
    return isinstance(e, NoScriptError) or "NOSCRIPT" in str(e)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _zadd(redis: Any, follower: tuple[str, str, int, bool]) -> Any:
    """A ready signal (``ZADD NX``: the first time stays) or a deadline
    (``ZADD LT``: the earliest stays)."""
    key, tenant, at, signal = follower
    return redis.zadd(key, {tenant: at}, nx=signal, lt=not signal)


async def _follow(redis: Any, follower: tuple[str, str, int, bool]) -> Any:
    """Writes a signal or deadline; a failure is returned, not raised."""
    try:
        return await _zadd(redis, follower)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return e


def lua_dir() -> Any:
    """The scripts: those the package was built with (setup.py copies the
    repository's lua/ in), or, run from a checkout, the repository's own."""
    bundled = resources.files("agentbus").joinpath("lua")
    if bundled.is_dir():
        return bundled
    checkout = pathlib.Path(__file__).resolve().parents[3] / "lua"
    if checkout.is_dir():
        return checkout
    raise ContractError("no Lua scripts: build the package from the agentbus repository")


def _read(path: str) -> str:
    return lua_dir().joinpath(path).read_text()


def load_all() -> dict[str, Script]:
    """Every bundled script, assembled from the includes its header names."""
    out = {}
    for entry in sorted(lua_dir().iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".lua"):
            continue
        name = entry.name[:-4]
        source = entry.read_text()
        h = parse_header(source)
        keys: list[str] = []
        args: list[str] = []
        for layout in h.layouts:
            lh = parse_header(_read(f"include/{layout}.lua"))
            keys += lh.keys
            args += lh.args
        h.keys, h.args = keys + h.keys, args + h.args
        text = "".join(_read(f"include/{i}.lua") for i in h.includes if i != "none") + source
        out[name] = Script(name, h, text)
    return out


class Scripts:
    """The scripts by attribute: ``scripts.job_claim(...)``."""

    def __init__(self) -> None:
        self._all = load_all()

    def __getattr__(self, name: str) -> Script:
        try:
            return self._all[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self):
        return iter(self._all.values())

    def __len__(self) -> int:
        return len(self._all)


def pairs(names: Sequence[str], values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) pairs in the order of ``names``."""
    return [(n, values[n]) for n in names]
