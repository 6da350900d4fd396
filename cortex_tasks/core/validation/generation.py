"""Generation parameters (max_tokens, temperature, top_p, stop, system, chat, history), checked the same way by the
gateway, which refuses a bad one before anything is queued, and by the generation backends."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cortex_tasks.core.jobs.running import JobInputError

DEFAULT_MAX_TOKENS, MAX_MAX_TOKENS = 64, 512
MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES, MAX_STOP_CHARS = 4, 100
MAX_SYSTEM_CHARS = 4000
# `history`: the conversation before the input (the OpenAI-compatible chat route sends a whole conversation).
# The model's own context is checked by the backend with its tokenizer; these bound the message only.
HISTORY_ROLES = ("user", "assistant")
MAX_HISTORY_MESSAGES, MAX_HISTORY_CHARS = 64, 32_000


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    system: str | None = None
    chat: bool = True
    history: tuple[tuple[str, str], ...] = ()  # (role, content) of the turns before the input, oldest first

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat messages of a generation of `text`: the system prompt, the history, then `text`."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": role, "content": content} for role, content in self.history] + [{"role": "user", "content": text}]


def generation_params(params: dict[str, Any]) -> GenerationParams:
    """Validated generation parameters, or JobInputError naming the bad one."""
    def number(name: str, default: float) -> float:
        value = params.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise JobInputError("invalid_params", f"params.{name} must be a number")
        return float(value)

    max_tokens = params.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_MAX_TOKENS:
        raise JobInputError("invalid_params", f"params.max_tokens must be an integer from 1 to {MAX_MAX_TOKENS}")
    temperature = number("temperature", 0.0)
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise JobInputError("invalid_params", f"params.temperature must be from 0 to {MAX_TEMPERATURE}")
    top_p = number("top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise JobInputError("invalid_params", "params.top_p must be above 0 and at most 1")
    stop = params.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):
        raise JobInputError("invalid_params", f"params.stop must be a string or a list of at most "
                            f"{MAX_STOP_SEQUENCES} non-empty strings of at most {MAX_STOP_CHARS} characters")
    system = params.get("system")
    if system is not None and (not isinstance(system, str) or len(system) > MAX_SYSTEM_CHARS):
        raise JobInputError("invalid_params", f"params.system must be a string of at most {MAX_SYSTEM_CHARS} characters")
    chat = params.get("chat", True)
    if not isinstance(chat, bool):
        raise JobInputError("invalid_params", "params.chat must be true or false")
    return GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                            stop=tuple(stop), system=system or None, chat=chat,
                            history=_history(params.get("history", []), chat))


def _history(raw: Any, chat: bool) -> tuple[tuple[str, str], ...]:
    wrong = JobInputError("invalid_params", f"params.history must be a list of at most {MAX_HISTORY_MESSAGES} "
                          f"messages {{role: {' or '.join(HISTORY_ROLES)}, content: text}} of at most "
                          f"{MAX_HISTORY_CHARS} characters in all")
    if not isinstance(raw, list) or len(raw) > MAX_HISTORY_MESSAGES:
        raise wrong
    history = []
    for message in raw:
        if (not isinstance(message, dict) or set(message) != {"role", "content"}
                or message["role"] not in HISTORY_ROLES or not isinstance(message["content"], str)):
            raise wrong
        history.append((message["role"], message["content"]))
    if sum(len(content) for _, content in history) > MAX_HISTORY_CHARS:
        raise wrong
    if history and not chat:
        raise JobInputError("invalid_params", "params.history needs the chat template (params.chat true)")
    return tuple(history)
