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
        ModelEntry("spacy-en-core-web-sm", "ner", "3.8.0", "cortex_tasks.models.spacy_ner:SpacyEntityRecognizer",
                   "spaCy en_core_web_sm (bundled): OntoNotes entities (PERSON, GPE, ORG, DATE, ...) with "
                   "character offsets into the submitted text; params.labels filters"),
        ModelEntry("presidio-spacy-sm", "pii_detect", "2.2", "cortex_tasks.models.pii:PiiDetector",
                   "presidio-analyzer on spaCy en_core_web_sm: EMAIL, PHONE, CREDIT_CARD (Luhn), IBAN, "
                   "IP_ADDRESS, US_SSN, ADDRESS patterns plus PERSON/LOCATION from NER; URL on request"),
        ModelEntry("presidio-patterns", "pii_detect", "2.2", "cortex_tasks.models.pii:PatternPiiDetector",
                   "presidio pattern recognizers only (no NER model: no PERSON; LOCATION = country names)"),
        ModelEntry("presidio-spacy-sm-mask", "pii_mask", "2.2", "cortex_tasks.models.pii:PiiMasker",
                   "PII masking with presidio on spaCy: email partial, phone last_four, address "
                   "country_only, others [TYPE]; params.rules, params.confidence_threshold"),
        ModelEntry("presidio-patterns-mask", "pii_mask", "2.2", "cortex_tasks.models.pii:PatternPiiMasker",
                   "PII masking with presidio pattern recognizers only (no PERSON)"),
        ModelEntry("lingua", "language", "2.1.1", "cortex_tasks.models.language:LinguaLanguageDetector",
                   "lingua high-accuracy mode over 22 common languages (CORTEX_LANGUAGE_CANDIDATES): "
                   "ISO 639-1 code, name, relative confidence, alternatives"),
        ModelEntry("lingua-fast", "language", "2.1.1", "cortex_tasks.models.language:LinguaFastLanguageDetector",
                   "lingua low-accuracy mode (trigrams only): far less memory, weak on short texts"),
        ModelEntry("vader", "sentiment", "3.3.2", "cortex_tasks.models.sentiment:VaderSentiment",
                   "VADER lexicon sentiment (English): compound score in [-1, 1] as score, "
                   "positive/neutral/negative label with confidence"),
    )
}

TASKS: dict[str, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry("embed", GPU, "all-MiniLM-L6-v2", None, "Sentence embeddings (384-d vectors)",
                  models=("all-MiniLM-L6-v2",)),
        # --- gpu-queue tasks ---
        # --- nlp-queue tasks ---
        TaskEntry("ner", NLP, "spacy-en-core-web-sm", None,
                  "Named entities with character offsets (params.labels filters)",
                  models=("spacy-en-core-web-sm",)),
        TaskEntry("pii_detect", NLP, "presidio-spacy-sm", "presidio-patterns",
                  "Find personal data: type, offsets, score, text (params.entities, "
                  "params.confidence_threshold)", models=("presidio-spacy-sm", "presidio-patterns")),
        TaskEntry("pii_mask", NLP, "presidio-spacy-sm-mask", "presidio-patterns-mask",
                  "Mask personal data by rule (params.rules, params.confidence_threshold)",
                  models=("presidio-spacy-sm-mask", "presidio-patterns-mask")),
        TaskEntry("language", NLP, "lingua", "lingua-fast",
                  "Language identification: ISO 639-1 code, name, confidence, alternatives",
                  models=("lingua", "lingua-fast")),
        TaskEntry("sentiment", NLP, "vader", None,
                  "Sentiment: polarity score in [-1, 1], label and confidence", models=("vader",)),
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
