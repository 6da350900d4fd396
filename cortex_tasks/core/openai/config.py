"""`openai_config`: the OpenAI group of the settings object.

Without CORTEX_OPENAI_API_KEY the OpenAI models stay in the catalogue but every request for them is
refused with 503 `openai_not_configured`, so clients see the same model list everywhere and a clear
reason instead of a silent answer from another model.
"""
from __future__ import annotations

from cortex_tasks.core.settings import OpenAIConfig, get_settings

__all__ = [
    "CHAT_MODELS",
    "EMBEDDING_DIMENSIONS",
    "EMBEDDING_MODELS",
    "IMAGE_MODELS",
    "TRANSCRIPTION_MODELS",
    "OpenAIConfig",
    "cost_usd",
    "image_cost_usd",
    "is_openai_model",
    "openai_config",
    "transcription_cost_usd",
]

CHAT_MODELS = ("gpt-4o-mini",)
EMBEDDING_MODELS = ("text-embedding-3-small",)
EMBEDDING_DIMENSIONS = {"text-embedding-3-small": 1536}
TRANSCRIPTION_MODELS = ("whisper-1",)
IMAGE_MODELS = ("gpt-image-1", "dall-e-3")


def openai_config() -> OpenAIConfig:
    return get_settings().openai


def is_openai_model(name: str | None) -> bool:
    return (name in CHAT_MODELS or name in EMBEDDING_MODELS or name in TRANSCRIPTION_MODELS or name in IMAGE_MODELS
            or (name is not None and name in openai_config().extra_models))


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, config: OpenAIConfig | None = None) -> float:
    price = (config or openai_config()).price(model)
    return round(prompt_tokens / 1000 * price["input"] + completion_tokens / 1000 * price["output"], 8)


def transcription_cost_usd(model: str, seconds: float, config: OpenAIConfig | None = None) -> float:
    """Audio is billed per minute of its duration."""
    per_minute = (config or openai_config()).media_prices.get(model, {}).get("per_minute", 0.0)
    return round(max(0.0, seconds) / 60 * per_minute, 8)


def image_cost_usd(model: str, quality: str, size: str, count: int, config: OpenAIConfig | None = None) -> float:
    """Images are billed per image, by quality and size (the combinations a model offers are all priced)."""
    per_image = (config or openai_config()).media_prices.get(model, {}).get(f"{quality} {size}", 0.0)
    return round(per_image * count, 8)
