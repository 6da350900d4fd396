"""CPU NLP worker: prefork children, each with one torch thread (set after fork), spaCy loaded per child."""
from workers.profile import WorkerProfile

PROFILE = WorkerProfile(
    name="nlp",
    # Housekeeping is light and periodic (priority aging runs every few seconds): it must not wait
    # behind an hours-long training run, so it lives here rather than on the training worker.
    queues=("nlp", "maintenance", "alerts"),
    pool="prefork",
    concurrency=2,
    max_tasks_per_child=1000,
    max_memory_per_child_kb=2_000_000,
    metrics_port=9102,
    description="spaCy NER, PII, language identification, sentiment; housekeeping",
)
