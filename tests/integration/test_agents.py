"""Agents (/api/v1/agents): a real gateway and gpu worker, real Redis and PostgreSQL; the chat model is the
local OpenAI-compatible fake server, scripted per test (tests/support/fake_openai.ChatScript): tool call ->
tool result -> final answer, malformed calls, failing tools, runaway loops stopped by the step limit and by
the token budget, and tools the caller's key may not use."""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest

from cortex_tasks.core.auth.keys import create_key, create_tenant
from tests.integration.conftest import Api
from tests.support.fake_openai import ChatScript, FakeOpenAI
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("workers")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def script(fake_openai: FakeOpenAI) -> Iterator[Callable[..., ChatScript]]:
    """Install a script for this test's chat completions; removed afterwards."""
    def install(steps: list[dict], repeat_last: bool = False) -> ChatScript:
        fake_openai.reset()
        fake_openai.chat_script = ChatScript(steps, repeat_last)  # type: ignore[attr-defined]
        return fake_openai.chat_script  # type: ignore[attr-defined]

    yield install
    fake_openai.chat_script = None  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def system_prompt(app, keys) -> str:
    admin = Api(app.test_client(), keys["model_admin"])
    name = unique("agent-system")
    created = admin.post("/api/v1/prompts", {"name": name, "template": "You help the {team} team. Use tools.",
                                             "input_variables": ["team"]})
    assert created.status_code == 201, created.get_json()
    return name


@pytest.fixture(scope="module")
def collection(app, keys) -> str:
    admin = Api(app.test_client(), keys["model_admin"])
    name = unique("agent_kb").replace("-", "_")
    assert admin.client.put(f"/api/v1/vectors/{name}", json={}, headers=admin.headers()).status_code == 201
    upserted = admin.post(f"/api/v1/vectors/{name}", {"wait": 60, "items": [
        {"id": "refunds", "text": "Refunds are paid within 14 days of a return.", "metadata": {"topic": "money"}},
        {"id": "shipping", "text": "Parcels ship from Rotterdam every weekday.", "metadata": {"topic": "post"}}]})
    assert upserted.status_code == 200, upserted.get_json()
    return name


def declare(admin: Api, prompt: str, tools: list, **extra) -> str:
    name = unique("agent")
    response = admin.post("/api/v1/agents", {"name": name, "prompt": prompt, "tools": tools, **extra})
    assert response.status_code == 201, response.get_json()
    return name


def run(caller: Api, agent: str, text: str = "Help me.", **extra):
    return caller.post(f"/api/v1/agents/{agent}/run", {"input": text, "variables": {"team": "support"},
                                                       "wait": 90, **extra})


def sse_events(response) -> list[tuple[str, dict]]:
    events = []
    for block in response.get_data(as_text=True).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_tool_call_its_result_and_the_final_answer(admin_api, api, script, system_prompt, collection):
    agent = declare(admin_api, system_prompt, [{"tool": "vector_search", "collections": [collection]},
                                               {"tool": "predict", "task": "sentiment"}])
    chat = script([
        {"tool_calls": [("vector_search", {"collection": collection, "query": "when do I get my money back?",
                                           "k": 1}),
                        ("predict_sentiment", {"texts": ["I love this shop"]})], "usage": (80, 20)},
        {"content": "Refunds take up to 14 days.", "usage": (150, 10)},
    ])
    response = run(api, agent, "When is my refund paid?")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["answer"] == "Refunds take up to 14 days."
    assert body["prompt"] == {"name": system_prompt, "version": 1, "reference": f"{system_prompt}@1"}
    assert body["tokens"] == {"prompt": 230, "completion": 30, "total": 260, "budget": 20000}
    first, last = body["steps"]
    assert first["tokens"] == {"prompt": 80, "completion": 20, "total": 100, "used": 100}
    search, sentiment = first["tool_calls"]
    assert (search["tool"], search["status"], search["arguments"]["collection"]) == (
        "vector_search", "ok", collection)
    assert json.loads(search["result"])["results"][0]["id"] == "refunds"
    assert sentiment["status"] == "ok" and json.loads(sentiment["result"])["outputs"][0]["label"] == "positive"
    assert last["tool_calls"] == [] and last["content"] == body["answer"]

    # What the model was sent: the rendered system prompt, the tools, then each tool's result by call id.
    sent = chat.seen
    assert sent[0][0] == {"role": "system", "content": "You help the support team. Use tools."}
    tool_replies = [m for m in sent[1] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_replies] == ["call_1_0", "call_1_1"]
    assert "refunds" in tool_replies[0]["content"]

    job = api.get(f"/api/v1/jobs/{body['job_id']}").get_json()
    assert job["kind"] == "agent" and job["status"] == "succeeded"
    assert job["result"]["prompt"]["reference"] == f"{system_prompt}@1"
    assert [step["step"] for step in job["result"]["steps"]] == [1, 2]


