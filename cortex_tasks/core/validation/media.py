"""Parameters of speech and image generation (transcribe, image_generate), checked the same way by the
gateway, which refuses a bad one before anything is queued, and by the OpenAI backends."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError

MAX_PROMPT_CHARS = 4000  # dall-e-3's limit; an image prompt is an input (a text), checked as one too
MAX_TRANSCRIPTION_PROMPT_CHARS = 1000
LANGUAGE = re.compile(r"^[a-z]{2}$")

# What each image model offers: sizes, qualities (the first is the default) and images per request.
IMAGE_OPTIONS: dict[str, dict[str, Any]] = {
    "gpt-image-1": {"sizes": ("1024x1024", "1024x1536", "1536x1024"), "qualities": ("medium", "low", "high"),
                    "max_n": 4, "styles": ()},
    "dall-e-3": {"sizes": ("1024x1024", "1024x1792", "1792x1024"), "qualities": ("standard", "hd"),
                 "max_n": 1, "styles": ("vivid", "natural")},
}

# Another OpenAI-compatible server's image model (CORTEX_OPENAI_EXTRA_MODELS): the API's common ground.
OTHER_SERVER_OPTIONS: dict[str, Any] = {"sizes": ("1024x1024", "512x512", "256x256"), "qualities": ("standard",),
                                        "max_n": 4, "styles": ()}


@dataclass(frozen=True)
class TranscriptionParams:
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0


@dataclass(frozen=True)
class ImageParams:
    size: str
    quality: str
    n: int = 1
    style: str | None = None


def transcription_params(params: dict[str, Any]) -> TranscriptionParams:
    """params.language (ISO 639-1, lower case), params.prompt (style or vocabulary hints), params.temperature."""
    language = params.get("language")
    if language is not None and (not isinstance(language, str) or not LANGUAGE.match(language)):
        raise JobInputError("invalid_params", "params.language must be an ISO 639-1 code such as \"en\"")
    prompt = params.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_TRANSCRIPTION_PROMPT_CHARS):
        raise JobInputError("invalid_params",
                            f"params.prompt must be a string of at most {MAX_TRANSCRIPTION_PROMPT_CHARS} characters")
    temperature = params.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or not 0.0 <= temperature <= 1.0:
        raise JobInputError("invalid_params", "params.temperature must be a number from 0 to 1")
    return TranscriptionParams(language=language, prompt=prompt or None, temperature=float(temperature))


def image_params(model: str, params: dict[str, Any]) -> ImageParams:
    """params.size, params.quality, params.n and (dall-e-3) params.style, as `model` offers them."""
    options = IMAGE_OPTIONS.get(model, OTHER_SERVER_OPTIONS)
    size = params.get("size", options["sizes"][0])
    if size not in options["sizes"]:
        raise JobInputError("invalid_params", f"params.size must be one of {', '.join(options['sizes'])} for {model}")
    quality = params.get("quality", options["qualities"][0])
    if quality not in options["qualities"]:
        raise JobInputError("invalid_params",
                            f"params.quality must be one of {', '.join(options['qualities'])} for {model}")
    n = params.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= options["max_n"]:
        raise JobInputError("invalid_params", f"params.n must be an integer from 1 to {options['max_n']} for {model}")
    style = params.get("style")
    if style is not None and style not in options["styles"]:
        raise JobInputError("invalid_params", f"params.style is not offered by {model}" if not options["styles"]
                            else f"params.style must be one of {', '.join(options['styles'])}")
    return ImageParams(size=size, quality=quality, n=n, style=style)


def check_prompt(text: Any, where: str, details: dict[str, Any] | None = None) -> str:
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_PROMPT_CHARS:
        raise JobInputError("invalid_input", f"{where} must be a prompt of 1 to {MAX_PROMPT_CHARS} characters", details)
    return text
