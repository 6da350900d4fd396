"""A stream's per-key state in Redis, shared by every stream worker of the stream.

Kept in Redis rather than in a worker's memory so that several stream workers can share one consumer
group (any of them may get any key's next event) and a restarted worker resumes where the last one
stopped. Under `<state prefix>` (core/streams/service.state_prefix):
- `win:<key>`       sorted set of the key's recent events (`<entry id>|<value>`, scored by event time): windows
- `buckets:<key>`   hash of per-minute and per-hour (count, sum): the temporal features (features.py)
- `season:<key>`    hash of per-phase (count, sum, sum of squares): the seasonal profile
- `base:<key>`      hash of the key's (count, sum, sum of squares) over its whole history: its baseline
- `features:<key>`  the feature row of the key's latest event by event time (JSON), cached
- `rows`            list of recent feature rows of the stream: the IsolationForest's training set
- `open`, `anomalies`  windows not yet stored (`<key>\\x1f<start>`), and their flagged events
- `watermark`       the latest event time seen: windows whose end (plus the lateness) it passed are closed
- `applied`         entry ids whose state is applied but which are not acknowledged yet
- `forest`          the IsolationForest's latest fit: when, on how many rows, fits so far

One Lua script applies a micro-batch's events atomically and at most once per entry id (`applied`): a
redelivered event (its worker killed before XACK) is scored again but counted in no window, total or
baseline twice. Its id leaves `applied` with its acknowledgement.
"""
from __future__ import annotations

import bisect
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from cortex_tasks.core import redis_clock
from cortex_tasks.core.streams.service import forest_key
from cortex_tasks.runtime.streams.features import KeyHistory
from cortex_tasks.runtime.streams.windows import Aggregate

# Keys expire when a stream goes quiet for longer than the longest feature window (7 days) and a day.
STATE_TTL_SECONDS = 8 * 86400
# `applied` entries older than this (their acknowledgement lost with a crash) are dropped.
APPLIED_TTL_MS = 86400 * 1000
# Windows summed per call of the _FIGURES script (each about a tenth of a millisecond of Redis at 60 events).
FIGURES_PER_CALL = 16

# The figures of the windows named (`<key>\x1f<start>`, from ARGV[3] on; ARGV[2]: the window size): per window,
# its events' count, its flagged events, and the sum, min and max of its values. Taken in Redis rather than
# from the window's members read back (a window holds a key's events of minutes, and the housekeeping thread
# that closes windows competes with the consumer thread for the interpreter): summed in the members' order,
# as windows.aggregate sums; the numbers travel as %.17g text, which reads back as the same floats.
_FIGURES = """
local prefix = ARGV[1]
local size = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local name = ARGV[i]
  local key, start = string.match(name, '^(.*)\\31(.-)$')
  local begin = tonumber(start)
  local members = redis.call('ZRANGEBYSCORE', prefix .. ':win:' .. key, string.format('%.17g', begin),
                             '(' .. string.format('%.17g', begin + size))
  local flagged = tonumber(redis.call('HGET', prefix .. ':anomalies', name) or '0')
  local count, total, low, high = 0, 0, nil, nil
  for _, member in ipairs(members) do
    local value = tonumber(string.sub(member, string.find(member, '|', 1, true) + 1))  -- `<entry id>|<value>`
    count = count + 1
    total = total + value
    if low == nil or value < low then low = value end
    if high == nil or value > high then high = value end
  end
  if count == 0 then
    table.insert(out, {0, flagged})
  else
    table.insert(out, {count, flagged, string.format('%.17g', total), string.format('%.17g', low),
                       string.format('%.17g', high)})
  end
end
return out
"""

