"""The parts of agent runs that need no services: declarations, tool-call parsing (malformed calls are
kept as invalid calls, not errors), the messages sent back to the API, and the tools' authorization."""
from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import ValidationError

from cortex_tasks.core.agents.declarations import AgentDeclaration, DeclarationError, check_declaration
from cortex_tasks.core.auth.keys import Principal
from cortex_tasks.runtime.agents.chat_model import openai_message, parsed_tool_calls
from cortex_tasks.runtime.agents.tools import ToolDenied, authorize, build_tools, result_text


def declaration(**changes):
    body = {"name": "helper", "prompt": "support@2", "tools": [{"tool": "predict", "task": "sentiment"}]}
    return AgentDeclaration.model_validate({**body, **changes})


def test_a_declaration_with_every_tool_kind():
    agent = declaration(tools=[{"tool": "vector_search", "collections": ["kb"]}, {"tool": "document_qa"},
                               {"tool": "predict", "task": "ner"}, {"tool": "forecast", "model": "arima"}])
    assert [tool.name for tool in agent.tools] == ["vector_search", "document_qa", "predict_ner", "forecast"]
    check_declaration(agent)


@pytest.mark.parametrize("tools", [
    [{"tool": "predict"}],  # no task
    [{"tool": "predict", "task": "forecast"}],  # a series task: not a text tool
    [{"tool": "predict", "task": "sentiment", "model": "no-such-model"}],
    [{"tool": "vector_search", "model": "all-MiniLM-L6-v2"}],
    [{"tool": "forecast", "collections": ["kb"]}],
    [{"tool": "shell"}],
    [{"tool": "predict", "task": "sentiment"}, {"tool": "predict", "task": "sentiment"}],
    [],
])
def test_bad_tool_declarations_are_refused(tools):
    with pytest.raises(ValidationError):
        declaration(tools=tools)


@pytest.mark.parametrize("changes", [{"name": "../x"}, {"max_steps": 0}, {"max_steps": 51},
                                     {"token_budget": 10}, {"temperature": "hot"}, {"extra": 1}])
def test_bad_limits_and_names_are_refused(changes):
    with pytest.raises(ValidationError):
        declaration(**changes)


def test_a_model_not_offered_for_agents_is_refused_naming_the_valid_ones():
    with pytest.raises(DeclarationError) as refused:
        check_declaration(declaration(model="gpt-9"))
    assert refused.value.code == "unknown_model" and refused.value.details["valid"] == ["gpt-4o-mini"]


def test_tool_calls_are_parsed_and_malformed_ones_kept_as_invalid():
    raw = [{"id": "a", "type": "function", "function": {"name": "predict_sentiment",
                                                        "arguments": '{"texts": ["great"]}'}},
           {"id": "b", "type": "function", "function": {"name": "vector_search", "arguments": "{not json"}},
           {"id": "c", "type": "function", "function": {"name": "forecast", "arguments": "[1, 2]"}}]
    valid, invalid = parsed_tool_calls(raw)
    assert [(call["id"], call["name"], call["args"]) for call in valid] == [
        ("a", "predict_sentiment", {"texts": ["great"]})]
    assert [call["id"] for call in invalid] == ["b", "c"]
    assert "not valid JSON" in invalid[0]["error"] and "JSON object" in invalid[1]["error"]


def test_messages_go_back_in_the_chat_completions_shape_malformed_calls_included():
    valid, invalid = parsed_tool_calls([
        {"id": "a", "type": "function", "function": {"name": "t", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "t", "arguments": "{oops"}}])
    answer = AIMessage(content="", tool_calls=valid, invalid_tool_calls=invalid)
    shaped = openai_message(answer)
    assert shaped["role"] == "assistant" and shaped["content"] is None
    assert [(call["id"], call["function"]["arguments"]) for call in shaped["tool_calls"]] == [
        ("a", '{"x": 1}'), ("b", "{oops")]
    assert openai_message(ToolMessage(content="r", tool_call_id="a")) == {"role": "tool", "tool_call_id": "a",
                                                                          "content": "r"}
    assert openai_message(SystemMessage("s")) == {"role": "system", "content": "s"}
    assert openai_message(HumanMessage("h")) == {"role": "user", "content": "h"}


def test_tools_authorize_as_the_caller():
    reader = Principal("k1", "reader")
    with pytest.raises(ToolDenied) as denied:
        authorize(reader, "sentiment", "vader")
    assert denied.value.code == "forbidden"
    limited = Principal("k2", "inference_user", tasks=frozenset({"generate"}))
    with pytest.raises(ToolDenied) as denied:
        authorize(limited, "sentiment", "vader")
    assert denied.value.code == "task_not_allowed"
    only_minilm = Principal("k3", "inference_user", models=frozenset({"all-MiniLM-L6-v2"}))
    authorize(only_minilm, None, "all-MiniLM-L6-v2")
    with pytest.raises(ToolDenied):
        authorize(only_minilm, "sentiment", "vader")


def test_built_tools_have_the_names_and_schemas_the_model_sees():
    tools = build_tools([{"tool": "predict", "task": "sentiment"}, {"tool": "vector_search", "collections": ["kb"]}],
                        Principal("k", "inference_user"))
    assert set(tools) == {"predict_sentiment", "vector_search"}
    assert "kb" in tools["vector_search"].description
    assert set(tools["vector_search"].args) == {"collection", "query", "k"}
    with pytest.raises(ValidationError):
        tools["predict_sentiment"].invoke({"texts": "not a list"})
    with pytest.raises(ToolDenied):  # an undeclared collection, refused before anything is read
        tools["vector_search"].invoke({"collection": "other", "query": "q"})


def test_results_are_cut_for_the_model():
    assert result_text({"a": 1}, 100) == '{"a": 1}'
    cut = result_text({"text": "x" * 500}, 100)
    assert len(cut) < 150 and cut.endswith("(cut at 100 characters)")