def test_the_model_is_sent_the_declared_tools(admin_api, api, script, system_prompt, fake_openai):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}, {"tool": "document_qa"}])
    script([{"content": "No tools needed."}])
    assert run(api, agent).status_code == 200
    tools = fake_openai.calls("/chat/completions")[-1]["body"]["tools"]
    assert sorted(tool["function"]["name"] for tool in tools) == ["document_qa", "predict_sentiment"]
    assert "texts" in tools[0]["function"]["parameters"]["properties"] or \
           "texts" in tools[1]["function"]["parameters"]["properties"]


def test_malformed_tool_calls_and_unknown_tools_are_fed_back_as_tool_errors(admin_api, api, script, system_prompt):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}])
    chat = script([
        {"tool_calls": [("predict_sentiment", '{"texts": ["unterminated'),
                        ("delete_everything", {}),
                        ("predict_sentiment", {"texts": "not a list"})]},
        {"tool_calls": [("predict_sentiment", {"texts": ["fixed it, great"]})]},
        {"content": "Done."},
    ])
    response = run(api, agent)
    assert response.status_code == 200, response.get_json()
    steps = response.get_json()["steps"]
    first = {call["tool"]: call for call in steps[0]["tool_calls"]}
    codes = sorted(call["error"]["code"] for call in steps[0]["tool_calls"])
    assert codes == ["invalid_arguments", "malformed_tool_call", "unknown_tool"]
    assert "predict_sentiment" in first["delete_everything"]["error"]["message"]  # the tools it may call
    assert steps[1]["tool_calls"][0]["status"] == "ok"
    errors = [m for m in chat.seen[1] if m["role"] == "tool"]
    assert len(errors) == 3 and all(m["content"].startswith("Error (") for m in errors)


def test_a_tool_that_fails_is_an_error_for_the_model_not_a_crash(admin_api, api, script, system_prompt):
    agent = declare(admin_api, system_prompt, [{"tool": "vector_search"}, {"tool": "forecast", "model": "arima"}])
    script([
        {"tool_calls": [("vector_search", {"collection": "no_such_collection", "query": "x"}),
                        ("forecast", {"series": [1, 2, "three"], "horizon": 2})]},
        {"content": "I could not look that up."},
    ])
    response = run(api, agent)
    assert response.status_code == 200, response.get_json()
    calls = response.get_json()["steps"][0]["tool_calls"]
    assert calls[0]["status"] == "error" and calls[0]["error"]["code"] == "collection_not_found"
    assert calls[1]["status"] == "error" and calls[1]["error"]["code"] == "invalid_arguments"
    assert response.get_json()["answer"] == "I could not look that up."


def test_a_runaway_loop_is_stopped_by_the_step_limit(admin_api, api, script, system_prompt, fake_openai):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}], max_steps=3)
    script([{"tool_calls": [("predict_sentiment", {"texts": ["again"]})]}], repeat_last=True)
    response = run(api, agent)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "step_limit_exceeded"
    assert len(error["details"]["steps"]) == 3 and error["details"]["prompt"]["version"] == 1
    assert len(fake_openai.calls("/chat/completions")) == 3
    job = api.get(f"/api/v1/jobs/{error['details']['job_id']}").get_json()
    assert job["status"] == "failed" and job["error"]["code"] == "step_limit_exceeded"


