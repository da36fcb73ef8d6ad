"""Errors mirroring the server's error codes (docs/openapi.json)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class AgentbusError(Exception):
    """Base of every agentbus error."""


class NotFound(AgentbusError):
    """The thing asked for does not exist (or belongs to another tenant)."""


class Conflict(AgentbusError):
    """The operation does not apply to the current state, which is given."""

    def __init__(self, message: str, state: Any = None):
        super().__init__(message)
        self.state = state


class InsufficientCredits(AgentbusError):
    """A reservation or charge that does not fit the tenant's balance."""

    def __init__(self, required: Decimal, available: Decimal):
        super().__init__(f"insufficient credits: required {required}, available {available}")
        self.required, self.available = required, available


def credits(minor: int) -> Decimal:
    """Minor units (hundredths) as credits: exact, never a float."""
    return Decimal(minor).scaleb(-2)
