"""Where a streamed generation's pieces travel: the worker publishes each one on a per-job Redis channel,
which the gateway subscribes to before it enqueues the job; a client that goes away sets the stop key,
which the generating worker checks between tokens."""

STREAM_CHANNEL_PREFIX = "cortex:stream:"
STOP_KEY_PREFIX = "cortex:stop:"
