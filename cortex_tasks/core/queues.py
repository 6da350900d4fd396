"""Queues, routes and priorities, declared once.

Redis has no native priorities: kombu splits each queue into one list per priority step and reads them
in order (`queue_order_strategy=priority`). Ten steps, 0 is the highest, as Celery's Redis transport has it.
"""
from __future__ import annotations

from kombu import Queue

GPU = "gpu"
NLP = "nlp"
TRAINING = "training"
BATCH = "batch"
MAINTENANCE = "maintenance"
QUEUE_NAMES: tuple[str, ...] = (GPU, NLP, TRAINING, BATCH, MAINTENANCE)

PRIORITY_STEPS: list[int] = list(range(10))
PRIORITY_CLASSES: dict[str, int] = {"high": 0, "normal": 4, "low": 8}
DEFAULT_PRIORITY = PRIORITY_CLASSES["normal"]

TASK_QUEUES: tuple[Queue, ...] = tuple(Queue(name, routing_key=name) for name in QUEUE_NAMES)

# Task name patterns -> queue. Inference tasks are split by the hardware they want, not by domain.
TASK_ROUTES: dict[str, dict[str, str]] = {
    "cortex.inference.run_gpu_jobs": {"queue": GPU},
    "cortex.inference.run_nlp_jobs": {"queue": NLP},
    "cortex.inference.stream_generation": {"queue": GPU},
    "cortex.batch.*": {"queue": BATCH},
    "cortex.training.*": {"queue": TRAINING},
    "cortex.maintenance.*": {"queue": MAINTENANCE},
    # Vector tasks that embed texts need the embedding model: gpu. Index builds are long and model-free.
    "cortex.vectors.upsert_items": {"queue": GPU},
    "cortex.vectors.search_text": {"queue": GPU},
    "cortex.vectors.build_index": {"queue": MAINTENANCE},
    # Haystack indexing and question answering embed with MiniLM (and generate with SmolLM2): gpu.
    "cortex.documents.*": {"queue": GPU},
    # A chat reply generates text (SmolLM2, or OpenAI with SmolLM2 as fallback): gpu.
    "cortex.chat.*": {"queue": GPU},
    # Promotions are sent to the queue of the version's task (its readiness is checked there); this is the default.
    "cortex.registry.*": {"queue": MAINTENANCE},
}


def priority_of(priority_class: str) -> int:
    return PRIORITY_CLASSES[priority_class]
