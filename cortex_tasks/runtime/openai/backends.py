"""OpenAI models behind Cortex's one model interface (models/base.py), so they run through the normal
/predict path on the gpu queue: `generate` with a chat model, `embed` with an embeddings model, `transcribe`
with Whisper and `image_generate` with gpt-image-1 or DALL-E 3.

A failed API call raises a plain exception, which the runner reports as a model error and answers with
the task's fallback model (generate: the local SmolLM2), saying so in the response.
"""
from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from cortex_tasks.core.audio.intake import load_staged as load_audio
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.media_files import generated_image_name, generated_image_url
from cortex_tasks.core.openai.billing import billing_owner, billing_tenant
from cortex_tasks.core.openai.config import EMBEDDING_DIMENSIONS, openai_config
from cortex_tasks.core.storage.object_store import get_object_store
from cortex_tasks.core.tenancy import DEFAULT_TENANT
from cortex_tasks.core.validation.generation import generation_params
from cortex_tasks.core.validation.media import (
    MAX_PROMPT_CHARS,
    check_prompt,
    image_params,
    transcription_params,
)
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.openai.client import ChatOptions, OpenAIUnavailable, openai_service

DEVICE = "openai-api"


def chat_messages(text: str, system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


class OpenAIChatGenerator:
    """`generate` through chat completions; params as for SmolLM2 (max_tokens, temperature, top_p, stop,
    system). Outputs add `usage` (tokens, cost in US dollars) and `cached`."""

    def __init__(self, name: str, version: str) -> None:
        self.service = openai_service()  # raises openai_not_configured when there is no key
        self.info = ModelInfo(name=name, version=version, task="generate", device=DEVICE,
                              max_input_chars=10_000, max_batch_size=32)
        self.card = {"provider": "OpenAI", "base_url": openai_config().base_url,
                     "price_per_1k_tokens": openai_config().price(name)}
        self._pool = ThreadPoolExecutor(openai_config().parallel_requests, thread_name_prefix=f"openai-{name}")

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        options = generation_params(params)
        if not options.chat:
            raise JobInputError("invalid_params", "params.chat=false (raw completion) is not offered for OpenAI "
                                                  "chat models")
        for index, item in enumerate(inputs):
            if not isinstance(item, str):
                raise JobInputError("invalid_input", f"inputs[{index}] must be a string", {"index": index})
        chat = ChatOptions(max_tokens=options.max_tokens, temperature=options.temperature, top_p=options.top_p,
                           stop=options.stop)
        owner, tenant = billing_owner(params), billing_tenant(params)
        # Concurrent requests: each is a network round trip, the API does the work.
        futures = [self._pool.submit(self.service.chat, self.info.name, options.messages(text), chat,
                                     owner, tenant=tenant) for text in inputs]
        return [future.result() for future in futures]

    def stream(self, input: str, params: dict[str, Any]):  # type: ignore[no-untyped-def]
        """/predict/stream: the answer arrives as one piece (no token streaming from the API yet)."""
        yield self.predict([input], params)[0]["text"]


class OpenAIEmbedder:
    """`embed` through the embeddings API: one request per batch, vectors in input order."""

    def __init__(self, name: str, version: str) -> None:
        self.service = openai_service()
        self.dimension = EMBEDDING_DIMENSIONS.get(name)
        self.info = ModelInfo(name=name, version=version, task="embed", device=DEVICE,
                              max_input_chars=10_000, max_batch_size=256)
        self.card = {"provider": "OpenAI", "dimension": self.dimension,
                     "price_per_1k_tokens": openai_config().price(name)}

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[list[float]]:
        for index, item in enumerate(inputs):
            if not isinstance(item, str):
                raise JobInputError("invalid_input", f"inputs[{index}] must be a string", {"index": index})
        return self.service.embed(self.info.name, list(inputs), billing_owner(params), billing_tenant(params))


class OpenAITranscriber:
    """`transcribe` through the audio transcriptions API (verbose_json): one request per recording, run
    concurrently. Outputs: text, language, duration, segments, usage (audio seconds, cost) and cached."""

    def __init__(self, name: str, version: str) -> None:
        self.service = openai_service()
        self.info = ModelInfo(name=name, version=version, task="transcribe", device=DEVICE,
                              max_input_chars=0, max_batch_size=8)
        self.card = {"provider": "OpenAI", "base_url": openai_config().base_url,
                     "price": openai_config().media_prices.get(name, {})}
        self._pool = ThreadPoolExecutor(openai_config().parallel_requests, thread_name_prefix=f"openai-{name}")

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        options = transcription_params(params)
        recordings = [load_audio(item) for item in inputs]  # ItemError for one that is not a staged recording
        owner, tenant = billing_owner(params), billing_tenant(params)
        futures = [self._pool.submit(self.service.transcribe, self.info.name, data, filename, options, owner, tenant)
                   for data, filename in recordings]
        return [future.result() for future in futures]


class OpenAIImageGenerator:
    """`image_generate` through the images API: each prompt's images are stored in the object store under the
    caller's tenant (`tenants/<tenant>/generated/<sha256>`) and answered by URL: GET /api/v1/generated/<sha256>,
    which only that tenant's keys can read."""

    def __init__(self, name: str, version: str) -> None:
        self.service = openai_service()
        self.info = ModelInfo(name=name, version=version, task="image_generate", device=DEVICE,
                              max_input_chars=MAX_PROMPT_CHARS, max_batch_size=8)
        self.card = {"provider": "OpenAI", "base_url": openai_config().base_url,
                     "price_per_image": openai_config().media_prices.get(name, {})}
        self._pool = ThreadPoolExecutor(openai_config().parallel_requests, thread_name_prefix=f"openai-{name}")

    def predict(self, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, Any]]:
        options = image_params(self.info.name, params)
        for index, item in enumerate(inputs):
            check_prompt(item, f"inputs[{index}]", {"index": index})
        owner, tenant = billing_owner(params), billing_tenant(params)
        keep = partial(store_generated_image, tenant or DEFAULT_TENANT)
        futures = [self._pool.submit(self.service.generate_images, self.info.name, prompt, options, owner, tenant, keep)
                   for prompt in inputs]
        return [future.result() for future in futures]


def store_generated_image(tenant: str, data: bytes) -> dict[str, Any]:
    """Keep one generated image under its hash in the tenant's space; where to fetch it."""
    from PIL import Image

    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            content_type = Image.MIME.get(image.format or "", "application/octet-stream")
            width, height = image.size
    except Exception as exc:  # noqa: BLE001 (whatever Pillow raises, the API sent no image)
        raise OpenAIUnavailable(f"the images API sent data that is not an image ({type(exc).__name__})") from None
    store = get_object_store()
    name = generated_image_name(tenant, sha256)
    if not store.exists(name):
        store.put(name, data, content_type)
    return {"id": sha256, "url": generated_image_url(sha256), "content_type": content_type, "bytes": len(data),
            "width": width, "height": height}
