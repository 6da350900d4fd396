"""GPU inference worker: one process, one model copy shared by threads; torch gets every core.

Threads (not prefork) because the model is the expensive resource: many threads let many jobs wait on
I/O while one copy of the weights does the math (torch releases the GIL inside its kernels).
It also consumes the `batch` queue: batch chunks run the same models through the same inference service,
and here they share the loaded weights instead of loading a copy per prefork child.
"""
from workers.profile import WorkerProfile

PROFILE = WorkerProfile(
    name="gpu",
    queues=("gpu", "batch"),
    pool="threads",
    concurrency=16,
    metrics_port=9101,
    description="embeddings, transformer classifiers, generation, batch chunks; models preloaded before 'ready'",
)
