"""Redis and PostgreSQL going away: bounded waits and a fast 503 instead of a request that hangs.

Without a timeout a socket to a stalled server (SIGSTOP, a full disk, a network that drops packets) waits
for the whole outage, and every request thread of the gateway with it. Each client the gateway uses
therefore waits at most a few seconds for a connection or an answer (CORTEX_REDIS_SOCKET_TIMEOUT,
CORTEX_DATABASE_TIMEOUT, ...), and a process that saw a dependency fail answers 503 `dependency_unavailable`
at once for a moment (CORTEX_DEPENDENCY_RETRY) instead of letting each request wait for its own timeout:
one background probe then checks the dependency and lets requests through again when it answers. The
clients reconnect by themselves afterwards.

The gate is per process: a worker or a CLI command never opens one (their clients still have socket
timeouts where those cannot cut a long operation short).

A job that cannot be published names the broker that refused it: `redis` when Redis carries the messages
(REDIS_URL's, or a Redis of CORTEX_BROKER_URL), `broker` when CORTEX_BROKER_URL is RabbitMQ, the name
/ready gives its check of a broker apart from Redis. Such a client then knows which service is away.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from cortex_tasks.core.errors import CortexError

log = logging.getLogger(__name__)

REDIS = "redis"
DATABASE = "database"
BROKER = "broker"  # a message broker other than Redis: RabbitMQ
_WHAT = {REDIS: "Redis", DATABASE: "The database", BROKER: "The message broker (RabbitMQ)"}


class DependencyUnavailable(CortexError):
    """Redis, PostgreSQL or the message broker did not answer in time (or refused the connection): a 503
    with Retry-After."""

    def __init__(self, dependency: str, retry_after: float = 1.0) -> None:
        super().__init__("dependency_unavailable",
                         f"{_WHAT.get(dependency, dependency)} is not answering; retry in a moment.",
                         {"dependency": dependency}, status=503,
                         headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class Gate:
    """One dependency's state in this process: open (requests go through) or failed until a probe answers.

    After a failure, requests are refused at once for `retry_seconds`; then one thread runs `probe` in the
    background (still refusing requests) and opens the gate when it succeeds, so no request of the
    outage waits on a dead socket but the first ones that found it dead."""

    def __init__(self, dependency: str, probe: Callable[[], Any], retry_seconds: float) -> None:
        self.dependency, self._probe, self.retry_seconds = dependency, probe, retry_seconds
        self._failed_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def failed(self) -> bool:
        return self._failed_at is not None

    def check(self) -> None:
        """Raise DependencyUnavailable while the dependency is known to be down."""
        failed_at = self._failed_at
        if failed_at is None:
            return
        if time.monotonic() - failed_at >= self.retry_seconds:
            self._start_probe()
        raise DependencyUnavailable(self.dependency, self.retry_seconds)

    def trip(self, reason: BaseException | str) -> None:
        with self._lock:
            if self._failed_at is None:
                log.warning("%s unavailable, answering 503 until it answers again: %s", self.dependency,
                            reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}")
            self._failed_at = time.monotonic()

    def _start_probe(self) -> None:
        with self._lock:
            if self._probing:
                return
            self._probing = True
        threading.Thread(target=self._run_probe, name=f"cortex-probe-{self.dependency}", daemon=True).start()

    def _run_probe(self) -> None:
        try:
            self._probe()
        except Exception as exc:  # noqa: BLE001 (any failure means still down)
            with self._lock:
                self._failed_at = time.monotonic()
            log.debug("%s still unavailable: %s", self.dependency, exc)
        else:
            with self._lock:
                self._failed_at = None
            log.warning("%s answers again", self.dependency)
        finally:
            with self._lock:
                self._probing = False


_gates: dict[str, Gate] = {}


def install_gate(dependency: str, probe: Callable[[], Any], retry_seconds: float) -> Gate:
    """Turn on fast failure for one dependency in this process (the gateway does, at start-up)."""
    gate = _gates[dependency] = Gate(dependency, probe, retry_seconds)
    return gate


def gate_for(dependency: str) -> Gate | None:
    return _gates.get(dependency)


def remove_gates() -> None:
    _gates.clear()


def check(dependency: str) -> None:
    gate = _gates.get(dependency)
    if gate is not None:
        gate.check()


def trip(dependency: str, reason: BaseException | str) -> None:
    gate = _gates.get(dependency)
    if gate is not None:
        gate.trip(reason)


# --- Redis ---


class GatedConnection(redis.Connection):
    """A redis-py connection that refuses at once while Redis is known to be down, and reports a failed
    connect or a reply that did not come in time."""

    def connect(self) -> None:
        if self._sock is None:
            check(REDIS)
        try:
            super().connect()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            trip(REDIS, exc)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            trip(REDIS, exc)
            raise


def bounded_redis(url: str, socket_timeout: float | None = None, **options: Any) -> redis.Redis:
    """A Redis client whose connect and replies are bounded (the settings' timeouts unless given), and
    that fails fast while this process's Redis gate is shut. Only for short commands: a blocking read
    (BLPOP, a pub/sub listen) longer than the socket timeout would fail."""
    from cortex_tasks.core.settings import get_settings

    settings = get_settings()
    if url.startswith("redis://"):
        options.setdefault("connection_class", GatedConnection)
    return redis.Redis.from_url(
        url, socket_timeout=socket_timeout if socket_timeout is not None else settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_connect_timeout_seconds, socket_keepalive=True,
        health_check_interval=30, **options)


def redis_probe(url: str) -> Callable[[], Any]:
    """A ping on a client of its own, outside the gate (the gate is what it decides about)."""
    from cortex_tasks.core.settings import get_settings

    settings = get_settings()

    def ping() -> Any:
        client = redis.Redis.from_url(url, socket_timeout=settings.redis_socket_timeout_seconds,
                                      socket_connect_timeout=settings.redis_connect_timeout_seconds)
        try:
            return client.ping()
        finally:
            client.close()

    return ping


def broker_dependency() -> str:
    """The dependency that carries Celery's messages: Redis, or the broker of an amqp:// CORTEX_BROKER_URL."""
    from cortex_tasks.core.settings import get_settings

    return REDIS if get_settings().broker_is_redis else BROKER


def failed_dependency(error: BaseException) -> str | None:
    """Which dependency an exception says is away (a refused or timed-out connection, a lost one), if any."""
    import kombu.exceptions
    import psycopg
    import sqlalchemy.exc

    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return REDIS
    if isinstance(error, kombu.exceptions.OperationalError):  # Celery could not publish: the broker is away
        return broker_dependency()
    if isinstance(error, sqlalchemy.exc.TimeoutError):  # no pooled connection came free in time
        return DATABASE
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return DATABASE
    original = error.orig if isinstance(error, sqlalchemy.exc.DBAPIError) else error
    if isinstance(original, psycopg.OperationalError):
        # No SQLSTATE: the client lost or could not make the connection. Classes 08 (connection), 53
        # (the server is out of connections, memory or disk) and 57P (shutting down, starting up) are the
        # server saying it cannot serve now; a deadlock or a cancelled statement is the request's own.
        state = original.sqlstate
        if state is None or state.startswith(("08", "53", "57P")):
            return DATABASE
    return None