_APPLY = """
local prefix = ARGV[1]
local events = cjson.decode(ARGV[2])
local expected = cjson.decode(ARGV[6])
local max_rows = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local applied = 0
local touched = {}
local watermark = tonumber(redis.call('GET', prefix .. ':watermark') or '-1e300')
local rows = 0
for _, e in ipairs(events) do
  if redis.call('ZADD', prefix .. ':applied', 'NX', e.arrival, e.id) == 1 then
    applied = applied + 1
    local k = e.key
    redis.call('ZADD', prefix .. ':win:' .. k, e.t, e.id .. '|' .. e.v)
    local b = prefix .. ':buckets:' .. k
    redis.call('HINCRBY', b, 'm' .. e.minute .. 'c', 1)
    redis.call('HINCRBYFLOAT', b, 'm' .. e.minute .. 's', e.v)
    redis.call('HINCRBY', b, 'h' .. e.hour .. 'c', 1)
    redis.call('HINCRBYFLOAT', b, 'h' .. e.hour .. 's', e.v)
    local base = prefix .. ':base:' .. k
    redis.call('HINCRBY', base, 'n', 1)
    redis.call('HINCRBYFLOAT', base, 's', e.v)
    redis.call('HINCRBYFLOAT', base, 'q', e.q)
    if e.phase >= 0 then
      local season = prefix .. ':season:' .. k
      redis.call('HINCRBY', season, e.phase .. 'c', 1)
      redis.call('HINCRBYFLOAT', season, e.phase .. 's', e.v)
      redis.call('HINCRBYFLOAT', season, e.phase .. 'q', e.q)
    end
    for _, start in ipairs(e.windows) do
      local w = k .. '\\31' .. start
      redis.call('HSET', prefix .. ':open', w, 1)
      if e.anomalous then redis.call('HINCRBY', prefix .. ':anomalies', w, 1) end
    end
    if e.row then
      redis.call('LPUSH', prefix .. ':rows', e.row)
      rows = rows + 1
    end
    -- The key's latest event's row (by event time): an older event applied after newer ones (a dead
    -- worker's pending entries, claimed once their lease ran out) leaves it as it is.
    if e.features and tonumber(redis.call('ZRANGE', prefix .. ':win:' .. k, -1, -1, 'WITHSCORES')[2]) <= e.t then
      redis.call('SET', prefix .. ':features:' .. k, e.features, 'EX', ttl)
    end
    if e.t > watermark then watermark = e.t end
    local latest = touched[k]
    if latest == nil or e.t > latest then touched[k] = e.t end
  end
end
for k, latest in pairs(touched) do
  local win = prefix .. ':win:' .. k
  redis.call('ZREMRANGEBYSCORE', win, '-inf', '(' .. (latest - keep))
  for _, name in ipairs({win, prefix .. ':buckets:' .. k, prefix .. ':base:' .. k, prefix .. ':season:' .. k}) do
    redis.call('EXPIRE', name, ttl)
  end
end
if rows > 0 then redis.call('LTRIM', prefix .. ':rows', 0, max_rows - 1) end
local current = {}
for k, _ in pairs(touched) do
  local before = redis.call('HGET', prefix .. ':versions', k) or '0'
  local after = redis.call('HINCRBY', prefix .. ':versions', k, 1)
  if expected[k] == before then
    table.insert(current, k)
    table.insert(current, tostring(after))
  end
end
if applied > 0 then
  redis.call('SET', prefix .. ':watermark', tostring(watermark), 'EX', ttl)
  for _, name in ipairs({'rows', 'open', 'anomalies', 'applied', 'versions'}) do
    redis.call('EXPIRE', prefix .. ':' .. name, ttl)
  end
end
-- The flagged events of the windows named from ARGV[7] on, as the update left them.
local flagged = {}
for i = 7, #ARGV do
  table.insert(flagged, tonumber(redis.call('HGET', prefix .. ':anomalies', ARGV[i]) or '0'))
end
return {applied, current, flagged}
"""

# The latest ARGV[2] training rows of the list ARGV[1] (JSON arrays each), as one JSON array.
_ROWS = """
return '[' .. table.concat(redis.call('LRANGE', ARGV[1], 0, tonumber(ARGV[2]) - 1), ',') .. ']'
"""

# Per key: its version, and its state unless the caller's cached copy has that version.
_READ = """
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV, 3 do
  local k, since, cached = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local version = redis.call('HGET', prefix .. ':versions', k) or '0'
  if version == cached then
    table.insert(out, {version})
  else
    table.insert(out, {version, redis.call('ZRANGEBYSCORE', prefix .. ':win:' .. k, since, '+inf', 'WITHSCORES'),
                       redis.call('HGETALL', prefix .. ':buckets:' .. k), redis.call('HGETALL', prefix .. ':season:' .. k),
                       redis.call('HGETALL', prefix .. ':base:' .. k)})
  end
end
return out
"""
# A worker keeps the states it last updated itself and rereads only those another worker changed since
# (each key's `versions` counter says so); at least this often (seconds) it rereads a key anyway, so that
# nothing it missed (a key expired in Redis) outlives a minute.
CACHE_SECONDS = 60.0
CACHED_KEYS = 10_000


