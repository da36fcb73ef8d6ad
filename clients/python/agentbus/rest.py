"""The REST calls a Python agent needs that are not scripts: spawning,
simulating, reading and cancelling jobs, and the credit balance.

The server defines these as REST (spawn validates the whole spec, simulate
reads history from Postgres), so :class:`Jobs` calls the API over httpx
rather than running ``job_spawn`` itself. Every number that is money is
parsed from the JSON text as :class:`decimal.Decimal`; every error body
becomes the exception of its code (:mod:`agentbus.errors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator

import httpx

from .errors import Invalid, decimal, from_response

#: Most results the server returns in one page.
RESULTS_PAGE = 1000


class Api:
    """A tenant's (or the admin's) view of ``/api/v1`` at ``base_url``,
    authenticated with ``token``."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1",
            headers={"authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "Api":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def request(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        """The decoded JSON answer; an error answer raises its exception."""
        content = None if body is None else json.dumps(body, default=_exact).encode()
        headers = {"content-type": "application/json"} if content is not None else None
        r = await self.http.request(method, path, content=content, params=params, headers=headers)
        data = json.loads(r.content, parse_float=Decimal) if r.content else None
        if r.is_error:
            raise from_response(r.status_code, data, r.headers.get("retry-after"))
        return data

    async def balance(self) -> "Balance":
        return Balance.of(await self.request("GET", "/credits"))

    async def grant(self, tenant: str, amount: Decimal | int | str, reason: str | None = None) -> "Balance":
        """Admin only: adds ``amount`` credits to ``tenant``."""
        body: dict[str, Any] = {"tenant": tenant, "amount": Decimal(amount)}
        if reason is not None:
            body["reason"] = reason
        return Balance.of(await self.request("POST", "/credits/grant", body))


def _exact(value: Any) -> Any:
    """Decimals go out as their exact text (the server reads an amount from
    a JSON string as exactly as from a number; a float would round)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise Invalid(f"not a finite amount: {value}")
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON")


@dataclass
class Balance:
    total: Decimal
    reserved: Decimal
    spent: Decimal
    available: Decimal

    @classmethod
    def of(cls, d: dict) -> "Balance":
        return cls(*(decimal(d[k]) for k in ("total", "reserved", "spent", "available")))


@dataclass
class Progress:
    total: int
    completed: int
    failed: int
    pending: int
    cancelled: int
    retried: int


@dataclass
class JobCredits:
    reserved: Decimal
    spent: Decimal
    refunded: Decimal
    still_reserved: Decimal


@dataclass
class Job:
    id: str
    status: str
    task: str
    progress: Progress
    credits: JobCredits
    credits_per_item: Decimal
    raw: dict = field(repr=False)

    @property
    def running(self) -> bool:
        return self.status in ("pending", "spawning", "running")

    @classmethod
    def of(cls, d: dict) -> "Job":
        p, c = d["progress"], d["credits"]
        return cls(
            id=d["id"],
            status=d["status"],
            task=d["task"],
            progress=Progress(*(int(p[k]) for k in ("total", "completed", "failed", "pending", "cancelled", "retried"))),
            credits=JobCredits(*(decimal(c[k]) for k in ("reserved", "spent", "refunded", "still_reserved"))),
            credits_per_item=decimal(d["credits_per_item"]),
            raw=d,
        )


@dataclass
class Cancelled:
    job_id: str
    status: str
    completed_items: int
    cancelled_items: int
    credits_refunded: Decimal


@dataclass
class Result:
    result_id: str
    item_index: int
    output: Any
    #: Why the stored output could not be decoded (then ``output`` is None).
    undecodable: str | None = None


@dataclass
class BudgetCheck:
    sufficient: bool
    required: Decimal
    available: Decimal
    shortfall: Decimal
    message: str


@dataclass
class Simulation:
    feasible: bool
    estimated_credits: Decimal
    credits_per_item: Decimal
    item_count: int
    estimated_duration_seconds: float
    budget_check: BudgetCheck
    raw: dict = field(repr=False)

    @classmethod
    def of(cls, d: dict) -> "Simulation":
        b = d["budget_check"]
        return cls(
            feasible=bool(d["feasible"]),
            estimated_credits=decimal(d["estimated_credits"]),
            credits_per_item=decimal(d["credits_per_item"]),
            item_count=int(d["item_count"]),
            estimated_duration_seconds=float(d["estimated_duration_seconds"]),
            budget_check=BudgetCheck(
                bool(b["sufficient"]),
                decimal(b["required"]),
                decimal(b["available"]),
                decimal(b["shortfall"]),
                str(b["message"]),
            ),
            raw=d,
        )


def _spec(
    items: list[Any],
    orchestrator_agent: str,
    worker_agent: str,
    task: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    spec = {"orchestrator_agent": orchestrator_agent, "worker_agent": worker_agent, "task": task, "items": list(items)}
    spec.update({k: v for k, v in options.items() if v is not None})
    return spec


class Jobs:
    """A tenant's jobs over REST: ``spawn`` reserves the whole job's credits
    up front (or raises :class:`~agentbus.errors.InsufficientCredits`),
    ``cancel`` refunds every uncompleted item exactly."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def spawn(
        self,
        items: list[Any],
        *,
        orchestrator_agent: str,
        worker_agent: str,
        task: str,
        parallelism: int | None = None,
        timeout_per_item: int | None = None,
        max_retries: int | None = None,
        aggregate: dict | None = None,
    ) -> Job:
        options = dict(parallelism=parallelism, timeout_per_item=timeout_per_item,
                       max_retries=max_retries, aggregate=aggregate)
        spec = _spec(items, orchestrator_agent, worker_agent, task, options)
        return Job.of(await self.api.request("POST", "/jobs", spec))

    async def simulate(
        self,
        items: list[Any],
        *,
        orchestrator_agent: str,
        worker_agent: str,
        task: str,
        parallelism: int | None = None,
        timeout_per_item: int | None = None,
        max_retries: int | None = None,
        stages: list[dict] | None = None,
    ) -> Simulation:
        """What the job would cost and take; reserves nothing."""
        options = dict(parallelism=parallelism, timeout_per_item=timeout_per_item,
                       max_retries=max_retries, stages=stages)
        spec = _spec(items, orchestrator_agent, worker_agent, task, options)
        return Simulation.of(await self.api.request("POST", "/jobs/simulate", spec))

    async def get(self, job_id: str) -> Job:
        return Job.of(await self.api.request("GET", f"/jobs/{job_id}"))

    async def cancel(self, job_id: str, reason: str | None = None, cancelled_by: str | None = None) -> Cancelled:
        body = {k: v for k, v in (("reason", reason), ("cancelled_by", cancelled_by)) if v is not None}
        d = await self.api.request("POST", f"/jobs/{job_id}/cancel", body)
        return Cancelled(
            d["job_id"], d["status"], int(d["completed_items"]), int(d["cancelled_items"]),
            decimal(d["credits_refunded"]),
        )

    async def results(self, job_id: str, *, page: int = RESULTS_PAGE) -> AsyncIterator[Result]:
        """Every completed item's output, in completion order, a page at a
        time (memory bounded by ``page``, whatever the job's size)."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page}
            if after:
                params["after"] = after
            d = await self.api.request("GET", f"/jobs/{job_id}/results", params=params)
            for r in d["results"]:
                yield Result(r["result_id"], int(r["item_index"]), r.get("output"), r.get("undecodable"))
            after = d.get("next")
            if not after:
                return
