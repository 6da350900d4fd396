"""OpenAI models behind Cortex's one model interface (models/base.py), so they run through the normal
/predict path on the gpu queue: `generate` with a chat model, `embed` with an embeddings model.

A failed API call raises a plain exception, which the runner reports as a model error and answers with
the task's fallback model (generate: the local SmolLM2), saying so in the response.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.openai.billing import billing_owner, billing_tenant
from cortex_tasks.core.openai.config import EMBEDDING_DIMENSIONS, openai_config
from cortex_tasks.core.validation.generation import generation_params
from cortex_tasks.runtime.models.base import ModelInfo
from cortex_tasks.runtime.openai.client import ChatOptions, openai_service

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
