"""Reading Prometheus metrics back, for the JSON health views.

A process reports its own metrics, except under gunicorn (gunicorn_conf.py), where every gateway process
writes its metrics to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode) and the
figures a view reports are the totals over all of them, as /metrics reports them.
"""
from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

Labels = tuple[tuple[str, str], ...]


def processes_registry() -> CollectorRegistry:
    """The metrics of this process, or the totals over the processes that share the metrics directory."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def sample_values(*families: str) -> dict[tuple[str, Labels], float]:
    """{(sample name, sorted labels): value} of the named metric families (e.g. "cortex_cache_lookups")."""
    registry = processes_registry()
    if registry is REGISTRY:  # only the collectors of these families: others may read Redis at scrape time
        registry = REGISTRY.restricted_registry([f"{family}{suffix}" for family in families
                                                 for suffix in ("", "_total")])
    values: dict[tuple[str, Labels], float] = {}
    for family in registry.collect():
        if family.name in families:
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values
