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

from kombu.transport import redis as kombu_redis

# What celeryconfig names as broker_transport for redis:// and rediss:// broker URLs.
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
