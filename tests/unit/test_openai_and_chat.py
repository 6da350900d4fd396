"""Plain logic of the OpenAI integration and the chat memory (no services)."""
from __future__ import annotations

from datetime import datetime

import pytest

from cortex_tasks.core.chat.config import chat_config
from cortex_tasks.core.chat.history import StoredMessage, valid_session_id
from cortex_tasks.core.openai.billing import (
    BILLING_PARAM,
    BILLING_TENANT_PARAM,
    billed_params,
    billing_owner,
    billing_tenant,
)
from cortex_tasks.core.openai.config import cost_usd, openai_config
from cortex_tasks.core.openai.rate_limit import estimate_tokens
from cortex_tasks.core.settings import openai_prices_from
from cortex_tasks.core.tenancy import tenant_scope
from cortex_tasks.runtime.chat.service import PROMPT, memory_window


def test_cost_uses_prices_per_thousand_tokens():
    config = openai_config().model_copy(update={"prices": {"m": {"input": 0.5, "output": 2.0}}})
    assert cost_usd("m", 2000, 500, config) == pytest.approx(1.0 + 1.0)
    assert cost_usd("unknown", 1000, 1000, config) == 0.0


def test_price_overrides_are_checked():
    assert openai_prices_from('{"gpt-4o-mini": {"input": 1, "output": 2}}')["gpt-4o-mini"] == {"input": 1.0, "output": 2.0}
    with pytest.raises(ValueError, match="CORTEX_OPENAI_PRICES"):
        openai_prices_from("not json")


def test_billing_is_set_by_the_gateway_not_the_client():
    spoofed = {"temperature": 0, BILLING_PARAM: "someone-else", BILLING_TENANT_PARAM: "another-team"}
    billed = billed_params("gpt-4o-mini", spoofed, "me", "my-team")
    assert billed[BILLING_PARAM] == "me" and billing_tenant(billed) == "my-team"
    with tenant_scope("team-in-scope"):  # the gateway's request: its key's tenant
        assert billing_tenant(billed_params("gpt-4o-mini", {}, "me")) == "team-in-scope"
    assert billed_params("SmolLM2-135M-Instruct", {"temperature": 0}, "me") == {"temperature": 0}
    assert billing_owner({}) == "unattributed"
    assert billing_tenant({}) is None and billing_tenant({BILLING_TENANT_PARAM: "../x"}) is None


def test_token_estimate_counts_output_budget():
    assert estimate_tokens(["a" * 400], 100) == 201


@pytest.mark.parametrize("session_id, valid", [
    ("abc", True), ("00000000-0000-0000-0000-000000000000", True), ("a_b-C9", True), ("x" * 128, True),
    ("", False), ("-leading", False), ("has space", False), ("../etc", False), ("a/b", False), ("x" * 129, False),
])
def test_session_ids(session_id, valid):
    assert valid_session_id(session_id) is valid


def stored(count: int, size: int = 100) -> list[StoredMessage]:
    now = datetime.now()
    return [StoredMessage("user" if i % 2 == 0 else "assistant", f"m{i:02d}" + "x" * size, None, now)
            for i in range(count)]


def test_memory_window_keeps_the_last_turns_in_order():
    window = memory_window(stored(30), chat_config().model_copy(update={"memory_turns": 3, "memory_chars": 100_000}))
    assert [m.content[:3] for m in window] == ["m24", "m25", "m26", "m27", "m28", "m29"]
    assert window[0].type == "human" and window[1].type == "ai"


def test_memory_window_drops_oldest_beyond_the_character_budget_and_starts_on_a_question():
    window = memory_window(stored(10), chat_config().model_copy(update={"memory_chars": 350}))
    assert [m.content[:3] for m in window] == ["m08", "m09"]  # three fit, but not an answer without its question
    assert memory_window([], chat_config()) == []


def test_prompt_puts_history_between_system_and_new_message():
    window = memory_window(stored(2, size=1), chat_config())
    messages = PROMPT.invoke({"system": "S", "history": window, "message": "new {not a variable}"}).to_messages()
    assert [(m.type, m.content) for m in messages] == [
        ("system", "S"), ("human", "m00x"), ("ai", "m01x"), ("human", "new {not a variable}")]
