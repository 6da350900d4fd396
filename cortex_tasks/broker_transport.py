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
from functools import cached_property
from typing import Any

from kombu.transport import redis as kombu_redis

# What celeryconfig names as broker_transport for redis:// and rediss:// broker URLs.
TRANSPORT = "cortex_tasks.broker_transport:Transport"


class Channel(kombu_redis.Channel):
    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel
