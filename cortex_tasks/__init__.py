"""The Cortex Celery app: `celery -A cortex_tasks worker -Q gpu` starts a gpu worker.

Task modules are imported by the worker only (`include`), so importing this package (as the gateway
does, to send tasks and read results) never imports torch or spaCy.
"""
from celery import Celery

TASK_MODULES = [
    "cortex_tasks.inference.tasks",
    "cortex_tasks.maintenance.tasks",
    "cortex_tasks.vectors.tasks",
    "cortex_tasks.registry.tasks",
    "cortex_tasks.batch.tasks",
    "cortex_tasks.training.tasks",
    "cortex_tasks.documents.tasks",
    "cortex_tasks.chat.tasks",
]

app = Celery("cortex", include=TASK_MODULES)
app.config_from_object("celeryconfig")

from cortex_tasks import publishing, worker_signals  # noqa: E402,F401  (connect signal handlers)

__all__ = ["app"]
