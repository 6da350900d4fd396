"""`chat_config` from the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from cortex_tasks.core.settings import env_int


@dataclass(frozen=True)
class ChatConfig:
    default_model: str = "SmolLM2-135M-Instruct"
    default_system: str = "You are a helpful assistant. Answer briefly."
    # The memory window: at most this many earlier turns (a user message and its answer) ...
    memory_turns: int = 10
    # ... and at most this many characters of them (oldest turns are dropped first). SmolLM2's context
    # is 8192 tokens; about 4 characters per token leaves room for the answer.
    memory_chars: int = 6000
    max_message_chars: int = 4000
    default_wait_seconds: float = 30.0
    # One reply per session at a time; a message waits this long for the one before it.
    lock_wait_seconds: int = 240


@lru_cache(maxsize=1)
def chat_config() -> ChatConfig:
    return ChatConfig(
        default_model=os.environ.get("CORTEX_CHAT_MODEL") or "SmolLM2-135M-Instruct",
        memory_turns=env_int("CORTEX_CHAT_MEMORY_TURNS", 10),
        memory_chars=env_int("CORTEX_CHAT_MEMORY_CHARS", 6000),
    )
