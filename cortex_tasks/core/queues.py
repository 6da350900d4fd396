"""Queues, routes and priorities, declared once.

Redis has no native priorities: kombu splits each queue into one list per priority step and reads them
in order (`queue_order_strategy=priority`). Ten steps, 0 is the highest, as Celery's Redis transport has it.
"""
from __future__ import annotations

from kombu import Queue

from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.contracts.task_names import every_task_of

GPU = "gpu"
NLP = "nlp"
TRAINING = "training"
BATCH = "batch"
MAINTENANCE = "maintenance"
STREAMS = "streams"
# Alert intake, grouping, delivery and stream reports (consumed by the nlp worker profile, beside maintenance).
ALERTS = "alerts"
QUEUE_NAMES: tuple[str, ...] = (GPU, NLP, TRAINING, BATCH, MAINTENANCE, STREAMS, ALERTS)

PRIORITY_STEPS: list[int] = list(range(10))
PRIORITY_CLASSES: dict[str, int] = {"high": 0, "normal": 4, "low": 8}
DEFAULT_PRIORITY = PRIORITY_CLASSES["normal"]

TASK_QUEUES: tuple[Queue, ...] = tuple(Queue(name, routing_key=name) for name in QUEUE_NAMES)

# Task name patterns -> queue. Inference tasks are split by the hardware they want, not by domain.
TASK_ROUTES: dict[str, dict[str, str]] = {
    task_names.RUN_GPU_JOBS: {"queue": GPU},
    task_names.RUN_NLP_JOBS: {"queue": NLP},
    task_names.STREAM_GENERATION: {"queue": GPU},
    every_task_of("batch"): {"queue": BATCH},
    every_task_of("training"): {"queue": TRAINING},
    every_task_of("maintenance"): {"queue": MAINTENANCE},
    # Vector tasks that embed texts need the embedding model: gpu. Index builds are long and model-free.
    task_names.VECTORS_UPSERT_ITEMS: {"queue": GPU},
    task_names.VECTORS_SEARCH_TEXT: {"queue": GPU},
    task_names.VECTORS_BUILD_INDEX: {"queue": MAINTENANCE},
    # Haystack indexing and question answering embed with MiniLM (and generate with SmolLM2): gpu.
    every_task_of("documents"): {"queue": GPU},
    # A chat reply generates text (SmolLM2, or OpenAI with SmolLM2 as fallback): gpu.
    every_task_of("chat"): {"queue": GPU},
    # An agent run waits on a remote chat model; its tools embed, search and answer with the gpu models.
    task_names.AGENTS_RUN_AGENT: {"queue": GPU},
    # Promotions are sent to the queue of the version's task (its readiness is checked there); this is the default.
    every_task_of("registry"): {"queue": MAINTENANCE},
    # The stream worker (workers/stream.py) owns the streams' state: their clean-up runs there.
    every_task_of("streams"): {"queue": STREAMS},
    every_task_of("alerts"): {"queue": ALERTS},
    every_task_of("reports"): {"queue": ALERTS},
}


def priority_of(priority_class: str) -> int:
    return PRIORITY_CLASSES[priority_class]
