"""Stream worker: the consumer loop of the declared streams' Redis Streams (runtime/streams/consumer.py),
started by a bootstep in this worker's main process, and the `streams` queue (clean-up of deleted streams).

A threads pool of two: the queue's tasks are rare and I/O-bound, and the loop's thread does the scoring.
Run more of these workers for more throughput: they share the streams' consumer group (docs/streams.md).
"""
from workers.profile import WorkerProfile

PROFILE = WorkerProfile(
    name="stream",
    queues=("streams",),
    pool="threads",
    concurrency=2,
    metrics_port=9104,
    description="real-time streams: windows, features, detectors, verdicts, alert rules",
)
