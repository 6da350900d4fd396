"""A worker's Prometheus endpoint: an HTTP port per worker, answering with the metrics of all its processes.

The port is CORTEX_WORKER_METRICS_PORT, else the default of the worker's kind (workers/<kind>.py:
gpu 9101, nlp 9102, training 9103, stream 9104), found from the worker's node name (`gpu@host`, as
`cortex worker gpu` names it) or else from the queues it consumes; 0 turns the endpoint off. A port
already taken leaves the worker running without one (the error is logged): metrics must never keep a
worker from serving.

A prefork worker's tasks run in its pool's children, so their metrics are written to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, as the gateway's gunicorn processes do),
and the parent, which answers the scrapes, sums them. prometheus_client picks that mode when it is first
imported, so the directory is set before the worker starts: `cortex worker`, `cortex up` and compose do it
(workers/profile.py). A prefork worker started without one exports its parent's metrics only, and says so.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from cortex_tasks.runtime.metrics.resources import ResourceCollector
from workers import PROFILES
from workers.profile import MULTIPROC_DIR_VARIABLE

log = logging.getLogger(__name__)

# prometheus_client's per-process gauge files: gauge_livesum_1234.db
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def default_port(hostname: str, queues: list[str]) -> int:
    """The metrics port of this worker's kind: by its node name's prefix, else by the first profile whose
    main queue it consumes; 0 if neither says."""
    kind = hostname.split("@", 1)[0]
    if kind in PROFILES:
        return PROFILES[kind].metrics_port
    for profile in PROFILES.values():
        if profile.queues[0] in queues:
            return profile.metrics_port
    return 0


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


def scrape_registry() -> CollectorRegistry:
    """What a scrape of this worker answers: every process's metrics (multiprocess mode) or this one's,
    and the machine's use, read at scrape time."""
    directory = multiprocess_dir()
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
    else:
        registry = REGISTRY
    registry.register(ResourceCollector())
    return registry


def forget_dead_processes(directory: str) -> None:
    """Drop the live-gauge files of processes that are gone (a worker killed before its children could
    say so, a previous run): their values would otherwise count as live. Counters stay summed."""
    for path in Path(directory).glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.match(path.name)
        if match and not _alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start_exporter(port: int, address: str, prefork: bool) -> int | None:
    """Serve this worker's metrics on `port` (0: off); returns the port served, None if none."""
    if port == 0:
        log.info("worker metrics endpoint off (CORTEX_WORKER_METRICS_PORT=0 or no default for this worker)")
        return None
    directory = multiprocess_dir()
    if directory:
        forget_dead_processes(directory)
    elif prefork:
        log.warning("prefork worker without %s: its pool processes' metrics are not exported (start it with "
                    "`cortex worker <kind>`, or set %s to an empty folder)", MULTIPROC_DIR_VARIABLE,
                    MULTIPROC_DIR_VARIABLE)
    try:
        server, _thread = start_http_server(port, address, registry=scrape_registry())
    except OSError as exc:
        log.error("worker metrics endpoint not started: %s:%d: %s", address, port, exc)
        return None
    served = int(server.server_port)
    log.info("worker metrics on http://%s:%d/metrics", address, served)
    return served


def process_exiting() -> None:
    """A prefork child leaving: its live gauges stop counting (its counters stay summed)."""
    directory = multiprocess_dir()
    if directory:
        mark_process_dead(os.getpid(), directory)
