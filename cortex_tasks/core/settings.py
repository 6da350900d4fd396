"""One typed settings object, read from the environment: every variable Cortex reads is declared once
below, with its type, default and a one-line description. An unset or empty variable means the default; a
value that cannot be read stops start-up with the variable's name. `python -m cortex_tasks.core.settings
--markdown` prints the list README.md shows (a unit test keeps the two the same).

Service URLs left unset mean "use the embedded stack": `cortex up` writes the URLs of the services it
started into `<CORTEX_DATA_DIR>/stack.json`, and every other process (workers, CLI, Beat) reads them
from there, so that they all find the same stack through the same data folder.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STACK_FILE_NAME = "stack.json"
# The data keys `cortex up` generates (core/storage/sealing.py), read when CORTEX_DATA_KEYS is unset.
DATA_KEYS_FILE_NAME = "data-keys"


def read_stack_file(folder: Path | None = None) -> dict[str, str]:
    path = (folder or get_settings().data_dir) / STACK_FILE_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _artifact_key(raw: str | None) -> bytes | None:
    """Decode CORTEX_ARTIFACT_KEY; a key that is set but unusable stops start-up rather than being ignored."""
    if raw in (None, ""):
        return None
    import base64
    import binascii

    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("CORTEX_ARTIFACT_KEY must be base64 (e.g. `openssl rand -base64 32`)") from None
    if len(key) != 32:
        raise ValueError(f"CORTEX_ARTIFACT_KEY must decode to 32 bytes for AES-256-GCM, not {len(key)}")
    return key


def data_keys_from(raw: str | None) -> dict[str, bytes]:
    """Decode CORTEX_DATA_KEYS, `kid:base64,kid:base64` (the first seals, all open): ids in order. A key
    that is set but unusable stops start-up rather than leaving sensitive values unsealed."""
    import base64
    import binascii

    keys: dict[str, bytes] = {}
    for entry in (raw or "").replace("\n", ",").split(","):
        if not entry.strip():
            continue
        kid, separator, encoded = entry.strip().partition(":")
        if not separator or not kid or not kid.isascii() or not kid.replace("-", "").replace("_", "").isalnum():
            raise ValueError("CORTEX_DATA_KEYS must be `kid:base64,...` with ids of letters, digits, - and _ "
                             "(e.g. `k1:$(openssl rand -base64 32)`)")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"CORTEX_DATA_KEYS: key {kid!r} is not base64") from None
        if len(key) != 32:
            raise ValueError(f"CORTEX_DATA_KEYS: key {kid!r} must decode to 32 bytes for AES-256-GCM, "
                             f"not {len(key)}")
        if kid in keys:
            raise ValueError(f"CORTEX_DATA_KEYS: key id {kid!r} appears twice")
        keys[kid] = key
    return keys


@dataclass(frozen=True)
class RateTier:
    """A token bucket per API key, and a narrower one per (key, model) for prediction calls, so that one
    model cannot take a caller's whole budget."""

    requests_per_minute: float
    burst_size: int
    model_requests_per_minute: float | None = None  # None: no per-model bucket
    model_burst_size: int | None = None


UNLIMITED_TIER = "unlimited"
DEFAULT_RATE_TIERS: dict[str, RateTier | None] = {
    # Per model: half the key's budget by default.
    "default": RateTier(60, 10, 30, 5),
    "premium": RateTier(300, 50, 150, 25),
    UNLIMITED_TIER: None,  # internal automation: never limited, and costs no Redis round trip
}


@dataclass(frozen=True)
class AlertRule:
    """Alert when security violations from one key or one IP reach `threshold` within `window_seconds`
    (CORTEX_AUDIT_ALERTS)."""

    type: str
    threshold: int
    window_seconds: float


