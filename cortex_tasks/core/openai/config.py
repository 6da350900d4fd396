"""`openai_config`: the OpenAI group of the settings object.

Without CORTEX_OPENAI_API_KEY the OpenAI models stay in the catalogue but every request for them is
refused with 503 `openai_not_configured`, so clients see the same model list everywhere and a clear
reason instead of a silent answer from another model.
"""
from __future__ import annotations

from cortex_tasks.core.settings import OpenAIConfig, get_settings

__all__ = ["CHAT_MODELS", "EMBEDDING_DIMENSIONS", "EMBEDDING_MODELS", "OpenAIConfig", "cost_usd", "is_openai_model",
           "openai_config"]

CHAT_MODELS = ("gpt-4o-mini",)
EMBEDDING_MODELS = ("text-embedding-3-small",)
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536}


def openai_config() -> OpenAIConfig:
    return get_settings().openai


def is_openai_model(name: str | None) -> bool:
    return name in CHAT_MODELS or name in EMBEDDING_MODELS


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, config: OpenAIConfig | None = None) -> float:
    price = (config or openai_config()).price(model)
    return round(prompt_tokens / 1000 * price["input"] + completion_tokens / 1000 * price["output"], 8)
