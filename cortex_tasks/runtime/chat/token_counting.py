"""Counting a conversation's tokens with the answering model's own tokenizer, so that the memory window is
trimmed to what the model will really be sent:

- the local SmolLM2: its Hugging Face tokenizer over its chat template, exactly the call that builds the
  model's input (chat_models.LocalChatModel), so the count is the prompt's length in tokens;
- OpenAI chat models: tiktoken's encoding for the model with the chat format's per-message overhead
  (OpenAI's published counting recipe: 3 tokens per message, 3 to prime the reply). tiktoken reads its
  encoding files from TIKTOKEN_CACHE_DIR, or downloads them on first use. Unless the deployment names a
  cache folder, it is pointed at the files of cl100k_base and o200k_base (every current OpenAI chat model's)
  that the litellm package ships for offline use, so the count is exact without a network. A worker that
  can neither find nor download an encoding counts about four characters per token and says so
  (`exact: false` in the chat result's memory).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from langchain_core.messages import BaseMessage

from cortex_tasks.core.errors import ItemError
from cortex_tasks.core.process_threads import helper_threads
from cortex_tasks.runtime.chat.chat_models import as_role_messages

log = logging.getLogger(__name__)

# OpenAI's chat format: every message is wrapped in a few tokens, and the reply is primed with three.
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3
ENCODING_LOAD_SECONDS = 10.0


@dataclass(frozen=True)
class TokenCounter:
    tokenizer: str  # what counted: shown in the chat result
    exact: bool
    count: Callable[[list[BaseMessage]], int]


def local_counter(tokenizer: Any, name: str) -> TokenCounter:
    def count(messages: list[BaseMessage]) -> int:
        encoded = tokenizer.apply_chat_template(as_role_messages(messages), add_generation_prompt=True,
                                                return_dict=True)
        return len(encoded["input_ids"])

    return TokenCounter(f"{name} (Hugging Face tokenizer, chat template)", True, count)


def bundled_encodings_folder() -> str | None:
    """litellm's folder of tiktoken encoding files, named as tiktoken's cache names them (the SHA-1 of their
    download URL), or None without litellm. Found without importing litellm (a large import, which would
    also set TIKTOKEN_CACHE_DIR itself)."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(spec.submodule_search_locations[0], "litellm_core_utils", "tokenizers")
    return folder if os.path.isdir(folder) else None


def use_bundled_encodings() -> None:
    """Point tiktoken at the bundled encoding files, unless the deployment chose its own cache folder.
    tiktoken still checks each file's SHA-256 against the one it pins, and downloads an encoding the folder
    does not have (an older model's) as before."""
    if "TIKTOKEN_CACHE_DIR" in os.environ or "DATA_GYM_CACHE_DIR" in os.environ:
        return
    folder = bundled_encodings_folder()
    if folder is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = folder


def _load_encoding(model: str) -> Any:
    import tiktoken

    use_bundled_encodings()

    try:
        return tiktoken.encoding_for_model(model)
    except KeyError:  # a model tiktoken does not know (an OpenAI-compatible server's): today's default
        return tiktoken.get_encoding("o200k_base")


@lru_cache(maxsize=8)
def _tiktoken_encoding(model: str) -> Any:
    """The model's encoding, or None when tiktoken cannot load it (offline, without a cached file). Its
    first download has no timeout of its own: a worker behind a firewall that drops packets would hold a
    chat reply for minutes, so the load gets ENCODING_LOAD_SECONDS and then the estimate counts instead."""
    loading = helper_threads("cortex-tiktoken", 1).submit(_load_encoding, model)
    try:
        return loading.result(timeout=ENCODING_LOAD_SECONDS)
    except Exception as exc:  # noqa: BLE001 (a network error of its download, a timeout, a missing package)
        log.warning("tiktoken cannot load the encoding of %s (%s): counting about 4 characters per token; "
                    "set TIKTOKEN_CACHE_DIR to a folder holding the encoding file (or install litellm, which "
                    "ships cl100k_base and o200k_base) for exact counts",
                    model, exc or type(exc).__name__)
        return None


def openai_counter(model: str) -> TokenCounter:
    encoding = _tiktoken_encoding(model)
    if encoding is None:
        def approximate(messages: list[BaseMessage]) -> int:
            return REPLY_PRIMING_TOKENS + sum(TOKENS_PER_MESSAGE + 1 + len(str(m.content)) // 4 + 1
                                              for m in messages)

        return TokenCounter("approximate (4 characters per token)", False, approximate)

    def count(messages: list[BaseMessage]) -> int:
        return REPLY_PRIMING_TOKENS + sum(
            TOKENS_PER_MESSAGE + len(encoding.encode(role["role"])) + len(encoding.encode(role["content"]))
            for role in as_role_messages(messages))

    return TokenCounter(f"tiktoken {encoding.name}", True, count)


def fit_window(system: BaseMessage, window: list[BaseMessage], message: BaseMessage, counter: TokenCounter,
               max_tokens: int) -> tuple[list[BaseMessage], int]:
    """The latest earlier turns that fit, with the system message and the new message, in `max_tokens` as
    the counter counts the whole prompt; oldest dropped first, never starting on an answer. Returns the
    window kept and the prompt's token count. The system message and the new message alone must fit
    (`input_too_long` otherwise)."""
    alone = counter.count([system, message])
    if alone > max_tokens:
        raise ItemError("input_too_long", f"the system prompt and the message take {alone} tokens, more than "
                                          f"the {max_tokens} a prompt may take (CORTEX_CHAT_MEMORY_TOKENS, and the "
                                          "model's context less max_tokens)",
                        {"tokens": alone, "max_tokens": max_tokens})
    # Whole prompts are counted, not sums of parts: a chat template is not additive (SmolLM2's adds a
    # default system prompt to any list without one), which is why LangChain's trim_messages, counting
    # partial lists, would drop turns that fit. The oldest start that fits wins.
    for start in range(len(window) + 1):
        earlier = window[start:]
        if earlier and earlier[0].type != "human":
            continue
        counted = counter.count([system, *earlier, message])
        if counted <= max_tokens:
            return earlier, counted
    return [], alone