def test_a_runaway_loop_is_stopped_by_the_token_budget(admin_api, api, script, system_prompt, fake_openai):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}], token_budget=300)
    script([{"tool_calls": [("predict_sentiment", {"texts": ["again"]})], "usage": (120, 10)}], repeat_last=True)
    response = run(api, agent)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "token_budget_exceeded"
    # 130 + 130 used; the next prompt (at least 120 tokens) cannot fit in the 40 left: no third call is sent.
    assert error["details"]["tokens"]["total"] == 260 and len(error["details"]["steps"]) == 2
    assert len(fake_openai.calls("/chat/completions")) == 2
    # A max_tokens that fits the rest of the budget was asked of the second call.
    assert fake_openai.calls("/chat/completions")[1]["body"]["max_tokens"] == 300 - 130 - 120


def test_one_call_over_the_budget_stops_the_run_too(admin_api, api, script, system_prompt):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}], token_budget=300)
    script([{"content": "A long answer.", "usage": (400, 10)}])
    error = run(api, agent).get_json()["error"]
    assert error["code"] == "token_budget_exceeded" and error["details"]["tokens"]["total"] == 410


def test_the_shipped_limits_apply_when_a_declaration_names_none(admin_api, api):
    shown = admin_api.get(f"/api/v1/agents/{declare(admin_api, *_minimal(admin_api))}").get_json()
    assert (shown["max_steps"], shown["token_budget"]) == (8, 20000)


def _minimal(admin: Api) -> tuple[str, list]:
    name = unique("plain")
    assert admin.post("/api/v1/prompts", {"name": name, "template": "Plain."}).status_code == 201
    return name, [{"tool": "predict", "task": "language"}]


def test_a_tool_the_callers_key_may_not_use_is_denied(app, admin_api, script, system_prompt):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}])
    limited = admin_api.as_key(create_key("inference_user", name="agent generate only", tier="unlimited",
                                          tasks=["generate"]).key)
    script([{"tool_calls": [("predict_sentiment", {"texts": ["is this allowed?"]})]}, {"content": "Denied."}])
    response = run(limited, agent)
    assert response.status_code == 200, response.get_json()
    call = response.get_json()["steps"][0]["tool_calls"][0]
    assert call["status"] == "denied" and call["error"]["code"] == "task_not_allowed"
    # A reader may not run agents at all; a key limited to other tasks may not use the agent's model.
    reader = admin_api.as_key(create_key("reader", name="agent reader", tier="unlimited").key)
    assert run(reader, agent).status_code == 403
    embed_only = admin_api.as_key(create_key("inference_user", name="agent embed only", tier="unlimited",
                                             tasks=["embed"]).key)
    assert run(embed_only, agent).get_json()["error"]["code"] == "task_not_allowed"


def test_another_tenants_collections_are_invisible_to_its_tools(app, script, collection):
    tenant = unique("agents")
    assert create_tenant(tenant, name="agents test")
    admin = Api(app.test_client(), create_key("model_admin", tenant=tenant, tier="unlimited").key)
    prompt = unique("b-system")
    assert admin.post("/api/v1/prompts", {"name": prompt, "template": "B."}).status_code == 201
    agent = declare(admin, prompt, [{"tool": "vector_search"}])
    script([{"tool_calls": [("vector_search", {"collection": collection, "query": "refunds"})]},
            {"content": "Nothing found."}])
    response = admin.post(f"/api/v1/agents/{agent}/run", {"input": "find it", "wait": 90})
    assert response.status_code == 200, response.get_json()
    call = response.get_json()["steps"][0]["tool_calls"][0]
    assert call["status"] == "error" and call["error"]["code"] == "collection_not_found"
    assert "Refunds are paid" not in json.dumps(response.get_json())


def test_steps_stream_as_server_sent_events(admin_api, api, script, system_prompt):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}])
    script([{"tool_calls": [("predict_sentiment", {"texts": ["sunny"]})]}, {"content": "Sunny is positive."}])
    response = api.post(f"/api/v1/agents/{agent}/run", {"input": "Is sunny positive?", "stream": True,
                                                        "variables": {"team": "weather"}})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    events = sse_events(response)
    assert [name for name, _ in events] == ["start", "step", "step", "done"], events
    assert events[1][1]["tool_calls"][0]["tool"] == "predict_sentiment"
    assert events[1][1]["tokens"]["total"] == 60
    done = events[-1][1]
    assert done["status"] == "succeeded" and done["result"]["answer"] == "Sunny is positive."


