"""agentbus for Python agents: the server's own Lua scripts over redis-py.

    from agentbus import Client, Worker

    async with Client("redis://127.0.0.1:6379", tenant="acme") as client:
        tally = await Worker(client, job_id, "py-worker-1", handler).run()
"""

from .agents import Agent, Inbox, InvokeResult, Message, invoke, send, serve_invocations
from .blackboard import Aggregate, Blackboard, Lock
from .client import Client, decode, encode
from .errors import (
    AgentbusError,
    Conflict,
    Forbidden,
    InsufficientCredits,
    Invalid,
    InvokeRefused,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    credits,
)
from .rest import Api, Balance, Cancelled, Job, Jobs, Result, Simulation
from .scripts import Answer, ContractError, Script, Scripts, parse_header
from .sync import SyncClient
from .worker import Fail, Item, Tally, Worker

__all__ = [
    "Api",
    "Balance",
    "Cancelled",
    "Forbidden",
    "Invalid",
    "InvokeRefused",
    "Job",
    "Jobs",
    "RateLimited",
    "Result",
    "ServerError",
    "Simulation",
    "SyncClient",
    "Unauthorized",
    "Unavailable",
    "Agent",
    "AgentbusError",
    "Aggregate",
    "Blackboard",
    "Lock",
    "Inbox",
    "InvokeResult",
    "Message",
    "invoke",
    "send",
    "serve_invocations",
    "Answer",
    "Client",
    "Conflict",
    "ContractError",
    "Fail",
    "InsufficientCredits",
    "Item",
    "NotFound",
    "Script",
    "Scripts",
    "Tally",
    "Worker",
    "credits",
    "decode",
    "encode",
    "parse_header",
]
