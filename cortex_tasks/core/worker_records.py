"""Worker readiness records in Redis: a worker that has loaded its models writes `cortex:workers:<hostname>`
(its queues, models, failures and batching) and refreshes it with every heartbeat; `/ready`, `cortex up`
and the health views read these records. A worker that dies stops refreshing, and its record expires."""

READY_KEY_PREFIX = "cortex:workers:"
READY_TTL_SECONDS = 120
