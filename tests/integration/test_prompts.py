"""Prompts as versioned assets (/api/v1/prompts): create, version, promote, roll back, render; refusals that
name what is wrong and change nothing; and a chat turn that names a prompt records the exact version in its
job. Real gateway, worker, Redis and PostgreSQL; OpenAI answered by the local fake server."""
from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import Api

pytestmark = pytest.mark.usefixtures("workers")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create(admin: Api, name: str, template: str = "You help the {team} team. {tone}", variables=("team", "tone")):
    response = admin.post("/api/v1/prompts", {"name": name, "template": template,
                                              "input_variables": list(variables), "description": "test"})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_create_version_promote_and_roll_back(admin_api: Api, api: Api):
    name = unique("support")
    first = create(admin_api, name)
    assert (first["version"], first["stage"], first["reference"]) == (1, "production", f"{name}@1")
    second = admin_api.post(f"/api/v1/prompts/{name}/versions", {"template": "v2 for {team}.",
                                                                 "input_variables": ["team"]})
    assert second.status_code == 201 and second.get_json()["stage"] == "staging"
    third = admin_api.post(f"/api/v1/prompts/{name}/versions", {"template": "v3 for {team}.",
                                                                "input_variables": ["team"]}).get_json()
    assert third["version"] == 3

    # `name` alone is the production version: still 1 until a promotion.
    rendered = api.post(f"/api/v1/prompts/{name}/render", {"variables": {"team": "ops", "tone": "Be kind."}})
    assert rendered.status_code == 200 and rendered.get_json()["text"] == "You help the ops team. Be kind."
    promoted = admin_api.post(f"/api/v1/prompts/{name}/versions/3/promote")
    assert promoted.status_code == 200, promoted.get_json()
    assert (promoted.get_json()["version"], promoted.get_json()["previous_version"]) == (3, 1)
    assert api.post(f"/api/v1/prompts/{name}/render", {"variables": {"team": "ops"}}).get_json() == {
        "name": name, "version": 3, "reference": f"{name}@3", "text": "v3 for ops."}
    # An exact version still renders as it was.
    assert api.post(f"/api/v1/prompts/{name}/render", {"version": 2, "variables": {"team": "x"}}
                    ).get_json()["text"] == "v2 for x."

    rolled = admin_api.post(f"/api/v1/prompts/{name}/rollback")
    assert rolled.status_code == 200 and rolled.get_json()["version"] == 1, rolled.get_json()
    shown = api.get(f"/api/v1/prompts/{name}").get_json()
    assert shown["production_version"] == 1 and shown["latest_version"] == 3
    assert {v["version"]: v["stage"] for v in shown["versions"]} == {1: "production", 2: "staging", 3: "archived"}
    assert [(d["action"], d["version"], d["previous_version"]) for d in shown["deployments"]] == [
        ("rollback", 1, 3), ("promote", 3, 1), ("create", 1, None)]
    to_two = admin_api.post(f"/api/v1/prompts/{name}/rollback", {"to_version": 2})
    assert to_two.status_code == 200 and to_two.get_json()["version"] == 2
    assert name in {item["name"] for item in api.get("/api/v1/prompts").get_json()["prompts"]}
    assert api.get(f"/api/v1/prompts/{name}/versions/3").get_json()["template"] == "v3 for {team}."


def test_bad_prompts_are_refused_naming_the_problem_and_change_nothing(admin_api: Api, api: Api):
    name = unique("strict")
    undeclared = admin_api.post("/api/v1/prompts", {"name": name, "template": "Hi {user}, re {topic}.",
                                                    "input_variables": ["user"]})
    assert undeclared.status_code == 422
    assert undeclared.get_json()["error"]["code"] == "undeclared_variables"
    assert undeclared.get_json()["error"]["details"]["undeclared"] == ["topic"]
    assert api.get(f"/api/v1/prompts/{name}").status_code == 404  # nothing was created

    create(admin_api, name, "Hi {user}.", ["user"])
    assert admin_api.post("/api/v1/prompts", {"name": name, "template": "again"}).status_code == 409
    bad_version = admin_api.post(f"/api/v1/prompts/{name}/versions", {"template": "{a.b}"})
    assert bad_version.status_code == 422 and bad_version.get_json()["error"]["code"] == "invalid_template"
    assert api.get(f"/api/v1/prompts/{name}").get_json()["latest_version"] == 1

    missing = api.post(f"/api/v1/prompts/{name}/render", {"variables": {}})
    assert missing.status_code == 422
    error = missing.get_json()["error"]
    assert error["code"] == "missing_variables" and error["details"]["missing"] == ["user"]
    assert "user" in error["message"]
    assert api.post(f"/api/v1/prompts/{name}/render", {"version": 9}).status_code == 404
    assert admin_api.post(f"/api/v1/prompts/{name}/versions/1/promote").status_code == 409  # already
    assert admin_api.post(f"/api/v1/prompts/{name}/rollback").get_json()["error"]["code"] == "no_previous_production"
    assert api.get("/api/v1/prompts/no-such-prompt").status_code == 404
    assert admin_api.post("/api/v1/prompts", {"name": "../x", "template": "t"}).status_code == 422


