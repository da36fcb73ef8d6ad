"""Errors mirroring the server's error codes (the `error.code` of every
REST error body, docs/openapi.json), raised alike whether a call went
through REST or through the scripts."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class AgentbusError(Exception):
    """Base of every agentbus error. ``code`` is the server's error code."""

    code = "error"

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class Invalid(AgentbusError, ValueError):
    """Bad input; ``field`` names it (``body``/``query`` for the whole)."""

    code = "invalid"

    def __init__(self, message: str, field: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.field = field


class Unauthorized(AgentbusError):
    code = "unauthorized"


class Forbidden(AgentbusError):
    code = "forbidden"


class NotFound(AgentbusError):
    """The thing asked for does not exist (or belongs to another tenant)."""

    code = "not_found"


class Conflict(AgentbusError):
    """The operation does not apply to the current state, which is given."""

    code = "conflict"

    def __init__(self, message: str, state: Any = None, **kw: Any):
        super().__init__(message, **kw)
        self.state = state


class InsufficientCredits(AgentbusError):
    """A reservation or charge that does not fit the tenant's balance."""

    code = "insufficient_credits"

    def __init__(self, required: Decimal, available: Decimal, **kw: Any):
        super().__init__(f"insufficient credits: required {required}, available {available}", **kw)
        self.required, self.available = required, available


class InvokeRefused(AgentbusError):
    """An invocation refused before it ran; it is audited as ``invoke_id``
    and ``cause`` is the underlying error (no credit, no such target...)."""

    code = "invoke_refused"

    def __init__(self, invoke_id: str, reason: str, cause: AgentbusError):
        super().__init__(f"invocation {invoke_id} refused ({reason}): {cause}", status=cause.status)
        self.invoke_id, self.reason, self.cause = invoke_id, reason, cause


class RateLimited(AgentbusError):
    """Too many requests (``rate_limited``) or a tenant limit reached
    (``limit_reached``); retry after ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unavailable(AgentbusError):
    """A backing service is down or the server is shedding load
    (``unavailable``, ``busy``); safe to retry later."""

    code = "unavailable"

    def __init__(self, message: str, retry_after: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(AgentbusError):
    """Anything else the server answered (``internal``, or a code this
    client does not know)."""

    code = "internal"


def credits(minor: int) -> Decimal:
    """Minor units (hundredths) as credits: exact, never a float."""
    return Decimal(minor).scaleb(-2)


def decimal(value: Any) -> Decimal:
    """A JSON number (parsed as Decimal or int) as credits, exactly."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, str)):
        return Decimal(value)
    raise TypeError(f"not an exact number: {value!r}")


def from_response(status: int, body: Any, retry_after: str | None = None) -> AgentbusError:
    """The exception for a REST error: ``{"error": {"code", "message",
    "field"?, "required"?, "available"?, "invoke_id"?, "reason"?},
    "current"?}``."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return ServerError(f"HTTP {status}: {str(body)[:200]}", status=status)
    code, message = err.get("code"), str(err.get("message", ""))
    after = int(retry_after) if retry_after and retry_after.isdigit() else None
    e: AgentbusError
    if code == "invalid":
        e = Invalid(message, err.get("field"), status=status)
    elif code == "not_found":
        e = NotFound(message, status=status)
    elif code == "insufficient_credits":
        e = InsufficientCredits(decimal(err["required"]), decimal(err["available"]), status=status)
    elif code == "conflict":
        e = Conflict(message, body.get("current"), status=status)
    elif code in ("rate_limited", "limit_reached"):
        e = RateLimited(message, after, status=status)
        e.code = code
    elif code in ("unavailable", "busy"):
        e = Unavailable(message, after, status=status)
        e.code = code
    elif code == "unauthorized":
        e = Unauthorized(message, status=status)
    elif code == "forbidden":
        e = Forbidden(message, status=status)
    else:
        e = ServerError(f"{code}: {message}", status=status)
    if err.get("invoke_id"):
        return InvokeRefused(err["invoke_id"], str(err.get("reason", "")), e)
    return e