def test_runs_use_the_prompt_version_they_name(admin_api, api, script):
    prompt = unique("versioned")
    assert admin_api.post("/api/v1/prompts", {"name": prompt, "template": "Version one."}).status_code == 201
    assert admin_api.post(f"/api/v1/prompts/{prompt}/versions", {"template": "Version two."}).status_code == 201
    pinned = declare(admin_api, f"{prompt}@1", [{"tool": "predict", "task": "sentiment"}])
    following = declare(admin_api, prompt, [{"tool": "predict", "task": "sentiment"}])
    chat = script([{"content": "ok"}], repeat_last=True)
    first = run(api, following)
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["prompt"]["version"] == 1  # production is still 1
    assert admin_api.post(f"/api/v1/prompts/{prompt}/versions/2/promote").status_code == 200
    assert run(api, following).get_json()["prompt"]["version"] == 2
    assert run(api, pinned).get_json()["prompt"]["version"] == 1
    assert [seen[0]["content"] for seen in chat.seen] == ["Version one.", "Version two.", "Version one."]


def test_bad_declarations_and_runs_are_refused_and_change_nothing(admin_api, api, script, system_prompt,
                                                                  fake_openai):
    tools = [{"tool": "predict", "task": "sentiment"}]
    body = {"name": unique("bad"), "prompt": system_prompt, "tools": tools}
    assert admin_api.post("/api/v1/agents", {**body, "prompt": "no-such-prompt"}).status_code == 404
    assert admin_api.post("/api/v1/agents", {**body, "model": "gpt-9"}).get_json()["error"]["code"] == "unknown_model"
    assert admin_api.post("/api/v1/agents", {**body, "tools": [{"tool": "predict", "task": "forecast"}]}
                          ).status_code == 422
    assert api.post("/api/v1/agents", body).status_code == 403  # declaring is a deployer's
    assert api.get(f"/api/v1/agents/{body['name']}").status_code == 404

    agent = declare(admin_api, system_prompt, tools)
    assert admin_api.post("/api/v1/agents", {**body, "name": agent}).status_code == 409
    script([{"content": "never asked"}])
    missing = api.post(f"/api/v1/agents/{agent}/run", {"input": "hi", "wait": 10})
    assert missing.status_code == 422
    assert missing.get_json()["error"]["code"] == "missing_variables"
    assert missing.get_json()["error"]["details"]["missing"] == ["team"]
    assert api.post(f"/api/v1/agents/{agent}/run", {"input": "", "variables": {"team": "x"}}).status_code == 422
    assert api.post("/api/v1/agents/no-such-agent/run", {"input": "hi"}).status_code == 404
    assert fake_openai.calls("/chat/completions") == []  # no refused run reached the model

    assert agent in {item["name"] for item in api.get("/api/v1/agents").get_json()["agents"]}
    assert api.delete(f"/api/v1/agents/{agent}").status_code == 403
    assert admin_api.delete(f"/api/v1/agents/{agent}").status_code == 200
    assert api.get(f"/api/v1/agents/{agent}").status_code == 404


def test_a_client_that_leaves_the_stream_stops_the_run(app, keys, admin_api, script, system_prompt, fake_openai):
    agent = declare(admin_api, system_prompt, [{"tool": "predict", "task": "sentiment"}], max_steps=50)
    script([{"tool_calls": [("predict_sentiment", {"texts": ["more"]})]}], repeat_last=True)
    client = app.test_client()
    response = client.post(f"/api/v1/agents/{agent}/run", headers={"Authorization": f"Bearer {keys['inference_user']}"},
                           json={"input": "loop", "stream": True, "variables": {"team": "x"}}, buffered=False)
    chunks = iter(response.response)
    job_id = json.loads(next(chunks).decode().split("data: ", 1)[1])["job_id"]
    for chunk in chunks:  # the first step, then hang up
        if b"event: step" in chunk:
            break
    response.close()
    def stopped() -> dict | None:
        job = admin_api.get(f"/api/v1/jobs/{job_id}").get_json()
        return job if job["status"] != "running" else None

    job = wait_for(stopped, 60, "the run to stop")
    assert job["status"] == "cancelled", job
    assert len(fake_openai.calls("/chat/completions")) < 50