DEFAULT_AUDIT_ALERTS = (AlertRule("security_breach", 3, 300.0), AlertRule("unusual_access", 10, 3600.0))
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str | float) -> float:
    """Seconds from `30`, `30s`, `5m`, `1h` or `90d`."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    text = str(raw).strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    try:
        value = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise ValueError(f"{raw!r} is not a duration (e.g. 30s, 5m, 1h, 90d)") from None
    if value <= 0:
        raise ValueError(f"{raw!r} must be a positive duration")
    return value


def _json_object(variable: str, raw: str | None, of: str) -> dict[str, Any]:
    """The JSON object a settings variable holds (empty if unset); anything else stops start-up."""
    if raw in (None, ""):
        return {}
    try:
        given = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{variable} is not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ValueError(f"{variable} must be a JSON object of {of}")
    return given


def _rate_tier(name: str, spec: object) -> RateTier | None:
    if spec is None:
        return None
    if not isinstance(spec, dict) or not {"requests_per_minute", "burst_size"} <= set(spec):
        raise ValueError(f"CORTEX_RATE_LIMITS[{name!r}] needs requests_per_minute and burst_size (or null)")
    rate, burst = float(spec["requests_per_minute"]), int(spec["burst_size"])
    per_model = spec.get("per_model", {"requests_per_minute": rate / 2, "burst_size": max(1, burst // 2)})
    if per_model is not None and not (
        isinstance(per_model, dict) and {"requests_per_minute", "burst_size"} <= set(per_model)
    ):
        raise ValueError(f"CORTEX_RATE_LIMITS[{name!r}].per_model needs requests_per_minute and burst_size")
    tier = RateTier(
        rate,
        burst,
        float(per_model["requests_per_minute"]) if per_model else None,
        int(per_model["burst_size"]) if per_model else None,
    )
    if (
        tier.requests_per_minute <= 0
        or tier.burst_size < 1
        or (per_model and (tier.model_requests_per_minute <= 0 or tier.model_burst_size < 1))
    ):
        raise ValueError(f"CORTEX_RATE_LIMITS[{name!r}]: rates must be positive and bursts at least 1")
    return tier


def rate_tiers_from(raw: str | None) -> dict[str, RateTier | None]:
    """The architecture's tiers, overridden or extended by CORTEX_RATE_LIMITS, a JSON object
    `{"tier": {"requests_per_minute", "burst_size", "per_model"?: {...} | null} | null}` (null: unlimited)."""
    tiers = dict(DEFAULT_RATE_TIERS)
    given = _json_object("CORTEX_RATE_LIMITS", raw, "tiers")
    tiers.update({str(name): _rate_tier(str(name), spec) for name, spec in given.items()})
    return tiers


@dataclass(frozen=True)
class Batching:
    """How one model's concurrent items are batched: at most `max_batch_size` items
    per model call (and per message a gateway coalesces), and how long a partial batch may wait for items
    known to be on their way (inference/batcher.py)."""

    max_batch_size: int
    max_wait_seconds: float


_BATCHING_KEYS = {"max_batch_size", "max_wait_ms"}


def _batching(model: str, spec: object, default: Batching) -> Batching:
    where = f"CORTEX_BATCHING_PER_MODEL[{model!r}]"
    if not isinstance(spec, dict) or not spec or not set(spec) <= _BATCHING_KEYS:
        raise ValueError(f"{where} must be an object with max_batch_size and/or max_wait_ms")
    size, wait_ms = spec.get("max_batch_size", default.max_batch_size), spec.get("max_wait_ms")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{where}.max_batch_size must be a whole number of at least 1")
    if wait_ms is not None and (
        isinstance(wait_ms, bool) or not isinstance(wait_ms, (int, float)) or wait_ms < 0
    ):
        raise ValueError(f"{where}.max_wait_ms must be a number of milliseconds, 0 or more")
    return Batching(size, default.max_wait_seconds if wait_ms is None else wait_ms / 1000)


def batching_from(raw: str | None, default: Batching) -> dict[str, Batching]:
    """CORTEX_BATCHING_PER_MODEL: a JSON object `{"model": {"max_batch_size"?, "max_wait_ms"?}}`; what a
    model leaves out is the global setting (MAX_BATCH_SIZE, CORTEX_BATCH_MAX_WAIT_MS)."""
    given = _json_object("CORTEX_BATCHING_PER_MODEL", raw, "models")
    return {str(model): _batching(str(model), spec, default) for model, spec in given.items()}


def audit_alerts_from(raw: str | None) -> tuple[AlertRule, ...]:
    """CORTEX_AUDIT_ALERTS: a JSON list of `{"type", "threshold", "window": "5m"}` replacing the defaults."""
    if raw in (None, ""):
        return DEFAULT_AUDIT_ALERTS
    try:
        given = json.loads(raw)
        rules = tuple(
            AlertRule(str(rule["type"]), int(rule["threshold"]), parse_duration(rule["window"]))
            for rule in given
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"CORTEX_AUDIT_ALERTS must be a JSON list of {{type, threshold, window}}: {exc}"
        ) from None
    if any(rule.threshold < 1 for rule in rules):
        raise ValueError("CORTEX_AUDIT_ALERTS: thresholds are at least 1")
    return rules


# US dollars per 1,000 tokens (OpenAI's list prices when this was written); CORTEX_OPENAI_PRICES overrides.
DEFAULT_OPENAI_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input": 0.00015, "output": 0.0006},
    "text-embedding-3-small": {"input": 0.00002, "output": 0.0},
}


# OpenAI's list prices: Whisper per audio minute; images per image by "quality size".
DEFAULT_MEDIA_PRICES: dict[str, dict[str, float]] = {
    "whisper-1": {"per_minute": 0.006},
    "dall-e-3": {"standard 1024x1024": 0.04, "standard 1024x1792": 0.08, "standard 1792x1024": 0.08,
                 "hd 1024x1024": 0.08, "hd 1024x1792": 0.12, "hd 1792x1024": 0.12},
    "gpt-image-1": {"low 1024x1024": 0.011, "low 1024x1536": 0.016, "low 1536x1024": 0.016,
                    "medium 1024x1024": 0.042, "medium 1024x1536": 0.063, "medium 1536x1024": 0.063,
                    "high 1024x1024": 0.167, "high 1024x1536": 0.25, "high 1536x1024": 0.25},
}


def media_prices_from(raw: str | None) -> dict[str, dict[str, float]]:
    """The list prices, with the models and entries `raw` (JSON) gives replacing theirs."""
    prices = {model: dict(price) for model, price in DEFAULT_MEDIA_PRICES.items()}
    if raw in (None, ""):
        return prices
    try:
        given = json.loads(raw)
        for model, price in given.items():
            prices.setdefault(str(model), {}).update({str(name): float(value) for name, value in price.items()})
    except (ValueError, AttributeError, TypeError):
        raise ValueError('CORTEX_OPENAI_MEDIA_PRICES must be JSON like {"whisper-1": {"per_minute": 0.006}, '
                         '"dall-e-3": {"standard 1024x1024": 0.04}} (US dollars)') from None
    return prices


def openai_prices_from(raw: str | None) -> dict[str, dict[str, float]]:
    prices = {model: dict(price) for model, price in DEFAULT_OPENAI_PRICES.items()}
    if raw in (None, ""):
        return prices
    try:
        given = json.loads(raw)
        for model, price in given.items():
            prices[str(model)] = {
                "input": float(price.get("input", 0.0)),
                "output": float(price.get("output", 0.0)),
            }
    except (ValueError, AttributeError, TypeError):
        raise ValueError(
            'CORTEX_OPENAI_PRICES must be JSON like {"gpt-4o-mini": {"input": 0.00015, '
            '"output": 0.0006}} (US dollars per 1,000 tokens)'
        ) from None
    return prices


def variable(
    name: str | AliasChoices,
    default: Any = None,
    description: str = "",
    *,
    shown: str | None = None,
    **options: Any,
) -> Any:
    """One environment variable: its exact name, default and one-line description (README.md lists them);
    `shown` is the default as the README says it, where the value itself would mislead (a computed one)."""
    extra = {"shown_default": shown} if shown is not None else None
    if callable(default):
        return Field(
            default_factory=default,
            validation_alias=name,
            description=description,
            json_schema_extra=extra,
            **options,
        )
    return Field(default, validation_alias=name, description=description, json_schema_extra=extra, **options)


class FromEnvironment(BaseSettings):
    """Variables are read by their exact names; an empty one is the same as an unset one."""

    model_config = SettingsConfigDict(env_ignore_empty=True, case_sensitive=True, frozen=True, extra="ignore")


class BatchConfig(FromEnvironment):
    """Batch jobs."""

    max_batch_size: int = variable("CORTEX_BATCH_MAX_SIZE", 1000, "Most items one batch job may hold.")
    chunk_size: int = variable("CORTEX_BATCH_CHUNK_SIZE", 100, "Items per chunk task.")
    parallel_workers: int = variable(
        "CORTEX_BATCH_PARALLEL_WORKERS",
        4,
        "Chunks of one batch in flight at once, so a big batch cannot take every worker thread.",
    )
    retry_count: int = variable("CORTEX_BATCH_RETRY_COUNT", 3, "Retries of a failed chunk.")
    stale_chunk_seconds: int = variable(
        "CORTEX_BATCH_STALE_CHUNK_SECONDS",
        900,
        "A chunk silent this long is re-enqueued; longer than a chunk's hard time limit.",
    )
    result_retention_days: int = variable(
        "CORTEX_BATCH_RESULT_RETENTION_DAYS", 7, "Days a finished batch's result objects are kept."
    )
    queue: str = variable(
        "CORTEX_BATCH_QUEUE", "batch", "The queue chunk tasks go to (recorded with the job)."
    )
    # Not configurable: pagination of /batch/results (response_config.pagination) and a batch's deadline,
    # past which the stale-job sweep fails what is still unfinished.
    default_page_size: ClassVar[int] = 50
    max_page_size: ClassVar[int] = 200
    deadline_seconds: ClassVar[int] = 24 * 3600


class ChatConfig(FromEnvironment):
    """Chat sessions (chat_config)."""

    default_model: str = variable(
        "CORTEX_CHAT_MODEL", "SmolLM2-135M-Instruct", "The model a chat session uses unless it names one."
    )
    memory_turns: int = variable(
        "CORTEX_CHAT_MEMORY_TURNS", 10, "Earlier turns (a message and its answer) a reply sees at most."
    )
    # SmolLM2's context is 8192 tokens; about 4 characters per token leaves room for the answer.
    memory_chars: int = variable(
        "CORTEX_CHAT_MEMORY_CHARS",
        6000,
        "Characters of earlier turns a reply sees at most (oldest dropped first).",
    )
    # Counted with the answering model's own tokenizer (runtime/chat/token_counting.py).
    memory_tokens: int = variable(
        "CORTEX_CHAT_MEMORY_TOKENS",
        4096,
        "Tokens a reply's whole prompt (system, earlier turns, the message) takes at most, counted with the "
        "model's own tokenizer (oldest turns dropped first).",
    )
    default_system: ClassVar[str] = "You are a helpful assistant. Answer briefly."
    max_message_chars: ClassVar[int] = 4000
    default_wait_seconds: ClassVar[float] = 30.0
    # One reply per session at a time; a message waits this long for the one before it.
    lock_wait_seconds: ClassVar[int] = 240


class OpenAIConfig(FromEnvironment):
    """OpenAI models (External Model Integration); without a key their requests are refused with 503."""

    api_key: str | None = variable(
        "CORTEX_OPENAI_API_KEY", None, "OpenAI API key; unset: OpenAI models refused.", repr=False
    )
    base_url: str = variable("CORTEX_OPENAI_BASE_URL", "https://api.openai.com/v1", "OpenAI API base URL.")
    prices: Annotated[dict[str, dict[str, float]], NoDecode] = variable(
        "CORTEX_OPENAI_PRICES",
        lambda: openai_prices_from(None),
        'US dollars per 1,000 tokens, JSON, e.g. `{"gpt-4o-mini": {"input": 0.00015, "output": 0.0006}}`.',
        shown="list prices",
    )
    # Shared by every worker (Redis): OpenAI's own limits are per organisation, not per process.
    requests_per_minute: int = variable("CORTEX_OPENAI_RPM", 500, "OpenAI requests per minute, all workers.")
    tokens_per_minute: int = variable("CORTEX_OPENAI_TPM", 200_000, "OpenAI tokens per minute, all workers.")
    max_rate_wait_seconds: float = variable(
        "CORTEX_OPENAI_MAX_RATE_WAIT", 5.0, "Seconds a call may wait for the next rate window before failing."
    )
    max_retries: int = variable("CORTEX_OPENAI_MAX_RETRIES", 3, "Retries of 429, 5xx and connection errors.")
    backoff_seconds: float = variable(
        "CORTEX_OPENAI_BACKOFF", 0.5, "First retry's backoff in seconds (doubling)."
    )
    timeout_seconds: float = variable("CORTEX_OPENAI_TIMEOUT", 30.0, "Seconds one OpenAI call may take.")
    monthly_budget_usd: float | None = variable(
        "CORTEX_OPENAI_MONTHLY_BUDGET",
        None,
        "Month-to-date US dollars above which OpenAI calls are refused.",
        shown="no budget",
    )
    # Models of another OpenAI-compatible server (vLLM, llama.cpp, Ollama) at CORTEX_OPENAI_BASE_URL.
    extra_models: Annotated[dict[str, str], NoDecode] = variable(
        "CORTEX_OPENAI_EXTRA_MODELS",
        dict,
        "More model names the server at CORTEX_OPENAI_BASE_URL serves, each with its task (generate, embed, "
        'transcribe or image_generate), JSON, e.g. `{"llama3.1:8b": "generate", "nomic-embed-text": "embed"}`.',
        shown="none",
    )
    # Speech and images (transcribe, image_generate): priced per audio minute and per image, not per token.
    media_prices: Annotated[dict[str, dict[str, float]], NoDecode] = variable(
        "CORTEX_OPENAI_MEDIA_PRICES",
        lambda: media_prices_from(None),
        "US dollars per audio minute (`per_minute`) or per image (by `quality size`), JSON, e.g. "
        '`{"whisper-1": {"per_minute": 0.006}, "dall-e-3": {"standard 1024x1024": 0.04}}`.',
        shown="list prices",
    )
    max_retry_after_seconds: ClassVar[float] = 20.0
    parallel_requests: ClassVar[int] = 8

    @field_validator("base_url")
    @classmethod
    def _without_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("prices", mode="before")
    @classmethod
    def _prices(cls, raw: Any) -> Any:
        return openai_prices_from(raw) if isinstance(raw, str) else raw

    @field_validator("extra_models", mode="before")
    @classmethod
    def _extra_models(cls, raw: Any) -> Any:
        if not isinstance(raw, str):
            return raw
        try:
            given = json.loads(raw)
        except ValueError:
            given = None
        tasks = ("generate", "embed", "transcribe", "image_generate")
        if not isinstance(given, dict) or not all(isinstance(name, str) and name and task in tasks
                                                  for name, task in given.items()):
            raise ValueError('CORTEX_OPENAI_EXTRA_MODELS must be a JSON object of model name -> task '
                             f'({", ".join(tasks)}), e.g. {{"llama3.1:8b": "generate"}}')
        return given

    @field_validator("media_prices", mode="before")
    @classmethod
    def _media_prices(cls, raw: Any) -> Any:
        return media_prices_from(raw) if isinstance(raw, str) else raw

    @property
    def configured(self) -> bool:
        return bool(self.api_key)

    def price(self, model: str) -> dict[str, float]:
        return self.prices.get(model, {"input": 0.0, "output": 0.0})


class TrainingConfig(FromEnvironment):
    """Training jobs (training_endpoints) and the evaluation gate (model_selection.criteria)."""

    max_concurrent_jobs: int = variable(
        "CORTEX_TRAINING_MAX_CONCURRENT",
        5,
        "Training jobs running at once, across workers (and waiting per owner).",
    )
    queue_size: int = variable(
        "CORTEX_TRAINING_QUEUE_SIZE",
        100,
        "Training jobs waiting over all owners; past it a submission gets 429.",
    )
    gate_threshold: float = variable(
        "CORTEX_TRAINING_GATE_THRESHOLD",
        0.85,
        "Held-out metric at which a new version is promoted to canary.",
    )
    gate_enabled: bool = variable(
        "CORTEX_TRAINING_GATE", True, "Promote versions that pass the gate on their own."
    )
    slot_retry_seconds: int = variable(
        "CORTEX_TRAINING_SLOT_RETRY_SECONDS",
        10,
        "How long a job that found no free training slot waits to try again.",
    )
    priority_levels: ClassVar[int] = 3  # high, normal, low
    max_rows: ClassVar[int] = 100_000


def _comma_list(raw: Any) -> Any:
    return tuple(part.strip() for part in raw.split(",") if part.strip()) if isinstance(raw, str) else raw


class AlertsConfig(FromEnvironment):
    """Alerts: aggregation (alert_aggregation), channels, Cortex's own rules (alerts.rules), stream reports."""

    grouping_window_seconds: float = variable(
        "CORTEX_ALERT_GROUPING_WINDOW", 300.0, "Alerts of one rule and key within this window form one group.",
        shown="5m",
    )
    max_per_group: int = variable(
        "CORTEX_ALERT_MAX_PER_GROUP", 10, "Alerts kept and sent per group; more are counted in the group."
    )
    cooldown_seconds: float = variable(
        "CORTEX_ALERT_COOLDOWN", 900.0, "After a notification, the same rule and key stay quiet this long.",
        shown="15m",
    )
    dedup_enabled: bool = variable("CORTEX_ALERT_DEDUP", True, "Fold repeats of one alert into it.")
    dedup_window_seconds: float = variable(
        "CORTEX_ALERT_DEDUP_WINDOW", 3600.0, "Repeats of one dedup key within this window are one alert.",
        shown="1h",
    )
    delivery_retries: int = variable(
        "CORTEX_ALERT_DELIVERY_RETRIES", 8, "Retries of a failed delivery to one channel (exponential back-off)."
    )
    delivery_backoff_seconds: float = variable(
        "CORTEX_ALERT_DELIVERY_BACKOFF", 2.0, "First retry's delay; each next one doubles, up to 10 minutes.",
        shown="2s",
    )
    delivery_timeout_seconds: float = variable(
        "CORTEX_ALERT_DELIVERY_TIMEOUT", 10.0, "Timeout of one webhook or SMTP attempt.", shown="10s"
    )
    private_webhooks: bool = variable(
        "CORTEX_ALERT_PRIVATE_WEBHOOKS", False,
        "Allow webhook channels on loopback, private and link-local addresses (off: a tenant cannot reach "
        "Cortex's own network).",
    )
    operator_webhooks: Annotated[tuple[str, ...], NoDecode] = variable(
        "CORTEX_ALERT_OPERATOR_WEBHOOKS", (), "Webhook URLs (Slack-compatible) of Cortex's own alerts, comma-separated.",
        shown="none",
    )
    operator_emails: Annotated[tuple[str, ...], NoDecode] = variable(
        "CORTEX_ALERT_OPERATOR_EMAILS", (), "E-mail recipients of Cortex's own alerts, comma-separated.",
        shown="none",
    )
    operator_tenant: str = variable(
        "CORTEX_ALERT_OPERATOR_TENANT", "default", "Tenant whose alert list holds Cortex's own alerts."
    )
    response_time_threshold_seconds: float = variable(
        "CORTEX_ALERT_RESPONSE_TIME", 1.0, "Cortex rule: mean job response time above this alerts.", shown="1s"
    )
    response_time_window_seconds: float = variable(
        "CORTEX_ALERT_RESPONSE_TIME_WINDOW", 300.0, "Window the response-time rule is measured over.", shown="5m"
    )
    error_rate_threshold: float = variable(
        "CORTEX_ALERT_ERROR_RATE", 0.05, "Cortex rule: share of failed jobs above this alerts (0..1)."
    )
    error_rate_window_seconds: float = variable(
        "CORTEX_ALERT_ERROR_RATE_WINDOW", 300.0, "Window the error-rate rule is measured over.", shown="5m"
    )
    cache_miss_threshold: float = variable(
        "CORTEX_ALERT_CACHE_MISS", 0.40, "Cortex rule: share of cache lookups that missed above this alerts (0..1)."
    )
    cache_miss_window_seconds: float = variable(
        "CORTEX_ALERT_CACHE_MISS_WINDOW", 900.0, "Window the cache-miss rule is measured over.", shown="15m"
    )
    resource_threshold: float = variable(
        "CORTEX_ALERT_RESOURCE_USAGE", 0.80, "Cortex rule: CPU, memory or disk use above this alerts (0..1)."
    )
    resource_window_seconds: float = variable(
        "CORTEX_ALERT_RESOURCE_USAGE_WINDOW", 600.0, "How long resource use must stay above it.", shown="10m"
    )
    rule_min_samples: int = variable(
        "CORTEX_ALERT_MIN_SAMPLES", 20, "Jobs or cache lookups a window needs before a rate rule can fire."
    )
    smtp_host: str | None = variable("CORTEX_SMTP_HOST", None, "SMTP server of e-mail channels; unset: no e-mail.")
    smtp_port: int = variable("CORTEX_SMTP_PORT", 587, "Its port.")
    smtp_user: str | None = variable("CORTEX_SMTP_USER", None, "Login name, if the server wants one.")
    smtp_password: str | None = variable("CORTEX_SMTP_PASSWORD", None, "Its password.")
    smtp_sender: str = variable("CORTEX_SMTP_FROM", "cortex@localhost", "From address of alert e-mails.")
    smtp_security: Literal["starttls", "ssl", "none"] = variable(
        "CORTEX_SMTP_SECURITY", "starttls", "starttls, ssl (implicit TLS) or none."
    )
    report_period_seconds: float = variable(
        "CORTEX_REPORT_PERIOD", 86400.0, "Period of the reports written per stream by Beat.", shown="1d"
    )
    report_forecast_points: int = variable(
        "CORTEX_REPORT_FORECAST_POINTS", 12, "Windows a report forecasts ahead."
    )
    alert_retention_days: float = variable(
        "CORTEX_ALERT_RETENTION", 90.0,
        "How long an alert group (its alerts and deliveries) is kept after its last activity.", shown="90d",
    )
    report_retention_days: float = variable(
        "CORTEX_REPORT_RETENTION", 90.0, "How long stream reports (rows and stored files) are kept.", shown="90d"
    )

    @field_validator("alert_retention_days", "report_retention_days", mode="before")
    @classmethod
    def _retention_days(cls, raw: Any) -> Any:
        return parse_duration(raw) / 86400 if isinstance(raw, str) else raw

    @field_validator("grouping_window_seconds", "cooldown_seconds", "dedup_window_seconds",
                     "delivery_timeout_seconds", "delivery_backoff_seconds", "response_time_threshold_seconds", "response_time_window_seconds",
                     "error_rate_window_seconds", "cache_miss_window_seconds", "resource_window_seconds",
                     "report_period_seconds", mode="before")
    @classmethod
    def _duration(cls, raw: Any) -> Any:
        return parse_duration(raw) if isinstance(raw, str) else raw

    @field_validator("operator_webhooks", "operator_emails", mode="before")
    @classmethod
    def _list(cls, raw: Any) -> Any:
        return _comma_list(raw)

    @field_validator("max_per_group", "report_forecast_points", "rule_min_samples")
    @classmethod
    def _positive(cls, count: int) -> int:
        if count < 1:
            raise ValueError("must be at least 1")
        return count

    @field_validator("delivery_retries")
    @classmethod
    def _not_negative(cls, count: int) -> int:
        if count < 0:
            raise ValueError("must be 0 or more")
        return count

    @property
    def smtp_configured(self) -> bool:
        return bool(self.smtp_host)