@dataclass
class KeyState:
    """One key's state as read at the start of a micro-batch, updated locally as its events are scored, so
    that each event of the batch is judged against every event before it."""

    window: list[tuple[float, float]] = field(default_factory=list)  # (event time, value), by time
    history: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # count, sum, sum of squares
    season: dict[int, list[float]] = field(default_factory=dict)
    features: KeyHistory = field(default_factory=KeyHistory)

    def values_between(self, start: float, end: float) -> list[float]:
        """Values of events with start <= time < end."""
        low = bisect.bisect_left(self.window, (start, float("-inf")))
        high = bisect.bisect_left(self.window, (end, float("-inf")))
        return [value for _, value in self.window[low:high]]

    def season_of(self, phase: int) -> tuple[float, float, float]:
        totals = self.season.get(phase)
        return (totals[0], totals[1], totals[2]) if totals else (0.0, 0.0, 0.0)

    def add(self, time: float, value: float, phase: int) -> None:
        bisect.insort(self.window, (time, value))
        for index, amount in enumerate((1.0, value, value * value)):
            self.history[index] += amount
            if phase >= 0:
                self.season.setdefault(phase, [0.0, 0.0, 0.0])[index] += amount
        self.features.add(time, value)


def _floats(raw: dict[bytes, bytes]) -> dict[str, float]:
    return {name.decode(): float(value) for name, value in raw.items()}


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))


@dataclass
class Applied:
    """What StreamState.apply did."""

    new: int  # events applied now (the others were applied before: redelivered)
    flagged: list[int]  # the flagged events of each window named, after the update
    alone: set[str]  # keys no other worker changed between this batch's read and its update


@dataclass
class _Cached:
    version: bytes
    read_from: float  # the window holds every event of the key from this event time on
    read_at: float  # monotonic time of the last full read
    state: KeyState


