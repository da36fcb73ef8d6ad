"""What a client working through the scripts must agree on with the server:
prices (the scripts charge what they are given) and the limits the server
passes its scripts. :meth:`Settings.defaults` are the server's defaults;
``await client.load_settings()`` reads the running server's
(``GET /api/v1/settings``), which matters when it runs with
``AGENTBUS_PRICES`` or other limits."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

#: The server's default prices, in hundredths (src/prices.rs).
DEFAULT_PRICES = {
    "agent_spawn": 500,
    "agent_invoke": 1000,
    "agent_message": 200,
    "blackboard_read": 100,
    "blackboard_write": 100,
    "blackboard_lock": 200,
    "job_item": 200,
}


@dataclass
class Settings:
    prices_minor: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    job_retention_secs: int = 86_400
    max_items: int = 100_000
    max_payload_bytes: int = 1024 * 1024
    max_instances: int = 10_000
    stale_after_secs: int = 60
    inbox_cap: int = 10_000
    max_deliveries: int = 5
    redeliver_after_ms: int = 30_000
    invoke_retention_secs: int = 3600

    @classmethod
    def defaults(cls) -> "Settings":
        return cls()

    @classmethod
    def of(cls, d: dict[str, Any]) -> "Settings":
        """From the server's answer; a field it does not send keeps its default."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["prices_minor"] = {k: int(v) for k, v in d.get("prices_minor", DEFAULT_PRICES).items()}
        for k, v in values.items():
            if k != "prices_minor":
                values[k] = int(v)
        return cls(**values)

    def price(self, skill: str) -> int:
        return self.prices_minor[skill]