# Asymmetric only: a shared-secret algorithm (HS*) would let whoever holds the IdP's public key sign tokens.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512", "EdDSA"})


class TokensConfig(FromEnvironment):
    """Access tokens: Cortex's own (POST /oauth/token) and an external identity provider's (JWKS)."""

    issuer: str = variable("CORTEX_TOKEN_ISSUER", "cortex", "`iss` of the tokens Cortex issues.")
    audience: str = variable("CORTEX_TOKEN_AUDIENCE", "cortex-api", "`aud` of the tokens Cortex issues.")
    lifetime_seconds: int = variable(
        "CORTEX_TOKEN_LIFETIME", 900, "How long an issued token is valid.", shown="15m"
    )
    key_rotation_seconds: int = variable(
        "CORTEX_TOKEN_KEY_ROTATION",
        30 * 86400,
        "Age at which the signing key is replaced on the next token issued.",
        shown="30d",
    )
    leeway_seconds: int = variable(
        "CORTEX_TOKEN_LEEWAY", 30, "Clock skew allowed on exp, nbf and iat.", shown="30s"
    )
    rate_tier: str = variable(
        "CORTEX_TOKEN_RATE_TIER", "default", "Rate-limit tier of POST /oauth/token, per client address."
    )
    oidc_issuer: str | None = variable(
        "CORTEX_OIDC_ISSUER", None, "External identity provider's `iss`; unset: its tokens are refused."
    )
    oidc_audience: str | None = variable("CORTEX_OIDC_AUDIENCE", None, "The `aud` its tokens must carry.")
    oidc_jwks_url: str | None = variable("CORTEX_OIDC_JWKS_URL", None, "Where its public keys are (JWKS).")
    oidc_algorithms: Annotated[tuple[str, ...], NoDecode] = variable(
        "CORTEX_OIDC_ALGORITHMS",
        ("RS256", "ES256"),
        "Signature algorithms accepted from it, comma-separated (asymmetric only).",
        shown="RS256,ES256",
    )
    oidc_tenant_claim: str = variable(
        "CORTEX_OIDC_TENANT_CLAIM", "tenant", "Claim naming the tenant (dots reach into objects)."
    )
    oidc_role_claim: str = variable("CORTEX_OIDC_ROLE_CLAIM", "role", "Claim naming the Cortex role.")
    oidc_models_claim: str = variable(
        "CORTEX_OIDC_MODELS_CLAIM", "models", "Claim listing the allowed models; absent: any model."
    )
    oidc_tasks_claim: str = variable(
        "CORTEX_OIDC_TASKS_CLAIM", "tasks", "Claim listing the allowed tasks; absent: any task."
    )
    oidc_default_tenant: str | None = variable(
        "CORTEX_OIDC_DEFAULT_TENANT", None, "Tenant of a token without the tenant claim.", shown="none: required"
    )
    oidc_tier: str = variable("CORTEX_OIDC_TIER", "default", "Rate-limit tier of external tokens.")
    # The IdP's key set is cached this long; a token with a kid not in it refetches at most this often, so
    # made-up kids cannot make the gateway fetch once per request.
    jwks_cache_seconds: ClassVar[int] = 300
    jwks_min_refetch_seconds: ClassVar[float] = 30.0

    @field_validator("lifetime_seconds", "key_rotation_seconds", "leeway_seconds", mode="before")
    @classmethod
    def _duration(cls, raw: Any, info: ValidationInfo) -> Any:
        if info.field_name == "leeway_seconds" and isinstance(raw, str) and raw.strip().rstrip("s") == "0":
            return 0  # no leeway at all is a valid choice; the other two must be positive
        return int(parse_duration(raw)) if isinstance(raw, str) else raw

    @field_validator("oidc_algorithms", mode="before")
    @classmethod
    def _algorithms(cls, raw: Any) -> Any:
        names = tuple(part.strip() for part in raw.split(",") if part.strip()) if isinstance(raw, str) else raw
        unsafe = [name for name in names if name not in ASYMMETRIC_ALGORITHMS]
        if not names or unsafe:
            raise ValueError(f"CORTEX_OIDC_ALGORITHMS takes asymmetric algorithms only "
                             f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}), not {', '.join(unsafe) or 'none'}")
        return names

    @model_validator(mode="after")
    def _oidc_complete(self) -> TokensConfig:
        given = [self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url]
        if any(given) and not all(given):
            raise ValueError("CORTEX_OIDC_ISSUER, CORTEX_OIDC_AUDIENCE and CORTEX_OIDC_JWKS_URL go together")
        if self.oidc_jwks_url and not self.oidc_jwks_url.startswith(("https://", "http://")):
            raise ValueError("CORTEX_OIDC_JWKS_URL must be an http(s) URL")
        if self.oidc_issuer and self.oidc_issuer == self.issuer:
            raise ValueError("CORTEX_OIDC_ISSUER must differ from CORTEX_TOKEN_ISSUER")
        return self

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)


