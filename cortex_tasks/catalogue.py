"""What Cortex can run: every task, its queue, its default model and its fallback, and every model.

Plain data, importable by the gateway: nothing here imports torch, transformers or spaCy. The worker
turns a model entry into a loaded backend through `models.loaded.get_model`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cortex_tasks.queues import GPU, NLP


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    version: str
    loader: str  # "module:ClassName", imported only in workers
    description: str
    batchable: bool = True


@dataclass(frozen=True)
class TaskEntry:
    name: str
    queue: str
    default_model: str
    fallback_model: str | None
    description: str
    cacheable: bool = True
    models: tuple[str, ...] = field(default=())


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("all-MiniLM-L6-v2", "embed", "1", "cortex_tasks.models.embedding:SentenceEmbedder",
                   "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions, mean pooling, L2-normalised"),
        # --- gpu-queue models (classify, zero_shot, generate, reduce) ---
        # --- nlp-queue models (ner, pii, language, sentiment) ---
    )
}

TASKS: dict[str, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry("embed", GPU, "all-MiniLM-L6-v2", None, "Sentence embeddings (384-d vectors)",
                  models=("all-MiniLM-L6-v2",)),
        # --- gpu-queue tasks ---
        # --- nlp-queue tasks ---
    )
}

QUEUE_TASK_NAMES = {GPU: "cortex.inference.run_gpu_job", NLP: "cortex.inference.run_nlp_job"}


class UnknownName(LookupError):
    def __init__(self, kind: str, name: str, valid: list[str]):
        super().__init__(f"unknown {kind} {name!r}")
        self.kind, self.name, self.valid = kind, name, valid


def task_entry(name: str) -> TaskEntry:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownName("task", name, sorted(TASKS)) from None


def model_entry(task: TaskEntry, name: str | None) -> ModelEntry:
    chosen = name or task.default_model
    if chosen not in task.models:
        raise UnknownName("model", chosen, list(task.models))
    return MODELS[chosen]
