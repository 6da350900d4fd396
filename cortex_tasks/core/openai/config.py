"""`openai_config` from the environment (architecture document: External Model Integration, OpenAI).

Without CORTEX_OPENAI_API_KEY the OpenAI models stay in the catalogue but every request for them is
refused with 503 `openai_not_configured`, so clients see the same model list everywhere and a clear
reason instead of a silent answer from another model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

from cortex_tasks.core.settings import env_float, env_int

CHAT_MODELS = ("gpt-4o-mini",)
EMBEDDING_MODELS = ("text-embedding-3-small",)
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536}
# US dollars per 1,000 tokens (OpenAI's list prices when this was written); CORTEX_OPENAI_PRICES overrides,
# e.g. '{"gpt-4o-mini": {"input": 0.00015, "output": 0.0006}}'.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input": 0.00015, "output": 0.0006},
    "text-embedding-3-small": {"input": 0.00002, "output": 0.0},
}


@dataclass(frozen=True)
class OpenAIConfig:
    api_key: str | None = field(default=None, repr=False)
    base_url: str = "https://api.openai.com/v1"
    prices: dict[str, dict[str, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    # Shared by every worker (Redis): OpenAI's own limits are per organisation, not per process.
    requests_per_minute: int = 500
    tokens_per_minute: int = 200_000
    # A call that would break a limit waits for the next window if it opens within this, else fails.
    max_rate_wait_seconds: float = 5.0
    # Retries of 429/5xx/connection errors, with exponential backoff or the server's Retry-After.
    max_retries: int = 3
    backoff_seconds: float = 0.5
    max_retry_after_seconds: float = 20.0
    timeout_seconds: float = 30.0
    # Month-to-date spend (UTC calendar month) above which new OpenAI calls are refused; None: no budget.
    monthly_budget_usd: float | None = None
    parallel_requests: int = 8

    @property
    def configured(self) -> bool:
        return bool(self.api_key)

    def price(self, model: str) -> dict[str, float]:
        return self.prices.get(model, {"input": 0.0, "output": 0.0})


def _prices(raw: str | None) -> dict[str, dict[str, float]]:
    prices = {model: dict(price) for model, price in DEFAULT_PRICES.items()}
    if raw in (None, ""):
        return prices
    try:
        given = json.loads(raw)
        for model, price in given.items():
            prices[str(model)] = {"input": float(price.get("input", 0.0)), "output": float(price.get("output", 0.0))}
    except (ValueError, AttributeError, TypeError):
        raise ValueError('CORTEX_OPENAI_PRICES must be JSON like {"gpt-4o-mini": {"input": 0.00015, '
                         '"output": 0.0006}} (US dollars per 1,000 tokens)') from None
    return prices


@lru_cache(maxsize=1)
def openai_config() -> OpenAIConfig:
    budget = os.environ.get("CORTEX_OPENAI_MONTHLY_BUDGET")
    return OpenAIConfig(
        api_key=os.environ.get("CORTEX_OPENAI_API_KEY") or None,
        base_url=(os.environ.get("CORTEX_OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/"),
        prices=_prices(os.environ.get("CORTEX_OPENAI_PRICES")),
        requests_per_minute=env_int("CORTEX_OPENAI_RPM", 500),
        tokens_per_minute=env_int("CORTEX_OPENAI_TPM", 200_000),
        max_rate_wait_seconds=env_float("CORTEX_OPENAI_MAX_RATE_WAIT", 5.0),
        max_retries=env_int("CORTEX_OPENAI_MAX_RETRIES", 3),
        backoff_seconds=env_float("CORTEX_OPENAI_BACKOFF", 0.5),
        timeout_seconds=env_float("CORTEX_OPENAI_TIMEOUT", 30.0),
        monthly_budget_usd=float(budget) if budget not in (None, "") else None,
    )


def reset_openai_config() -> None:
    openai_config.cache_clear()


def is_openai_model(name: str | None) -> bool:
    return name in CHAT_MODELS or name in EMBEDDING_MODELS


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, config: OpenAIConfig | None = None) -> float:
    price = (config or openai_config()).price(model)
    return round(prompt_tokens / 1000 * price["input"] + completion_tokens / 1000 * price["output"], 8)
