"""GPU inference worker: one process, one model copy shared by threads; torch gets every core.

Threads (not prefork) because the model is the expensive resource: many threads let many jobs wait on
I/O while one copy of the weights does the math (torch releases the GIL inside its kernels).
"""
from workers.profile import WorkerProfile

PROFILE = WorkerProfile(
    name="gpu",
    queues=("gpu",),
    pool="threads",
    concurrency=16,
    description="embeddings, transformer classifiers, generation; models preloaded before 'ready'",
)
