"""The usage ledger read back: OpenAI tokens and money (table openai_usage) and worker seconds and money
of Cortex's own models (table worker_usage), summed over a time range and grouped by any of key, model
and tenant. Both tables are summed in PostgreSQL, grouped the same way, and joined here by group."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, not_, select

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import OpenAIUsage, WorkerUsage
from cortex_tasks.core.tenancy import all_tenants

GROUPS = ("tenant", "key", "model")
_COLUMN_OF = {"tenant": "tenant", "key": "owner", "model": "model"}
_OPENAI_FIELDS = ("openai_calls", "openai_cached_calls", "prompt_tokens", "completion_tokens", "openai_cost_usd")
_WORKER_FIELDS = ("worker_jobs", "worker_items", "worker_seconds", "worker_cost_usd")


@dataclass(frozen=True)
class UsageQuery:
    since: datetime
    until: datetime
    group_by: tuple[str, ...] = GROUPS
    owner: str | None = None  # only this key's usage
    tenant: str | None = None  # only this tenant's (with every_tenant: the platform admin asking for one)
    every_tenant: bool = False  # the platform admin's view across tenants


def _grouped(table: Any, query: UsageQuery, measures: list[Any]) -> Any:
    groups = [getattr(table, _COLUMN_OF[name]).label(name) for name in query.group_by]
    statement = select(*groups, *measures).where(table.created_at >= query.since, table.created_at < query.until)
    if query.owner is not None:
        statement = statement.where(table.owner == query.owner)
    if query.tenant is not None:
        statement = statement.where(table.tenant == query.tenant)
    return statement.group_by(*groups) if groups else statement


def summary(query: UsageQuery) -> dict[str, Any]:
    """{"items": one row per group with both ledgers' sums and their total cost, "totals": the same over
    every group}. Money in US dollars as recorded (each row priced when it was written)."""
    openai_rows = _grouped(OpenAIUsage, query, [
        func.count().filter(not_(OpenAIUsage.cached)).label("openai_calls"),
        func.count().filter(OpenAIUsage.cached).label("openai_cached_calls"),
        func.coalesce(func.sum(OpenAIUsage.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(OpenAIUsage.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(OpenAIUsage.cost_usd), 0.0).label("openai_cost_usd")])
    worker_rows = _grouped(WorkerUsage, query, [
        func.count().label("worker_jobs"),
        func.coalesce(func.sum(WorkerUsage.items), 0).label("worker_items"),
        func.coalesce(func.sum(WorkerUsage.worker_seconds), 0.0).label("worker_seconds"),
        func.coalesce(func.sum(WorkerUsage.cost_usd), 0.0).label("worker_cost_usd")])
    if query.every_tenant:
        # The platform admin's view reads across tenants by design (the route checks the role).
        with all_tenants(), session_scope() as session:
            found = [session.execute(openai_rows).mappings().all(), session.execute(worker_rows).mappings().all()]
    else:
        with session_scope() as session:
            found = [session.execute(openai_rows).mappings().all(), session.execute(worker_rows).mappings().all()]
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for fields, table_rows in ((_OPENAI_FIELDS, found[0]), (_WORKER_FIELDS, found[1])):
        for row in table_rows:
            group = tuple(row[name] for name in query.group_by)
            if not query.group_by and not any(row[field] for field in fields):
                continue  # an aggregate over no rows still answers one row of zeros
            item = rows.setdefault(group, _empty(dict(zip(query.group_by, group))))
            for field in fields:
                item[field] += row[field]
    items = [_rounded(item) for _, item in sorted(rows.items(), key=lambda pair: tuple(map(str, pair[0])))]
    totals = _empty({})
    for item in items:
        for field in (*_OPENAI_FIELDS, *_WORKER_FIELDS):
            totals[field] += item[field]
    return {"items": items, "totals": _rounded(totals)}


def _empty(group: dict[str, Any]) -> dict[str, Any]:
    shown = {("key_id" if name == "key" else name): value for name, value in group.items()}
    return {**shown, **dict.fromkeys(_OPENAI_FIELDS, 0), **dict.fromkeys(_WORKER_FIELDS, 0)}


def _rounded(item: dict[str, Any]) -> dict[str, Any]:
    for field in ("openai_calls", "openai_cached_calls", "prompt_tokens", "completion_tokens", "worker_jobs",
                  "worker_items"):
        item[field] = int(item[field])
    item["worker_seconds"] = round(float(item["worker_seconds"]), 6)
    item["openai_cost_usd"] = round(float(item["openai_cost_usd"]), 8)
    item["worker_cost_usd"] = round(float(item["worker_cost_usd"]), 8)
    item["cost_usd"] = round(item["openai_cost_usd"] + item["worker_cost_usd"], 8)
    return item
