"""The chat memory window is trimmed with the answering model's own tokenizer: for SmolLM2, its Hugging Face
tokenizer over its chat template, the very call that builds the model's input, so the count is exact."""
from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from cortex_tasks.core.errors import ItemError
from cortex_tasks.runtime.chat.token_counting import fit_window, local_counter, openai_counter


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from cortex_tasks.runtime.models.generator import gguf_path

    source = gguf_path()
    return AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name, local_files_only=True)


def conversation(turns: int) -> list:
    window = []
    for n in range(turns):
        window += [HumanMessage(f"Question {n}: what is {n} times {n}?"), AIMessage(f"It is {n * n}, of course.")]
    return window


def test_the_window_is_the_longest_suffix_that_fits_exactly(tokenizer):
    counter = local_counter(tokenizer, "SmolLM2-135M-Instruct")
    system, message = SystemMessage("Be brief."), HumanMessage("And 7 times 7?")
    window = conversation(8)
    full = counter.count([system, *window, message])
    budget = full - 5  # the oldest turn cannot stay
    kept, counted = fit_window(system, window, message, counter, budget)
    assert counted <= budget and kept == window[2:]
    # Exact: the count is the length of what the model is given, and one more turn would not fit.
    encoded = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}]
        + [{"role": "user" if m.type == "human" else "assistant", "content": m.content} for m in kept]
        + [{"role": "user", "content": "And 7 times 7?"}], add_generation_prompt=True, return_dict=True)
    assert counted == len(encoded["input_ids"])
    assert full > budget and counter.count([system, *window[1:], message]) <= budget  # but it starts on an answer
    assert kept[0].type == "human"


def test_a_window_never_starts_on_an_answer(tokenizer):
    counter = local_counter(tokenizer, "SmolLM2-135M-Instruct")
    system, message = SystemMessage("Be brief."), HumanMessage("Next?")
    window = conversation(3)
    budget = counter.count([system, *window[1:], message])  # room for the answer of turn 0, not its question
    kept, _ = fit_window(system, window, message, counter, budget)
    assert kept == window[2:]


def test_when_the_message_alone_does_not_fit_the_error_says_so(tokenizer):
    counter = local_counter(tokenizer, "SmolLM2-135M-Instruct")
    with pytest.raises(ItemError) as refused:
        fit_window(SystemMessage("Be brief."), conversation(2), HumanMessage("word " * 300), counter, 100)
    assert refused.value.code == "input_too_long" and refused.value.details["max_tokens"] == 100


def test_openai_models_count_with_tiktoken_or_say_they_estimate():
    counter = openai_counter("gpt-4o-mini")
    messages = [SystemMessage("Be brief."), HumanMessage("Hello there, how are you?")]
    count = counter.count(messages)
    assert count > 6  # per-message overhead and the reply priming at least
    if counter.exact:
        assert counter.tokenizer.startswith("tiktoken")
    else:  # tiktoken could not load its encoding here (offline, no TIKTOKEN_CACHE_DIR)
        assert counter.tokenizer.startswith("approximate")
