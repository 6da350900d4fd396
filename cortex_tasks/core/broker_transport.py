"""kombu's Redis transport, with one Redis client per channel instead of one per command, and the messages
of dead consumers given back at once instead of after the visibility timeout.

kombu builds a new `redis.Redis` around the channel's connection pool for every publish, ack and queue
query (`Channel.conn_or_acquire`); building one fills redis-py's table of response callbacks each time,
about 60 us on a two-core machine, paid on the gateway for every message sent and on the workers for
every message acknowledged. A client is only a handle on the pool (each command checks a connection
out of it), so one per channel serves every thread that uses the channel.

Dead consumers. kombu keeps each delivered, unacknowledged message in the `unacked` hash and gives it back
to its queue only after `visibility_timeout`, which must outlast the longest task (hours). A worker that
was SIGKILLed, or that lost Redis and dropped its connection (the messages it then held could not be given
back: Redis was away), left its jobs "running" for those hours. Here every consuming channel holds a lease,
`cortex:consumers:<token>` (CORTEX_CONSUMER_LEASE seconds, renewed by a thread of its process), and notes
its token beside each message it takes (`cortex:unacked_owners`). Every worker's periodic restore pass
(CORTEX_UNACKED_RESTORE_INTERVAL, and once when it starts consuming) gives back the messages whose
consumer's lease is gone on two passes in a row (one pass of grace for a consumer that was only cut off
from Redis for a moment). The restore is kombu's own (a transaction on the `unacked` hash): a message is
given back once even when several workers find it. A message taken by a worker of an earlier version
(no owner noted) is left to the visibility timeout, as before.

A job given back while its first run was still going (a consumer cut off from Redis past its lease) runs
at most twice; the job record counts deliveries and records one outcome (cortex_tasks/core/jobs/running.py).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis

from cortex_tasks.core import redis_clock

TRANSPORT = "cortex_tasks.core.broker_transport:Transport"
LEASE_KEY_PREFIX = "cortex:consumers:"
OWNERS_KEY = "cortex:unacked_owners"

log = logging.getLogger(__name__)


def _lease_seconds() -> int:
    from cortex_tasks.core.settings import get_settings

    return max(3, get_settings().consumer_lease_seconds)


class _Leases:
    """This process's consuming channels, whose leases a daemon thread renews every third of a lease."""

    def __init__(self) -> None:
        self._channels: weakref.WeakSet[Channel] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None

    def hold(self, channel: Channel) -> None:
        with self._lock:
            self._channels.add(channel)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._renew_forever, name="cortex-consumer-leases",
                                                daemon=True)
                self._thread.start()

    def release(self, channel: Channel) -> None:
        with self._lock:
            self._channels.discard(channel)

    def _renew_forever(self) -> None:
        from cortex_tasks.core.settings import get_settings

        lease = _lease_seconds()
        while True:
            time.sleep(lease / 3)
            with self._lock:
                tokens = [channel.consumer_token for channel in self._channels if not channel.closed]
            if not tokens:
                continue
            try:
                if self._client is None:
                    settings = get_settings()
                    self._client = redis.Redis.from_url(settings.redis_url, socket_timeout=lease / 3,
                                                        socket_connect_timeout=lease / 3)
                pipe = self._client.pipeline(transaction=False)
                for token in tokens:
                    pipe.set(LEASE_KEY_PREFIX + token, "1", ex=lease)
                pipe.execute()
            except redis.RedisError as exc:
                log.debug("could not renew the consumer leases: %s", exc)


_leases = _Leases()


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._suspects: set[bytes] = set()  # tags whose consumer's lease was gone on the last pass

    def append(self, message: Any, delivery_tag: Any) -> None:
        # As kombu's, with the owner and its lease in the same transaction.
        delivery = message.delivery_info
        token = self.channel.consumer_token
        with self.channel.conn_or_acquire() as client:
            taken_at = redis_clock.now(client)  # compared by restore_visible on other hosts (below)
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: taken_at}) \
                .hset(self.unacked_key, delivery_tag,
                      kombu_redis.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])) \
                .hset(OWNERS_KEY, delivery_tag, token) \
                .set(LEASE_KEY_PREFIX + token, "1", ex=_lease_seconds()) \
                .execute()
            kombu_redis.virtual.QoS.append(self, message, delivery_tag)
        _leases.hold(self.channel)

    def _remove_from_indices(self, delivery_tag: Any, pipe: Any = None) -> Any:
        return super()._remove_from_indices(delivery_tag, pipe).hdel(OWNERS_KEY, delivery_tag)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        self._restore_timed_out(start, num, interval)
        try:
            self.restore_orphans()
        except redis.RedisError as exc:  # Redis away: the next pass tries again
            log.debug("could not look for the messages of dead consumers: %s", exc)

    def _restore_timed_out(self, start: int, num: int, interval: int) -> None:
        """kombu's restore_visible, with Redis's clock instead of this host's on both sides of the
        comparison: a message's score is the time it was taken (append), written by the worker that took
        it, and every worker compares it. By the hosts' own clocks, a worker whose clock ran minutes ahead
        gave back (and so ran twice) messages that had been taken minutes less than the visibility
        timeout ago, and one whose clock lagged kept dead messages minutes longer."""
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            ceil = redis_clock.now(client) - self.visibility_timeout
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    visible = client.zrange(self.unacked_index_key, ceil, 0, desc=True, byscore=True,
                                            offset=num and start, num=num, withscores=True)
                    for tag, _ in visible or []:
                        self.restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:
                pass

    def restore_orphans(self) -> int:
        """Give back the unacknowledged messages whose consumer's lease has lapsed on two passes in a row;
        returns how many."""
        with self.channel.conn_or_acquire() as client:
            owners = {tag: token for tag, token in client.hgetall(OWNERS_KEY).items()}
            if not owners:
                self._suspects = set()
                return 0
            tokens = sorted(set(owners.values()))
            pipe = client.pipeline(transaction=False)
            for token in tokens:
                pipe.exists(LEASE_KEY_PREFIX + token.decode())
            alive = {token for token, exists in zip(tokens, pipe.execute()) if exists}
            orphans = {tag for tag, token in owners.items() if token not in alive}
            due, self._suspects = orphans & self._suspects, orphans - self._suspects
            for tag in due:
                self.restore_by_tag(tag.decode(), client)
            unknown = [tag for tag in due if not client.hexists(self.unacked_key, tag)]
            if unknown:  # acknowledged or given back already: only the owner note was left
                client.hdel(OWNERS_KEY, *unknown)
        if due:
            log.warning("gave back %d unacknowledged message(s) of consumers that are gone", len(due))
        return len(due)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consumer_token = uuid.uuid4().hex
        super().__init__(*args, **kwargs)

    def close(self) -> None:
        _leases.release(self)
        super().close()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client is None:
            if getattr(self.connection, "client", None) is None:
                # The connection this channel belonged to was closed (Redis went away and the worker
                # reconnected on a new one): acknowledging a message of the old channel must fail as a
                # connection error, which Celery logs, not as an AttributeError from kombu building a pool
                # for a connection that is gone (it crashed the worker). The message stays unacknowledged
                # and is given back once this channel's lease lapses (restore_orphans).
                raise redis.ConnectionError("the channel's connection to Redis is closed")
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
