"""`chat_config`: the chat group of the settings object."""
from __future__ import annotations

from cortex_tasks.core.settings import ChatConfig, get_settings

__all__ = ["ChatConfig", "chat_config"]


def chat_config() -> ChatConfig:
    return get_settings().chat
