"""Translating OpenAI's requests into Cortex generations, and Cortex's errors into OpenAI's shape
(cortex_web/openai_translation.py), without services."""
from __future__ import annotations

import base64
import struct

import pytest

from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.validation.generation import generation_params
from cortex_web.errors import ApiError
from cortex_web.openai_translation import (
    ChatCompletionRequest,
    EmbeddingsRequest,
    as_base64,
    embedding_texts,
    generation_request,
    openai_error,
)


def chat(**body):
    return ChatCompletionRequest.model_validate({"model": "SmolLM2-135M-Instruct", **body})


def test_a_conversation_becomes_system_history_and_the_last_user_message():
    text, params = generation_request(chat(messages=[
        {"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use English."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "How"}, {"type": "text", "text": "are you?"}]}],
        max_completion_tokens=20, stop="\n"))
    assert text == "How\nare you?"
    assert params == {"max_tokens": 20, "temperature": 0.0, "top_p": 1.0, "stop": "\n",
                      "system": "Be brief.\n\nUse English.",
                      "history": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    assert generation_params(params).messages(text)[0] == {"role": "system", "content": "Be brief.\n\nUse English."}


@pytest.mark.parametrize(("body", "param"), [
    ({"n": 3}, "n"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "auto"}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(body, param):
    request = chat(**{"messages": [{"role": "user", "content": "Hi"}], **body})
    with pytest.raises(ApiError) as refused:
        generation_request(request)
    assert refused.value.status == 400 and refused.value.details["param"] == param


def test_history_is_checked_like_every_generation_param():
    with pytest.raises(JobInputError, match="params.history"):
        generation_params({"history": [{"role": "system", "content": "x"}]})
    with pytest.raises(JobInputError, match="params.history"):
        generation_params({"history": [{"role": "user", "content": "x" * 40_000}]})
    with pytest.raises(JobInputError, match="chat template"):
        generation_params({"history": [{"role": "user", "content": "x"}], "chat": False})


def test_token_arrays_are_refused_and_texts_accepted():
    assert embedding_texts(EmbeddingsRequest(model="m", input="one")) == ["one"]
    for tokens in ([1, 2, 3], [[1, 2], [3]]):
        with pytest.raises(ApiError) as refused:
            embedding_texts(EmbeddingsRequest(model="m", input=tokens))
        assert refused.value.code == "token_arrays_not_supported"
    with pytest.raises(ApiError):
        embedding_texts(EmbeddingsRequest(model="m", input=[]))


def test_base64_is_openais_little_endian_float32():
    vector = [0.5, -1.25, 3.0]
    assert struct.unpack("<3f", base64.b64decode(as_base64(vector))) == tuple(vector)


def test_cortex_errors_in_openais_shape():
    body, status, headers = openai_error(ApiError(404, "unknown_model", "Unknown model 'x'.", {"valid": ["a", "b"]}))
    assert status == 404 and body == {"error": {"message": "Unknown model 'x'. Models: a, b.",
                                                "type": "invalid_request_error", "param": "model",
                                                "code": "model_not_found"}}
    body, status, headers = openai_error(ApiError(429, "rate_limited", "slow", {}, headers={"Retry-After": "3"}))
    assert (status, body["error"]["code"], headers["Retry-After"]) == (429, "rate_limit_exceeded", "3")
    body, status, _ = openai_error(ApiError(402, "budget_exceeded", "spent"))
    assert (status, body["error"]["type"]) == (429, "insufficient_quota")
    body, status, _ = openai_error(ApiError(422, "invalid_input", "too long", {"param": "input"}))
    assert (status, body["error"]["param"]) == (400, "input")
    body, status, _ = openai_error(ApiError(401, "invalid_api_key", "bad"))
    assert (status, body["error"]["type"], body["error"]["code"]) == (401, "invalid_request_error", "invalid_api_key")


def test_item_rules_are_a_400_naming_the_input(monkeypatch):
    from cortex_tasks.core.catalogue import MODELS, TASKS
    from cortex_web import openai_translation as openai_compatible

    monkeypatch.setattr(openai_compatible, "resolve", lambda task, model: (TASKS["embed"], MODELS["all-MiniLM-L6-v2"]))
    with pytest.raises(ApiError) as refused:
        openai_compatible.embeddings(EmbeddingsRequest(model="all-MiniLM-L6-v2", input=["fine", "x" * 10_001]))
    assert refused.value.status == 400 and refused.value.details["param"] == "input"
    assert refused.value.message.startswith("input[1] has 10001 characters")
    with pytest.raises(ApiError) as blank:
        openai_compatible.chat_completion(chat(messages=[{"role": "user", "content": "   "}]))
    assert blank.value.details["param"] == "messages" and "empty" in blank.value.message