def test_readers_read_and_only_deployers_change(app, keys, admin_api: Api):
    name = unique("roles")
    create(admin_api, name, "Text.", [])
    reader = admin_api.as_key(keys["reader"])
    user = admin_api.as_key(keys["inference_user"])
    assert reader.get(f"/api/v1/prompts/{name}").status_code == 200
    assert reader.post(f"/api/v1/prompts/{name}/render", {}).status_code == 200
    for caller in (reader, user):
        assert caller.post("/api/v1/prompts", {"name": unique("x"), "template": "t"}).status_code == 403
        assert caller.post(f"/api/v1/prompts/{name}/versions", {"template": "t"}).status_code == 403
        assert caller.post(f"/api/v1/prompts/{name}/rollback").status_code == 403


def test_a_chat_turn_records_the_prompt_version_it_used(admin_api: Api, api: Api, fake_openai):
    name = unique("chat-system")
    create(admin_api, name, "You are the {team} assistant.", ["team"])
    session = unique("prompted")
    reply = api.post(f"/api/v1/chat/{session}", {"message": "Hello", "model": "gpt-4o-mini", "prompt": name,
                                                 "prompt_variables": {"team": "billing"}, "wait": 60})
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert body["prompt"] == {"name": name, "version": 1, "reference": f"{name}@1"}
    sent = fake_openai.calls("/chat/completions")[-1]["body"]["messages"]
    assert sent[0] == {"role": "system", "content": "You are the billing assistant."}
    job = api.get(f"/api/v1/jobs/{body['job_id']}").get_json()
    assert job["result"]["prompt"]["reference"] == f"{name}@1"
    # The window was counted with the model's tokenizer (tiktoken, or an estimate it names when offline).
    assert body["memory"]["prompt_tokens_counted"] > 0 and body["memory"]["tokenizer"]

    missing = api.post(f"/api/v1/chat/{session}", {"message": "Hi", "model": "gpt-4o-mini", "prompt": name})
    assert missing.status_code == 422 and missing.get_json()["error"]["details"]["missing"] == ["team"]
    both = api.post(f"/api/v1/chat/{session}", {"message": "Hi", "system": "x", "prompt": name})
    assert both.status_code == 422
    assert api.get(f"/api/v1/chat/{session}").get_json()["turns"] == 1  # the refusals stored nothing


def test_the_local_model_counts_its_window_with_its_own_tokenizer(api: Api):
    session = unique("local-count")
    reply = api.post(f"/api/v1/chat/{session}", {"message": "Hello!", "params": {"max_tokens": 6}, "wait": 120})
    assert reply.status_code == 200, reply.get_json()
    memory = reply.get_json()["memory"]
    # Exact: the count of the prompt the window was fitted in is the prompt the model was given.
    assert memory["exact"] is True and "Hugging Face tokenizer" in memory["tokenizer"]
    assert memory["prompt_tokens_counted"] == reply.get_json()["tokens"]["prompt"]
    assert memory["max_prompt_tokens"] == 4096  # the shipped CORTEX_CHAT_MEMORY_TOKENS fits SmolLM2's context


def test_changes_to_prompts_and_agents_are_audited(app, admin_api: Api, keys):
    name = unique("audited")
    create(admin_api, name, "One.", [])
    assert admin_api.post(f"/api/v1/prompts/{name}/versions", {"template": "Two."}).status_code == 201
    assert admin_api.post(f"/api/v1/prompts/{name}/versions/2/promote").status_code == 200
    assert admin_api.post(f"/api/v1/prompts/{name}/rollback").status_code == 200
    assert admin_api.post(f"/api/v1/prompts/{name}/versions/7/promote").status_code == 404
    agent = unique("audited-agent")
    assert admin_api.post("/api/v1/agents", {"name": agent, "prompt": name,
                                             "tools": [{"tool": "predict", "task": "sentiment"}]}).status_code == 201
    assert admin_api.delete(f"/api/v1/agents/{agent}").status_code == 200
    app.extensions["cortex_audit"].flush()
    auditor = admin_api.as_key(keys["platform_admin"])
    admin = keys["model_admin"].split("_", 2)[1]
    response = auditor.get("/api/v1/audit", query_string={"size": 200, "type": "configuration_changes",
                                                          "actor": admin})
    assert response.status_code == 200, response.get_json()
    seen = {(event["action"], event["resource"], event["outcome"]) for event in response.get_json()["events"]}
    assert {("prompt.version", name, "success"), ("prompt.promote", f"{name}/2", "success"),
            ("prompt.rollback", name, "success"), ("prompt.promote", f"{name}/7", "failure"),
            ("agent.delete", agent, "success")} <= seen
    created = [event for event in response.get_json()["events"] if event["action"] == "prompt.create"
               and event["details"].get("name") == name]
    assert created and created[0]["outcome"] == "success"
    declared = [event for event in response.get_json()["events"] if event["action"] == "agent.create"
                and event["details"]["request"].get("name") == agent]
    assert declared and declared[0]["outcome"] == "success"
