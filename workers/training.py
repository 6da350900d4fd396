"""Training worker: one job at a time (training takes the whole machine), long time limits per task."""
from workers.profile import WorkerProfile

PROFILE = WorkerProfile(
    name="training",
    queues=("training",),
    pool="prefork",
    concurrency=1,
    max_tasks_per_child=20,
    metrics_port=9103,
    description="training and evaluation",
)
