"""What OpenAI calls cost: every call's tokens (from the response's `usage`) times the configured prices,
recorded per tenant, calling key and model in PostgreSQL (`openai_usage`), with running totals in Redis for
Prometheus (read at scrape time by `OpenAIUsageCollector`, so all workers add up), and the monthly budget.

Cache hits are recorded too (zero tokens, zero cost, cached=true), so the usage view shows what caching saved.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import redis
from sqlalchemy import bindparam, func, insert, not_, select

from cortex_tasks.core.openai.config import OpenAIConfig, cost_usd, openai_config
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import OpenAIUsage
from cortex_tasks.core.tenancy import DEFAULT_TENANT, all_tenants, current_scope

log = logging.getLogger(__name__)

TOTALS_KEY = "cortex:openai:totals"
# Who is billed when a call was not made for a key (cache warming, a worker's own use).
UNATTRIBUTED = "unattributed"


# Built once, with bound parameters: every OpenAI call runs both, and a statement built per call costs ~10x
# text()'s Python time while a prebuilt one's cache key is memoized (measured with timeit).
_INSERT_USAGE = insert(OpenAIUsage).values(
    tenant=bindparam("tenant"), owner=bindparam("owner"), model=bindparam("model"), kind=bindparam("kind"), source=bindparam("source"),
    prompt_tokens=bindparam("prompt"), completion_tokens=bindparam("completion"), cost_usd=bindparam("cost"),
    cached=bindparam("cached"))
_MONTH_SPEND = select(func.coalesce(func.sum(OpenAIUsage.cost_usd), 0)).where(
    OpenAIUsage.created_at >= bindparam("since"))


class BudgetExceeded(Exception):
    def __init__(self, spent: float, budget: float) -> None:
        super().__init__(f"the monthly OpenAI budget of ${budget:.2f} is spent (${spent:.4f} this month); "
                         "new OpenAI calls are refused until the next month or a higher "
                         "CORTEX_OPENAI_MONTHLY_BUDGET")
        self.spent, self.budget = spent, budget


@dataclass(frozen=True)
class Usage:
    owner: str
    model: str
    kind: str  # chat | embed | transcribe | image
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    source: str = "predict"  # predict | chat
    # The job's tenant (openai/billing.py). None: the tenant in scope, else `default` (a job queued before
    # tenants existed, whose params name none; the calls run on threads without a scope).
    tenant: str | None = None
    # Calls priced per audio minute or per image (transcribe, image_generate) carry their cost themselves.
    priced_usd: float | None = None

    def cost(self, config: OpenAIConfig | None = None) -> float:
        if self.cached:
            return 0.0
        if self.priced_usd is not None:
            return self.priced_usd
        return cost_usd(self.model, self.prompt_tokens, self.completion_tokens, config)


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url)


def record(usage: Usage) -> float:
    """Store one call's usage; returns its cost in US dollars."""
    cost = usage.cost()
    with session_scope() as session:
        session.execute(_INSERT_USAGE, {
            "tenant": _tenant_of(usage), "owner": usage.owner, "model": usage.model, "kind": usage.kind, "source": usage.source,
            "prompt": usage.prompt_tokens, "completion": usage.completion_tokens, "cost": cost,
            "cached": usage.cached})
    try:
        pipe = _client().pipeline(transaction=False)
        pipe.hincrby(TOTALS_KEY, f"{usage.model}\x1frequests\x1f{'cached' if usage.cached else 'api'}", 1)
        pipe.hincrby(TOTALS_KEY, f"{usage.model}\x1ftokens\x1fprompt", usage.prompt_tokens)
        pipe.hincrby(TOTALS_KEY, f"{usage.model}\x1ftokens\x1fcompletion", usage.completion_tokens)
        pipe.hincrbyfloat(TOTALS_KEY, f"{usage.model}\x1fcost\x1fusd", cost)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not update the OpenAI usage totals in Redis", exc_info=True)
    return cost


def _tenant_of(usage: Usage) -> str:
    if usage.tenant is not None:
        return usage.tenant
    scope = current_scope()
    return scope if isinstance(scope, str) else DEFAULT_TENANT


def record_failure(model: str, reason: str) -> None:
    try:
        _client().hincrby(TOTALS_KEY, f"{model}\x1ferrors\x1f{reason}", 1)
    except redis.RedisError:
        pass


