"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu builds a new `redis.Redis` around the channel's connection pool for every publish, ack and queue
query (`Channel.conn_or_acquire`); building one fills redis-py's table of response callbacks each time,
about 60 us on a two-core machine, paid on the gateway for every message sent and on the workers for
every message acknowledged. A client is only a handle on the pool (each command checks a connection
out of it), so one per channel serves every thread that uses the channel.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis

TRANSPORT = "cortex_tasks.core.broker_transport:Transport"


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client is None:
            # kombu drops its pool after a fork or a failed connect and builds a new one on next use: the
            # shared client follows the pool (two threads racing here build one each, harmlessly).
            pool = self.pool
            if self._shared_client is None or self._shared_client.connection_pool is not pool:
                self._shared_client = self._create_client()
            client = self._shared_client
        yield client


class Transport(kombu_redis.Transport):
    Channel = Channel


def use_for_redis_urls() -> None:
    """Make `redis://` and `rediss://` broker URLs use this transport in this process (celeryconfig calls it).

    Registered under kombu's own aliases rather than named by `broker_transport`: a connection then still
    describes itself as `redis://...` (`Connection.as_uri`), which is how Flower recognises a Redis broker
    for its Broker tab and /api/queues/length (with a class path it answered 404 "broker is not
    supported"). `sentinel://` and other schemes keep kombu's transports.
    """
    for scheme in ("redis", "rediss"):
        kombu_transports.TRANSPORT_ALIASES[scheme] = TRANSPORT
        # kombu remembers each alias's class once resolved; one resolved before this call would stay kombu's.
        kombu_transports._transport_cache.pop(scheme, None)
