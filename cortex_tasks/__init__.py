"""The Cortex Celery app: `celery -A cortex_tasks worker -Q gpu` starts a gpu worker.

The package has two layers. `cortex_tasks.core` is what the gateway and the workers share (settings,
queues, the catalogue, jobs, storage, auth, cache, contracts, errors); `cortex_tasks.runtime` is what
only workers run (models, inference, trainers, document and chat pipelines, the worker's start-up hooks).
The runtime is imported by the worker only, through Celery's `include`, so importing this package (as the
gateway does, to send tasks and read results) never imports torch or spaCy.
"""
from celery import Celery

TASK_MODULES = [
    "cortex_tasks.runtime.inference.tasks",
    "cortex_tasks.runtime.maintenance.tasks",
    "cortex_tasks.runtime.vectors.tasks",
    "cortex_tasks.runtime.registry.tasks",
    "cortex_tasks.runtime.batch.tasks",
    "cortex_tasks.runtime.training.tasks",
    "cortex_tasks.runtime.documents.tasks",
    "cortex_tasks.runtime.chat.tasks",
    "cortex_tasks.runtime.alerting.tasks",
    "cortex_tasks.runtime.streams.tasks",
    "cortex_tasks.runtime.agents.tasks",
]

# The worker's start-up hooks are included first: Celery imports `include` before it sends `worker_init`.
WORKER_MODULES = ["cortex_tasks.runtime.worker_signals", *TASK_MODULES]

# Flower and the logs see task arguments as ids and sizes only (core/publishing.py).
app = Celery("cortex", include=WORKER_MODULES, amqp="cortex_tasks.core.publishing:ArgumentSummaryAMQP")
app.config_from_object("celeryconfig")

from cortex_tasks.core import publishing  # noqa: E402,F401  (stamps every published message)
from cortex_tasks.core.observability import celery_signals  # noqa: F401  (logs and traces of workers, Beat)

__all__ = ["app"]