class StreamsConfig(FromEnvironment):
    """Real-time streams (realtime_pipeline; docs/streams.md)."""

    buffer_size: int = variable(
        "CORTEX_STREAM_BUFFER_SIZE", 1000, "Most events a stream worker reads and scores as one micro-batch."
    )
    processing_interval: float = variable(
        "CORTEX_STREAM_PROCESSING_INTERVAL", 0.1,
        "Longest wait for a micro-batch to fill before it is scored (seconds, or like 100ms).",
    )
    max_length: int = variable(
        "CORTEX_STREAM_MAXLEN", 1_000_000,
        "Entries a stream's Redis Stream keeps (XADD MAXLEN ~, approximate); older ones are trimmed.",
    )
    claim_idle: float = variable(
        "CORTEX_STREAM_CLAIM_IDLE", 30.0,
        "Seconds an event may stay unacknowledged by its consumer before another stream worker claims it.",
    )
    lateness: float = variable(
        "CORTEX_STREAM_LATENESS", 10.0,
        "Seconds of event time a window stays open after its end for late events, before it is stored.",
    )
    max_events_per_request: int = variable(
        "CORTEX_STREAM_MAX_EVENTS_PER_REQUEST", 10_000, "Most events one POST /streams/{name}/events may carry."
    )
    live_max_seconds: float = variable(
        "CORTEX_STREAM_LIVE_MAX_SECONDS", 3600.0,
        "Longest a GET /streams/{name}/live connection stays open (clients reconnect).",
    )
    refresh_seconds: float = variable(
        "CORTEX_STREAM_REFRESH_SECONDS", 2.0, "How often a stream worker rereads the declared streams."
    )
    window_retention_days: float = variable(
        "CORTEX_STREAM_WINDOW_RETENTION", 90.0, "How long stored window aggregates are kept (by window start).",
        shown="90d",
    )
    verdict_retention_days: float = variable(
        "CORTEX_STREAM_VERDICT_RETENTION", 30.0, "How long stored verdicts are kept (by event time).", shown="30d"
    )

    @field_validator("window_retention_days", "verdict_retention_days", mode="before")
    @classmethod
    def _retention_days(cls, raw: Any) -> Any:
        return parse_duration(raw) / 86400 if isinstance(raw, str) else raw

    @field_validator("processing_interval", "claim_idle", "lateness", "live_max_seconds", "refresh_seconds",
                     mode="before")
    @classmethod
    def _duration(cls, raw: Any) -> Any:
        if isinstance(raw, str) and raw.strip().lower().endswith("ms"):
            return parse_duration(raw.strip()[:-2]) / 1000
        return parse_duration(raw) if isinstance(raw, str) else raw


