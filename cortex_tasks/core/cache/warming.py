"""Cache warming: every 30 minutes, the most frequent recent
queries of the most popular models are recomputed into L2 if they are no longer there.

Gateways count the queries they look up (in-process, flushed to an hourly Redis sorted set every few
seconds, so the hot path stays one dictionary increment). Warming sends the missing ones to the model's
queue as ordinary prediction jobs owned by the system; the worker stores their results in L2 as usual.
Effectiveness is reported as the share of frequent queries found in L2 before and after warming.

Tenants: the log records the catalogue name, tenant-qualified for a registered model
(registry/references.py), so a tenant's queries can only ever warm that tenant's model, and warming
runs each such group in its tenant's scope (its job row, its message and the model's lookup are that
tenant's). Bundled models are shared, their answers too (cache/service.py keys_for): their warming jobs
are the default tenant's, as the system's own.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import redis

from cortex_tasks import app as celery_app
from cortex_tasks.core.cache.keys import normalize_input
from cortex_tasks.core.cache.service import MISSING, get_cache, keys_for
from cortex_tasks.core.catalogue import QUEUE_TASK_NAMES, TASKS, find_model
from cortex_tasks.core.dependencies import bounded_redis
from cortex_tasks.core.contracts.messages import PredictionJob, PredictionMessage
from cortex_tasks.core.jobs import store
from cortex_tasks.core.openai.config import is_openai_model
from cortex_tasks.core.process_threads import helper_threads
from cortex_tasks.core.queues import PRIORITY_CLASSES
from cortex_tasks.core.registry.references import split_qualified
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.tenancy import DEFAULT_TENANT, tenant_scope

FREQUENCY_KEY = "cortex:cache-queries:"  # + hour number; members are JSON [task, model, params, input]
LAST_REPORT_KEY = "cortex:cache-warming:last"
MAX_RECORDED_INPUT_CHARS = 1000
FLUSH_SECONDS = 5.0
WARMING_OWNER = "system:cache-warming"


class QueryCounter:
    """Counts queries in this process and adds them to Redis now and then."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._redis: tuple[str, redis.Redis] | None = None

    def _client(self) -> redis.Redis:
        url = get_settings().redis_url
        if self._redis is None or self._redis[0] != url:  # one pool, not a new connection every few seconds
            self._redis = (url, bounded_redis(url))
        return self._redis[1]

    def record(self, task: str, model: str, params_json: str, items: list[Any]) -> None:
        members = [json.dumps([task, model, params_json, normalize_input(item)])
                   for item in items if isinstance(item, str) and len(item) <= MAX_RECORDED_INPUT_CHARS]
        with self._lock:
            self._counts.update(members)
            due = time.monotonic() - self._last_flush > FLUSH_SECONDS
            if due:
                self._last_flush = time.monotonic()
        if due:
            # A flush sends one command per distinct query of the last few seconds (thousands under
            # load): not on the thread of the request that happens to find it due.
            helper_threads("cortex-query-counts", 1).submit(self.flush)

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            self._last_flush = time.monotonic()
        if not counts:
            return
        key = FREQUENCY_KEY + str(int(time.time() // 3600))
        try:
            client = self._client()
            pipe = client.pipeline(transaction=False)
            for member, count in counts.items():
                pipe.zincrby(key, count, member)
            pipe.expire(key, 3 * 3600)
            pipe.execute()
        except redis.RedisError:
            pass  # statistics only


QUERY_COUNTER = QueryCounter()


def frequent_queries(client: redis.Redis, min_frequency: int, hours: int = 1) -> list[tuple[list[Any], float]]:
    """Queries asked at least `min_frequency` times in the current and previous `hours` hours."""
    now_hour = int(time.time() // 3600)
    totals: Counter[str] = Counter()
    for hour in range(now_hour - hours, now_hour + 1):
        for member, score in client.zrange(FREQUENCY_KEY + str(hour), 0, -1, withscores=True):
            totals[member.decode()] += score
    return [(json.loads(member), score) for member, score in totals.most_common() if score >= min_frequency]


def _warm_group(cache: Any, task: str, model: str, params_json: str, texts: list[str],
                tenant: str) -> tuple[int, int, int]:
    """Send one group's missing queries to its model as low-priority jobs of `tenant` (in whose scope
    this runs): (items sent, items present before, items considered)."""
    entry = find_model(model)
    if entry is None:
        return 0, 0, 0
    params = json.loads(params_json)
    values = cache.l2.get_many(keys_for(task, model, entry.version, params, texts))
    missing = [text for text, value in zip(texts, values) if value is MISSING]
    queue = TASKS[task].queue
    low = PRIORITY_CLASSES["low"]  # warming must never delay interactive work
    sent = 0
    for start in range(0, len(missing), 32):
        chunk = missing[start:start + 32]
        job_id = str(uuid.uuid4())
        store.create_jobs([(job_id, store.NewJob(owner=WARMING_OWNER, kind="predict", task=task, model=model,
                                                 priority=low, total=len(chunk), params=params or None))])
        # No record: the row was created just above, owned by the system (see WARMING_OWNER).
        message = PredictionMessage(tenant=tenant, task=task, model=model, params=params or {}, priority=low,
                                    jobs=[PredictionJob(job_id=job_id, inputs=chunk, inline_errors=True, warm=True)])
        celery_app.send_task(QUEUE_TASK_NAMES[queue], queue=queue, priority=low, ignore_result=True,
                             kwargs=message.to_kwargs())
        sent += len(chunk)
    return sent, len(texts) - len(missing), len(texts)


def warm_cache(min_frequency: int = 10, popular_models: int = 5, max_queries: int = 2000) -> dict[str, Any]:
    started = time.monotonic()
    cache = get_cache()
    client = redis.Redis.from_url(get_settings().redis_url)
    queries = frequent_queries(client, min_frequency)
    model_popularity: Counter[tuple[str, str]] = Counter()
    for (task, model, _, _), count in queries:
        model_popularity[(task, model)] += count
    chosen_models = {pair for pair, _ in model_popularity.most_common(popular_models)}
    groups: dict[tuple[str, str, str], list[str]] = {}
    for (task, model, params_json, text), _ in queries[:max_queries]:
        # OpenAI models are never warmed: every warming call would be paid for. A tenant's registry model is
        # counted under its tenant-qualified name, so it is warmed in that tenant's scope (below).
        if ((task, model) in chosen_models and task in TASKS and TASKS[task].cacheable
                and not is_openai_model(model)):
            groups.setdefault((task, model, params_json), []).append(text)

    considered = present_before = sent = 0
    for (task, model, params_json), texts in groups.items():
        tenant = split_qualified(model)[0] or DEFAULT_TENANT
        with tenant_scope(tenant):
            counts = _warm_group(cache, task, model, params_json, texts, tenant)
        sent, present_before, considered = sent + counts[0], present_before + counts[1], considered + counts[2]
    report = {
        "frequent_queries": considered,
        "models": sorted(f"{task}:{model}" for task, model in chosen_models),
        "hit_rate_before": round(present_before / considered, 4) if considered else None,
        "sent_for_warming": sent,
        "seconds": round(time.monotonic() - started, 3),
        "at": time.time(),
    }
    client.set(LAST_REPORT_KEY, json.dumps(report))
    return report


def effectiveness(min_frequency: int = 10) -> dict[str, Any]:
    """Share of the frequent queries that L2 can answer now (after a warming run: its effectiveness)."""
    client = redis.Redis.from_url(get_settings().redis_url)
    queries = frequent_queries(client, min_frequency)
    groups: dict[tuple[str, str, str], list[str]] = {}
    for (task, model, params_json, text), _ in queries:
        groups.setdefault((task, model, params_json), []).append(text)
    cache = get_cache()
    present = 0
    for (task, model, params_json), texts in groups.items():
        with tenant_scope(split_qualified(model)[0] or DEFAULT_TENANT):  # a registry model is its tenant's
            entry = find_model(model)
        if entry is not None:
            values = cache.l2.get_many(keys_for(task, model, entry.version, json.loads(params_json), texts))
            present += sum(value is not MISSING for value in values)
    last = client.get(LAST_REPORT_KEY)
    return {"frequent_queries": len(queries), "hit_rate_now": round(present / len(queries), 4) if queries else None,
            "last_warming": json.loads(last) if last else None}