def month_start(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_spend() -> float:
    # The monthly budget is the platform's (one OpenAI account): every tenant's spend counts against it.
    with all_tenants(), session_scope() as session:
        return float(session.execute(_MONTH_SPEND, {"since": month_start()}).scalar() or 0.0)


def check_budget(config: OpenAIConfig | None = None) -> None:
    """Raise BudgetExceeded when a monthly budget is set and this month's spend has reached it."""
    config = config or openai_config()
    if config.monthly_budget_usd is None:
        return
    spent = month_spend()
    if spent >= config.monthly_budget_usd:
        raise BudgetExceeded(spent, config.monthly_budget_usd)


def summary(owner: str | None, since: datetime, every_tenant: bool = False,
            tenant: str | None = None) -> dict[str, Any]:
    """Usage since `since`, per tenant, key and model, with totals per tenant: the tenant in scope's (one
    key's own when `owner` is given); with `every_tenant` (the platform admin's view) every tenant's, or
    only `tenant`'s when it is given."""
    query = (
        select(OpenAIUsage.tenant, OpenAIUsage.owner, OpenAIUsage.model,
               func.count().filter(not_(OpenAIUsage.cached)).label("calls"),
               func.count().filter(OpenAIUsage.cached).label("cached_calls"),
               func.sum(OpenAIUsage.prompt_tokens).label("prompt_tokens"),
               func.sum(OpenAIUsage.completion_tokens).label("completion_tokens"),
               func.sum(OpenAIUsage.cost_usd).label("cost_usd"))
        .where(OpenAIUsage.created_at >= since)
        .group_by(OpenAIUsage.tenant, OpenAIUsage.owner, OpenAIUsage.model)
        .order_by(OpenAIUsage.tenant, OpenAIUsage.owner, OpenAIUsage.model)
    )
    if owner:
        query = query.where(OpenAIUsage.owner == owner)
    if tenant is not None:
        query = query.where(OpenAIUsage.tenant == tenant)
    if every_tenant:
        with all_tenants(), session_scope() as session:
            rows = session.execute(query).mappings().all()
    else:
        with session_scope() as session:
            rows = session.execute(query).mappings().all()
    items = [{"tenant": row["tenant"], "key_id": row["owner"], "model": row["model"], "calls": int(row["calls"]),
              "cached_calls": int(row["cached_calls"]), "prompt_tokens": int(row["prompt_tokens"] or 0),
              "completion_tokens": int(row["completion_tokens"] or 0),
              "cost_usd": round(float(row["cost_usd"] or 0.0), 8)} for row in rows]
    tenants: dict[str, dict[str, Any]] = {}
    for item in items:
        totals = tenants.setdefault(item["tenant"], {"tenant": item["tenant"], "calls": 0, "cached_calls": 0,
                                                     "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
        for name in ("calls", "cached_calls", "prompt_tokens", "completion_tokens", "cost_usd"):
            totals[name] += item[name]
    for totals in tenants.values():
        totals["cost_usd"] = round(totals["cost_usd"], 8)
    return {"since": since.isoformat(), "items": items, "tenants": list(tenants.values()),
            "total_cost_usd": round(sum(item["cost_usd"] for item in items), 8)}


class OpenAIUsageCollector:
    """Prometheus collector over the Redis totals that every worker adds to."""

    def describe(self):  # registered without touching Redis
        return list(self._families())

    def _families(self):
        from prometheus_client.core import CounterMetricFamily

        return (
            CounterMetricFamily("cortex_openai_requests", "OpenAI calls by model and whether the cache answered",
                                labels=["model", "source"]),
            CounterMetricFamily("cortex_openai_tokens", "OpenAI tokens by model and kind", labels=["model", "kind"]),
            CounterMetricFamily("cortex_openai_cost_usd", "OpenAI spend in US dollars by model", labels=["model"]),
            CounterMetricFamily("cortex_openai_errors", "Failed OpenAI calls by model and reason",
                                labels=["model", "reason"]),
        )

    def collect(self):
        requests_, tokens, cost, errors = self._families()
        try:
            for raw_field, raw_value in _client().hgetall(TOTALS_KEY).items():
                model, metric, label = raw_field.decode().split("\x1f")
                value = float(raw_value)
                {"requests": requests_, "tokens": tokens, "errors": errors}.get(metric, cost).add_metric(
                    [model] if metric == "cost" else [model, label], value)
        except (redis.RedisError, ValueError):
            pass  # a scrape must not fail because Redis is briefly away
        yield from (requests_, tokens, cost, errors)