class StreamState:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._apply = client.register_script(_APPLY)
        self._read = client.register_script(_READ)
        self._figures = client.register_script(_FIGURES)
        self._rows = client.register_script(_ROWS)
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        # What the current batch's states were read as: the version, where its window starts, when read.
        self._read_as: dict[str, tuple[bytes, float, float]] = {}

    def read(self, since: dict[str, float]) -> dict[str, KeyState]:
        """The state of each key, its window values from `since[key]` on: this worker's own copy when no
        other worker changed the key since this worker last updated it, else read from Redis."""
        keys = list(since)
        now = time.monotonic()
        # Taken out of the cache: the batch changes these states while scoring, and only a batch whose
        # update is applied puts them back (apply).
        cached = {key: self._cache.pop(key) for key in keys if key in self._cache}
        usable = {key: entry for key, entry in cached.items()
                  if entry.read_from <= since[key] and now - entry.read_at < CACHE_SECONDS}
        args: list[Any] = [self.prefix]
        for key in keys:
            args += [key, since[key], usable[key].version if key in usable else b""]
        replies = self._read(args=args)
        states = {}
        self._read_as = {}
        for key, reply in zip(keys, replies):
            version = reply[0]
            if len(reply) == 1:
                entry = usable[key]
                states[key] = entry.state
                self._read_as[key] = (version, entry.read_from, entry.read_at)
                continue
            window_raw, buckets, season_raw, base_raw = reply[1], _pairs(reply[2]), _pairs(reply[3]), _pairs(reply[4])
            window = sorted((float(score), float(member.rsplit(b"|", 1)[1])) for member, score in _pairs(window_raw).items())
            season: dict[int, list[float]] = {}
            for name, value in _floats(season_raw).items():
                totals = season.setdefault(int(name[:-1]), [0.0, 0.0, 0.0])
                totals["csq".index(name[-1])] = value
            base = _floats(base_raw)
            states[key] = KeyState(window, [base.get("n", 0.0), base.get("s", 0.0), base.get("q", 0.0)], season,
                                   KeyHistory.from_hash(buckets))
            self._read_as[key] = (version, since[key], now)
        return states

    def apply(self, events: list[dict[str, Any]], max_rows: int, keep_seconds: float,
              stale: dict[str, list[str]] | None = None, window_names: list[str] | None = None,
              states: dict[str, KeyState] | None = None) -> Applied:
        """Apply scored events (each: id, arrival, key, t, v, q, minute, hour, phase, windows, anomalous,
        row?, features?) at most once per id, drop the `stale` feature buckets, and read the flagged events
        of `window_names` as they stand after it: one round trip.

        `states` are the batch's key states as `read` gave them and scoring updated them: a key's state
        is kept for the next batch when the update applied every event and no other worker changed the
        key in between (its version is the one read, plus this update)."""
        expected = {key: version.decode() for key, (version, _, _) in self._read_as.items()}

        def queued() -> redis.client.Pipeline:
            pipe = self.client.pipeline(transaction=False)
            # EVALSHA itself rather than the Script object: a pipeline running a Script first asks SCRIPT
            # EXISTS, a round trip of its own on every batch.
            pipe.evalsha(self._apply.sha, 0, self.prefix, json.dumps(events), max_rows, keep_seconds,
                         STATE_TTL_SECONDS, json.dumps(expected), *(window_names or []))
            for key, fields in (stale or {}).items():
                if fields:
                    pipe.hdel(f"{self.prefix}:buckets:{key}", *fields)
            return pipe

        try:
            replies = queued().execute()
        except redis.exceptions.NoScriptError:
            # A Redis restarted (or flushed its scripts): load it and run the round again. Nothing of the
            # first try changed state (the script did not run; the deletes may repeat).
            self.client.script_load(_APPLY)
            replies = queued().execute()
        applied, current, flagged = int(replies[0][0]), replies[0][1], [int(count) for count in replies[0][2]]
        versions = dict(zip((key.decode() for key in current[::2]), current[1::2]))
        if states is not None and applied == len(events):
            self._keep(states, versions, events, keep_seconds, stale or {})
        return Applied(applied, flagged, set(versions))

    def _keep(self, states: dict[str, KeyState], versions: dict[str, bytes], events: list[dict[str, Any]],
              keep_seconds: float, stale: dict[str, list[str]]) -> None:
        """Cache the updated states, trimmed as the script and the bucket pruning trimmed them in Redis."""
        latest: dict[str, float] = {}
        for event in events:
            latest[event["key"]] = max(latest.get(event["key"], event["t"]), event["t"])
        for key, version in versions.items():
            state, read_as = states.get(key), self._read_as.get(key)
            if state is None or read_as is None:
                continue
            cutoff = latest[key] - keep_seconds
            del state.window[:bisect.bisect_left(state.window, (cutoff, float("-inf")))]
            for name in stale.get(key, ()):
                target = state.features.minutes if name[0] == "m" else state.features.hours
                target.pop(int(name[1:-1]), None)
            self._cache[key] = _Cached(version, read_as[1], read_as[2], state)
        while len(self._cache) > CACHED_KEYS:
            self._cache.popitem(last=False)

    def acknowledged(self, pipe: redis.client.Pipeline, entry_ids: list[str], now_ms: int) -> None:
        """Queue on `pipe` (with the XACK) the removal of the acknowledged ids from `applied`."""
        if entry_ids:
            pipe.zrem(f"{self.prefix}:applied", *entry_ids)
        pipe.zremrangebyscore(f"{self.prefix}:applied", "-inf", now_ms - APPLIED_TTL_MS)

    def training_rows(self, limit: int) -> list[list[float]]:
        # Joined in Redis into one JSON array: thousands of rows read back one reply each were tens of
        # milliseconds of parsing in the worker, holding the interpreter lock against the consumer thread.
        return json.loads(self._rows(args=[f"{self.prefix}:rows", limit]))

    def forest_fitted(self, rows: int) -> None:
        """Note the stream's latest IsolationForest fit, for GET /api/v1/streams/{name} (when, on how many
        rows): until the first, the forest scores events `warming_up`."""
        key = forest_key(self.prefix)
        fitted_at = datetime.fromtimestamp(redis_clock.now(self.client), UTC).isoformat()
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping={"fitted_at": fitted_at, "rows": rows})
        pipe.hincrby(key, "fits", 1)
        pipe.expire(key, STATE_TTL_SECONDS)
        pipe.execute()

    def watermark(self) -> float | None:
        raw = self.client.get(f"{self.prefix}:watermark")
        return float(raw) if raw is not None else None

    def open_windows(self) -> dict[str, float]:
        """`<key>\\x1f<start>` -> start, of the windows not stored yet."""
        return {name.decode(): float(name.decode().rsplit("\x1f", 1)[1])
                for name in self.client.hkeys(f"{self.prefix}:open")}

    def window_figures(self, names: list[str], size: float) -> list[tuple[Aggregate | None, int]]:
        """(figures, flagged events) of each named window; no figures for a window without events.

        A few windows per script call: a script holds Redis for as long as it runs, and the hundreds of
        windows a busy stream closes each second, in one call, held every worker's round trips up for tens
        of milliseconds."""
        figures: list[tuple[Aggregate | None, int]] = []
        for first in range(0, len(names), FIGURES_PER_CALL):
            chunk = names[first:first + FIGURES_PER_CALL]
            figures += self._window_figures_of(self._figures(args=[self.prefix, repr(float(size)), *chunk]))
        return figures

    @staticmethod
    def _window_figures_of(reply: list[Any]) -> list[tuple[Aggregate | None, int]]:
        figures: list[tuple[Aggregate | None, int]] = []
        for item in reply:
            count, flagged = int(item[0]), int(item[1])
            if not count:
                figures.append((None, flagged))
                continue
            total, low, high = float(item[2]), float(item[3]), float(item[4])
            figures.append((Aggregate(count, total, total / count, low, high), flagged))
        return figures

    def forget_windows(self, names: list[str]) -> None:
        if names:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(f"{self.prefix}:open", *names)
            pipe.hdel(f"{self.prefix}:anomalies", *names)
            pipe.execute()