class Settings(FromEnvironment):
    """Services, request handling, cache, overload protection, rate limits, audit and processes."""

    # Where things are: see the module docstring for the stack.json fallback.
    data_dir: Path = variable(
        "CORTEX_DATA_DIR", Path("./var"), "The data folder (stack.json, models, caches).", shown="./var"
    )
    redis_url: str = variable(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis: broker, results, cache.",
        shown="the stack's, else redis://127.0.0.1:6379/0",
    )
    database_url: str = variable(
        "DATABASE_URL",
        "postgresql://cortex@127.0.0.1:5432/cortex",
        "PostgreSQL with pgvector: jobs, keys, registry, audit.",
        shown="the stack's, else postgresql://cortex@127.0.0.1:5432/cortex",
    )
    artifact_dir: Path = variable(
        "CORTEX_ARTIFACT_DIR",
        Path("./var/artifacts"),
        "Artifact folder when no object store is configured.",
        shown="the stack's, else CORTEX_DATA_DIR/artifacts",
    )
    models_dir: Path | None = variable(
        "CORTEX_MODELS_DIR", None, "Your own Hugging Face classifier folders.", shown="CORTEX_DATA_DIR/models"
    )
    # Object storage (minio_config, storage_security).
    s3_endpoint: str | None = variable(
        AliasChoices("MINIO_ENDPOINT", "S3_ENDPOINT"),
        None,
        "S3/MinIO endpoint; unset: artifacts on the local disk.",
    )
    s3_access_key: str | None = variable("MINIO_ACCESS_KEY", None, "Object store access key.", repr=False)
    s3_secret_key: str | None = variable("MINIO_SECRET_KEY", None, "Object store secret key.", repr=False)
    s3_bucket: str = variable("MINIO_BUCKET", "model-artifacts", "Object store bucket.")
    s3_secure: bool = variable("MINIO_SECURE", False, "Use HTTPS to the object store.")
    s3_region: str = variable("MINIO_REGION", "us-east-1", "Object store region.")
    artifact_key: bytes | None = variable(
        "CORTEX_ARTIFACT_KEY",
        None,
        "Base64 of 32 bytes: AES-256-GCM for artifacts; unset: unencrypted.",
        repr=False,
    )
    # Sensitive jobs (pii_detect, pii_mask, requests marked "sensitive"): see core/storage/sealing.py.
    data_keys: Annotated[dict[str, bytes], NoDecode] = variable(
        "CORTEX_DATA_KEYS",
        dict,
        "`kid:base64,...` AES-256-GCM keys for sensitive values at rest; the first seals, all open.",
        shown="the data folder's data-keys file, else none",
        repr=False,
    )
    sensitive_storage: Literal["encrypt", "discard"] = variable(
        "CORTEX_SENSITIVE_STORAGE",
        "encrypt",
        "Sensitive inputs and results at rest: `encrypt` (discarded while no key is set) or `discard`.",
    )
    admin_key: str | None = variable(
        "CORTEX_ADMIN_KEY", None, "An API key for automation, never stored.", repr=False
    )
    # Batching: concurrent requests for one model share a call.
    max_batch_size: int = variable("MAX_BATCH_SIZE", 32, "Items per model call and per gateway message.")
    batching_enabled: bool = variable("CORTEX_BATCHING", True, "Batch concurrent items of one model.")
    batch_max_wait_ms: float = variable(
        "CORTEX_BATCH_MAX_WAIT_MS", 2.0, "Milliseconds a partial batch waits for items on their way."
    )
    batching_per_model: Annotated[dict[str, Batching], NoDecode] = variable(
        "CORTEX_BATCHING_PER_MODEL",
        dict,
        "Per-model overrides of the two above, JSON (see above).",
        shown="none",
    )
    coalesce_max_inflight: int = variable(
        "CORTEX_COALESCE_MAX_INFLIGHT",
        4,
        "Messages per model and params the whole gateway keeps in flight (its processes share them).",
    )
    coalesce_max_wait_ms: float = variable(
        "CORTEX_COALESCE_MAX_WAIT_MS",
        20.0,
        "Longest a busy model's gathering message waits for more requests (adaptive; 0: never waits).",
        ge=0,
    )
    gateway_processes: int = variable(
        "CORTEX_GATEWAY_PROCESSES", 1, "Set by gunicorn_conf.py for the processes it starts."
    )
    # What /ready waits for: a ready worker (models loaded) on each of these queues (core/queues.py names).
    ready_queues: Annotated[tuple[str, ...], NoDecode] = variable(
        "CORTEX_READY_QUEUES",
        ("gpu", "nlp", "training", "batch", "maintenance", "streams", "alerts"),
        "Queues that need a ready worker for /ready to say ready, comma-separated; empty: none.",
        shown="every queue: gpu,nlp,training,batch,maintenance,streams,alerts",
    )
    # Prediction cache (cache_config).
    cache_enabled: bool = variable("CORTEX_CACHE", True, "Cache predictions.")
    cache_l1_max_mb: int = variable(
        "CORTEX_CACHE_L1_MAX_MB", 256, "In-process cache size per process, in MB."
    )
    cache_l1_ttl_seconds: float = variable(
        "CORTEX_CACHE_L1_TTL", 300.0, "In-process cache entries' lifetime in seconds."
    )
    cache_l2_max_mb: int = variable("CORTEX_CACHE_L2_MAX_MB", 1024, "Redis cache size, in MB.")
    cache_l2_ttl_seconds: int = variable(
        "CORTEX_CACHE_L2_TTL", 3600, "Redis cache entries' lifetime in seconds."
    )
    # Overload protection (load_balancing).
    shed_max_queue_depth: int = variable(
        "CORTEX_SHED_MAX_DEPTH", 500, "Queue depth past which new requests are shed (503)."
    )
    shed_max_queue_age_seconds: float = variable(
        "CORTEX_SHED_MAX_AGE", 0.5, "Oldest queued message's age in seconds past which new requests are shed."
    )
    circuit_error_threshold: float = variable(
        "CORTEX_CIRCUIT_ERROR_THRESHOLD", 0.5, "Error ratio that opens a model's circuit."
    )
    circuit_min_requests: int = variable(
        "CORTEX_CIRCUIT_MIN_REQUESTS", 5, "Requests before a circuit may open."
    )
    circuit_reset_timeout_seconds: float = variable(
        "CORTEX_CIRCUIT_RESET_TIMEOUT", 30.0, "Seconds an open circuit waits before a trial request."
    )
    priority_aging_seconds: float = variable(
        "CORTEX_PRIORITY_AGING_SECONDS", 60.0, "Seconds of waiting that raise a job one priority step."
    )
    default_wait_seconds: float = variable(
        "CORTEX_DEFAULT_WAIT", 5.0, "Seconds a request waits for its result unless it says."
    )
    # Delivery: at least once, with a cap on redeliveries.
    max_deliveries: int = variable("CORTEX_MAX_DELIVERIES", 3, "Deliveries of one job before it fails.")
    result_expires_seconds: int = variable("CORTEX_RESULT_EXPIRES", 3600, "Seconds results stay in Redis.")
    visibility_timeout_seconds: int | None = variable(
        "CORTEX_VISIBILITY_TIMEOUT",
        None,
        "Seconds before Redis redelivers an unacknowledged message.",
        shown="longest task time limit + 1 h",
    )
    unacked_restore_interval_seconds: int = variable(
        "CORTEX_UNACKED_RESTORE_INTERVAL",
        10,
        "Seconds between a worker's looks for messages whose worker died.",
    )
    # Dependency outages (reliability): the gateway answers 503 within about 2 s while Redis or PostgreSQL
    # is stalled or down, instead of waiting on a socket for the whole outage.
    redis_socket_timeout_seconds: float = variable(
        "CORTEX_REDIS_SOCKET_TIMEOUT", 1.0, "Seconds the gateway waits for one Redis reply before answering 503."
    )
    redis_connect_timeout_seconds: float = variable(
        "CORTEX_REDIS_CONNECT_TIMEOUT", 0.5, "Seconds the gateway waits to connect to Redis."
    )
    database_timeout_seconds: float = variable(
        "CORTEX_DATABASE_TIMEOUT",
        1.5,
        "Seconds the gateway waits for one PostgreSQL answer (a statement's reply) before answering 503.",
    )
    database_connect_timeout_seconds: int = variable(
        "CORTEX_DATABASE_CONNECT_TIMEOUT", 2, "Seconds a process waits to connect to PostgreSQL (libpq's minimum is 2)."
    )
    dependency_retry_seconds: float = variable(
        "CORTEX_DEPENDENCY_RETRY",
        1.0,
        "Seconds a gateway process answers 503 at once after Redis or PostgreSQL failed, before trying it again.",
    )
    request_read_seconds: float = variable(
        "CORTEX_REQUEST_READ_TIMEOUT",
        10.0,
        "Seconds a client has to send a request's headers (and a body at the minimum rate below) before the "
        "gateway closes its connection: slow clients cannot hold its threads.",
    )
    request_min_bytes_per_second: int = variable(
        "CORTEX_REQUEST_MIN_RATE",
        1024,
        "Bytes a second a request's body must arrive at, on average, once CORTEX_REQUEST_READ_TIMEOUT is spent.",
    )
    consumer_lease_seconds: int = variable(
        "CORTEX_CONSUMER_LEASE",
        15,
        "Seconds after which the unacknowledged messages of a worker that stopped renewing its lease (it was "
        "killed, or lost Redis) are given back to their queues by the other workers.",
    )
    # Rate limiting (rate_limits). A key's tier names one of these.
    rate_limit_tiers: Annotated[dict[str, RateTier | None], NoDecode] = variable(
        "CORTEX_RATE_LIMITS",
        lambda: dict(DEFAULT_RATE_TIERS),
        "Rate limit tiers, JSON (see above).",
        shown="default, premium, unlimited",
    )
    admin_key_tier: str = variable("CORTEX_ADMIN_KEY_TIER", UNLIMITED_TIER, "The tier of CORTEX_ADMIN_KEY.")
    max_concurrent_requests: int = variable(
        "CORTEX_MAX_CONCURRENT_REQUESTS", 100, "In-flight prediction requests per gateway process."
    )
    queue_timeout_seconds: float = variable(
        "CORTEX_QUEUE_TIMEOUT", 1.0, "How long a prediction request waits for an in-flight slot before a 503 "
        "with Retry-After (a waiting request holds one of the process's threads).", shown="1s"
    )
    # Audit log (audit_system, storage_security.audit).
    audit_enabled: bool = variable("CORTEX_AUDIT", True, "Write the audit log.")
    audit_retention_days: float = variable(
        "CORTEX_AUDIT_RETENTION", 90.0, "How long audit records are kept.", shown="90d"
    )
    audit_flush_seconds: float = variable(
        "CORTEX_AUDIT_FLUSH_SECONDS", 1.0, "Seconds between writes of buffered audit records."
    )
    audit_alerts: Annotated[tuple[AlertRule, ...], NoDecode] = variable(
        "CORTEX_AUDIT_ALERTS",
        DEFAULT_AUDIT_ALERTS,
        "Alert rules, JSON (see above).",
        shown='[{"type": "security_breach", "threshold": 3, "window": "5m"}, ...]',
    )
    audit_log_level: str = variable("CORTEX_AUDIT_LOG_LEVEL", "INFO", "Log level of audit records.")
    # Processes.
    web_workers: int = variable("CORTEX_WEB_WORKERS", 2, "Gateway processes (gunicorn_conf.py).")
    web_threads: int = variable(
        "CORTEX_WEB_THREADS", 64, "Threads per gateway process: one per waiting client."
    )
    torch_threads: int | None = variable(
        "CORTEX_TORCH_THREADS", None, "Cores a gpu worker gives its models.", shown="every core"
    )
    language_candidates: str = variable(
        "CORTEX_LANGUAGE_CANDIDATES",
        "",
        "ISO 639-1 codes language detection considers, comma-separated, or `all`.",
        shown="22 common languages",
    )
    vector_build_memory: str = variable(
        "CORTEX_VECTOR_BUILD_MEMORY", "512MB", "PostgreSQL maintenance_work_mem for vector index builds."
    )
    flower_password: str | None = variable(
        # FLOWER_PASSWORD: the name the Procfile and compose/ used before; still read, with a warning.
        AliasChoices("CORTEX_FLOWER_PASSWORD", "FLOWER_PASSWORD"),
        None,
        "Flower's password (user `admin`) in `cortex up`, the Procfile and compose/.",
        shown="generated into the data folder",
        repr=False,
    )
    flower_broker_api: str | None = variable(
        "CORTEX_FLOWER_BROKER_API",
        None,
        "RabbitMQ's management API, where Flower reads queue lengths (a RabbitMQ broker only), "
        "e.g. `http://monitor:pass@rabbit:15672/api/`.",
        shown="CORTEX_BROKER_URL's host, port 15672; 15671 for amqps",
        repr=False,
    )
    # Worker metrics (docs/metrics.md): each worker's Prometheus endpoint.
    worker_metrics_port: int | None = variable(
        "CORTEX_WORKER_METRICS_PORT",
        None,
        "Port of a worker's Prometheus endpoint; 0 turns it off.",
        shown="the worker kind's: gpu 9101, nlp 9102, training 9103, stream 9104",
        ge=0,
        le=65535,
    )
    worker_metrics_address: str = variable(
        "CORTEX_WORKER_METRICS_ADDRESS",
        # Every interface: Prometheus scrapes workers from another host or container. `cortex up` binds
        # its workers' endpoints to the loopback.
        "0.0.0.0",  # nosec B104
        "Address a worker's Prometheus endpoint listens on.",
    )
    # Logs (core/observability/logs.py; traces read the standard OTEL_* variables, docs/logs-and-traces.md).
    log_format: Literal["auto", "json", "text"] = variable(
        "CORTEX_LOG_FORMAT", "auto", "Log lines as `json`, `text`, or `auto`: text on a terminal, JSON elsewhere."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = variable(
        "CORTEX_LOG_LEVEL", "INFO", "Level of every Cortex process's log (a more verbose --loglevel wins)."
    )

    # The usage ledger (core/usage/): what a second of a worker's model time costs, per worker kind.
    worker_second_prices: Annotated[dict[str, float], NoDecode] = variable(
        "CORTEX_WORKER_SECOND_PRICES",
        dict,
        'US dollars per second of model time by worker kind, JSON, e.g. `{"gpu": 0.0008, "nlp": 0.0001}`; '
        "a kind left out costs 0.",
        shown="none: worker time counted, not priced",
    )

    @field_validator("worker_second_prices", mode="before")
    @classmethod
    def _worker_second_prices(cls, raw: Any) -> Any:
        if not isinstance(raw, str):
            return raw
        given = _json_object("CORTEX_WORKER_SECOND_PRICES", raw, "worker kinds and prices")
        prices: dict[str, float] = {}
        for kind, price in given.items():
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price < float("inf"):
                raise ValueError(f"CORTEX_WORKER_SECOND_PRICES[{kind!r}] must be a number of US dollars, 0 or more")
            prices[str(kind)] = float(price)
        return prices

    # Images as inputs (image_embed, image_classify; core/images/intake.py).
    image_max_bytes: int = variable(
        "CORTEX_IMAGE_MAX_BYTES", 8 * 1024 * 1024, "Largest image file accepted as an input, in bytes (encoded)."
    )
    image_max_pixels: int = variable(
        "CORTEX_IMAGE_MAX_PIXELS",
        25_000_000,
        "Most pixels (width x height) of an input image; larger ones are refused before they are decoded "
        "(decompression bombs).",
    )
    image_max_request_bytes: int = variable(
        "CORTEX_IMAGE_MAX_REQUEST_BYTES",
        64 * 1024 * 1024,
        "Body limit of the routes that take images or audio (/predict, /predict/batch, /batch/submit, /vectors).",
    )
    audio_max_bytes: int = variable(
        "CORTEX_AUDIO_MAX_BYTES", 25 * 1024 * 1024, "Largest recording accepted by transcribe, in bytes (OpenAI's limit)."
    )
    # Media retention (the hourly expire-media job; core/media_files.py).
    staged_media_retention_days: float = variable(
        "CORTEX_STAGED_MEDIA_RETENTION",
        7.0,
        "How long an image or recording sent in a request is kept after it was last sent (its jobs read it "
        "from the object store).",
        shown="7d",
    )
    generated_media_retention_days: float = variable(
        "CORTEX_GENERATED_MEDIA_RETENTION",
        30.0,
        "How long an image made by image_generate stays at its URL.",
        shown="30d",
    )

    # --- agents (POST /api/v1/agents; core/agents, runtime/agents) ---
    agent_models: Annotated[tuple[str, ...], NoDecode] = variable(
        "CORTEX_AGENT_MODELS",
        ("gpt-4o-mini",),
        "Chat models with tool calling that agents may use (comma-separated), served at CORTEX_OPENAI_BASE_URL.",
        shown="gpt-4o-mini",
    )
    agent_max_steps: int = variable(
        "CORTEX_AGENT_MAX_STEPS", 8, "Model calls an agent run makes at most, unless its declaration says fewer."
    )
    agent_token_budget: int = variable(
        "CORTEX_AGENT_TOKEN_BUDGET",
        20_000,
        "Tokens (prompt and completion, every step) an agent run spends at most, unless its declaration says fewer.",
    )

    @field_validator("agent_models", mode="before")
    @classmethod
    def _agent_model_list(cls, raw: Any) -> Any:
        return tuple(part.strip() for part in raw.split(",") if part.strip()) if isinstance(raw, str) else raw
    # Scaling out (docs/scaling.md): the broker apart from Redis, and one Beat among several.
    broker_url: str | None = variable(
        "CORTEX_BROKER_URL",
        None,
        "The Celery broker: `redis://...` or `amqp://...` (RabbitMQ); Redis keeps cache, limits and readiness.",
        shown="REDIS_URL",
    )
    beat_lock_ttl_seconds: float = variable(
        "CORTEX_BEAT_LOCK_TTL",
        30.0,
        "Beat's leader lock: a standby Beat takes over this long after the leader died.",
        shown="30s",
    )

    @field_validator("beat_lock_ttl_seconds", mode="before")
    @classmethod
    def _beat_lock_ttl(cls, raw: Any) -> Any:
        return parse_duration(raw) if isinstance(raw, str) else raw

    @property
    def celery_broker_url(self) -> str:
        """Where Celery's messages go: CORTEX_BROKER_URL, else the one Redis of REDIS_URL."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        return self.celery_broker_url.startswith(("redis://", "rediss://", "unix://", "sentinel://"))

    # Fixed limits (input_validation, inference_config), not read from the environment.
    cache_max_item_bytes: ClassVar[int] = 1024 * 1024
    max_text_length: ClassVar[int] = 10_000
    max_body_bytes: ClassVar[int] = 2 * 1024 * 1024
    max_json_depth: ClassVar[int] = 20
    max_wait_seconds: ClassVar[float] = 30.0
    job_retention_days: ClassVar[int] = 30

    @model_validator(mode="before")
    @classmethod
    def _stack_urls(cls, given: Any) -> Any:
        """Unset service URLs come from the running `cortex up` stack (stack.json), then local defaults."""
        if not isinstance(given, dict):
            return given
        folder = Path(given.get("CORTEX_DATA_DIR") or "./var").resolve()
        stack = read_stack_file(folder)
        filled = dict(given)
        for name, key in (
            ("REDIS_URL", "redis_url"),
            ("DATABASE_URL", "database_url"),
            ("CORTEX_ARTIFACT_DIR", "artifact_dir"),
        ):
            if not filled.get(name) and stack.get(key):
                filled[name] = stack[key]
        filled.setdefault("CORTEX_ARTIFACT_DIR", str(folder / "artifacts"))
        if not filled.get("CORTEX_DATA_KEYS"):
            try:
                filled["CORTEX_DATA_KEYS"] = (folder / DATA_KEYS_FILE_NAME).read_text()
            except OSError:
                pass
        return filled

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, folder: Path) -> Path:
        return folder.resolve()

    @field_validator("artifact_key", mode="before")
    @classmethod
    def _decode_artifact_key(cls, raw: Any) -> Any:
        return _artifact_key(raw) if isinstance(raw, str) else raw

    @field_validator("ready_queues", mode="before")
    @classmethod
    def _queue_list(cls, raw: Any) -> Any:
        return tuple(part.strip() for part in raw.split(",") if part.strip()) if isinstance(raw, str) else raw

    @field_validator("data_keys", mode="before")
    @classmethod
    def _decode_data_keys(cls, raw: Any) -> Any:
        return data_keys_from(raw) if isinstance(raw, str) else raw

    @field_validator("coalesce_max_inflight", "gateway_processes")
    @classmethod
    def _at_least_one(cls, count: int) -> int:
        return max(1, count)

    @field_validator("batching_per_model", mode="before")
    @classmethod
    def _batching_per_model(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, str):
            return raw
        default = Batching(
            info.data.get("max_batch_size", 32), info.data.get("batch_max_wait_ms", 2.0) / 1000
        )
        return batching_from(raw, default)

    @field_validator("rate_limit_tiers", mode="before")
    @classmethod
    def _rate_limit_tiers(cls, raw: Any) -> Any:
        return rate_tiers_from(raw) if isinstance(raw, str) else raw

    @field_validator("queue_timeout_seconds", mode="before")
    @classmethod
    def _queue_timeout(cls, raw: Any) -> Any:
        return parse_duration(raw) if isinstance(raw, str) else raw

    @field_validator("audit_retention_days", "staged_media_retention_days", "generated_media_retention_days",
                     mode="before")
    @classmethod
    def _retention_days(cls, raw: Any) -> Any:
        return parse_duration(raw) / 86400 if isinstance(raw, str) else raw

    @field_validator("audit_alerts", mode="before")
    @classmethod
    def _audit_alerts(cls, raw: Any) -> Any:
        return audit_alerts_from(raw) if isinstance(raw, str) else raw

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _log_choice(cls, raw: Any, info: ValidationInfo) -> Any:
        # `JSON`, `debug`: the case an operator types is not the point.
        if not isinstance(raw, str):
            return raw
        return raw.strip().lower() if info.field_name == "log_format" else raw.strip().upper()

    @field_validator("audit_log_level")
    @classmethod
    def _upper(cls, level: str) -> str:
        return level.upper()

    # The per-area groups, read on first use (as the per-area config modules did before).
    @cached_property
    def batch(self) -> BatchConfig:
        return BatchConfig()

    @cached_property
    def chat(self) -> ChatConfig:
        return ChatConfig()

    @cached_property
    def openai(self) -> OpenAIConfig:
        return OpenAIConfig()

    @cached_property
    def training(self) -> TrainingConfig:
        return TrainingConfig()

    @cached_property
    def tokens(self) -> TokensConfig:
        return TokensConfig()

    @cached_property
    def streams(self) -> StreamsConfig:
        return StreamsConfig()

    @cached_property
    def alerts(self) -> AlertsConfig:
        return AlertsConfig()

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_endpoint)

    @property
    def batch_max_wait_seconds(self) -> float:
        return self.batch_max_wait_ms / 1000

    @property
    def cache_l1_max_bytes(self) -> int:
        return self.cache_l1_max_mb * 1024 * 1024

    @property
    def cache_l2_max_bytes(self) -> int:
        return self.cache_l2_max_mb * 1024 * 1024

    @property
    def user_models_dir(self) -> Path:
        return self.models_dir.resolve() if self.models_dir else self.data_dir / "models"

    def batching_for(self, model: str) -> Batching:
        """A model's batching: its own, else its registered name's (`name@3` -> `name`), else the global."""
        own = self.batching_per_model.get(model) or self.batching_per_model.get(model.split("@", 1)[0])
        return own or Batching(self.max_batch_size, self.batch_max_wait_seconds)

    @property
    def coalesce_max_inflight_per_process(self) -> int:
        """Each gateway process's share of the in-flight messages, so that the worker sees the same
        number whatever the number of processes (more, and each message carries fewer items)."""
        return -(-self.coalesce_max_inflight // self.gateway_processes)


SETTINGS_GROUPS: tuple[type[FromEnvironment], ...] = (
    Settings,
    BatchConfig,
    ChatConfig,
    OpenAIConfig,
    TrainingConfig,
    TokensConfig,
    StreamsConfig,
    AlertsConfig,
)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()


def data_dir() -> Path:
    return get_settings().data_dir


def stack_not_found() -> str | None:
    """One line for a command that needs a running stack and has none to talk to, else None.

    A stack is found when REDIS_URL and DATABASE_URL are both set, or when the data folder holds the
    stack.json of a `cortex up` that is still running. Without this, such a command fell back to the local
    defaults: a 142-line traceback ending `role "cortex" does not exist` from the system PostgreSQL, or the
    system Redis on 6379 and a timeout ("No nodes replied").
    """
    if os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL"):
        return None
    folder = data_dir()
    stack = read_stack_file(folder)
    if stack.get("pid") and _process_alive(int(stack["pid"])):
        return None
    try:
        shown = f"./{folder.relative_to(Path.cwd())}"
    except ValueError:
        shown = str(folder)
    return (f"no running Cortex found in {shown}; start one with `cortex up` or set CORTEX_DATA_DIR "
            f"(the folder of a running stack) or REDIS_URL and DATABASE_URL")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def variable_names(group: type[FromEnvironment]) -> dict[str, list[str]]:
    """Field name -> the environment variable names it is read from (the first is the main one)."""
    names = {}
    for field_name, info in group.model_fields.items():
        alias = info.validation_alias
        names[field_name] = list(alias.choices) if isinstance(alias, AliasChoices) else [str(alias)]
    return names


def _shown_default(info: Any) -> str:
    extra = info.json_schema_extra or {}
    if "shown_default" in extra:
        return str(extra["shown_default"])
    default = info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return "on" if default else "off"
    return "unset" if default is None else str(default)


def settings_markdown() -> str:
    """The settings list README.md shows, one line per variable: name, default, description."""
    lines = []
    for group in SETTINGS_GROUPS:
        lines.append(f"- {(group.__doc__ or '').strip().splitlines()[0]}")
        for field_name, names in variable_names(group).items():
            info = group.model_fields[field_name]
            spelled = " or ".join(f"`{name}`" for name in names)
            lines.append(f"  - {spelled} ({_shown_default(info)}): {info.description}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m cortex_tasks.core.settings --markdown")
    sys.stdout.write(settings_markdown())
