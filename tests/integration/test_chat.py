"""Chat with memory: real gateway, worker, Redis and PostgreSQL; OpenAI answered by the local fake server,
so the test can read exactly what the model was sent; one conversation with the bundled SmolLM2."""
from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.usefixtures("workers")


def new_session() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_openai_conversation_remembers_earlier_turns(api, fake_openai):
    fake_openai.reset()
    session = new_session()
    first = api.post(f"/api/v1/chat/{session}", {"message": "My name is Ada.", "model": "gpt-4o-mini",
                                                 "system": "You are a test.", "params": {"temperature": 0.2}})
    assert first.status_code == 200, first.get_json()
    assert first.get_json()["reply"] == "You said: My name is Ada. (I saw 2 messages)"
    second = api.post(f"/api/v1/chat/{session}", {"message": "What is my name?", "model": "gpt-4o-mini",
                                                  "system": "You are a test.", "params": {"temperature": 0.2}})
    assert second.status_code == 200, second.get_json()
    body = second.get_json()
    assert body["model"]["name"] == "gpt-4o-mini" and body["memory"]["messages_in_window"] == 2
    sent = [call["body"]["messages"] for call in fake_openai.calls("/chat/completions")]
    assert sent[1] == [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "You said: My name is Ada. (I saw 2 messages)"},
        {"role": "user", "content": "What is my name?"},
    ]
    third = api.post(f"/api/v1/chat/{session}", {"message": "Thanks.", "model": "gpt-4o-mini"})
    assert third.status_code == 200
    assert len(fake_openai.calls("/chat/completions")[2]["body"]["messages"]) == 6  # system + 2 turns + new

    history = api.get(f"/api/v1/chat/{session}").get_json()
    assert history["turns"] == 3
    assert [(m["role"], m["content"]) for m in history["messages"][:2]] == [
        ("user", "My name is Ada."), ("assistant", "You said: My name is Ada. (I saw 2 messages)")]
    assert history["messages"][1]["model"] == "gpt-4o-mini"


def test_local_smollm2_conversation(api):
    session = new_session()
    first = api.post(f"/api/v1/chat/{session}", {"message": "Hello! Who are you?", "params": {"max_tokens": 12},
                                                 "wait": 120})
    assert first.status_code == 200, first.get_json()
    body = first.get_json()
    assert body["model"]["name"] == "SmolLM2-135M-Instruct" and body["reply"].strip()
    assert body["tokens"]["completion"] > 0
    second = api.post(f"/api/v1/chat/{session}", {"message": "Say it again.", "params": {"max_tokens": 8},
                                                  "wait": 120})
    assert second.status_code == 200, second.get_json()
    # The second prompt held the first turn: more prompt tokens than the first message alone.
    assert second.get_json()["memory"]["messages_in_window"] == 2
    assert second.get_json()["tokens"]["prompt"] > body["tokens"]["prompt"] + body["tokens"]["completion"]
    assert api.get(f"/api/v1/chat/{session}").get_json()["turns"] == 2


def test_sessions_belong_to_their_key(api, admin_api, fake_openai):
    session = new_session()
    assert api.post(f"/api/v1/chat/{session}", {"message": "secret plan", "model": "gpt-4o-mini"}).status_code == 200
    other = admin_api.as_key(admin_api.post("/api/v1/keys", {"role": "inference_user"}).get_json()["key"])
    assert other.get(f"/api/v1/chat/{session}").status_code == 404
    assert other.post(f"/api/v1/chat/{session}", {"message": "let me in"}).status_code == 404
    assert other.delete(f"/api/v1/chat/{session}").status_code == 404
    assert api.get(f"/api/v1/chat/{session}").get_json()["turns"] == 1  # unchanged

    deleted = api.delete(f"/api/v1/chat/{session}")
    assert deleted.status_code == 200 and deleted.get_json()["deleted_messages"] == 2
    assert api.get(f"/api/v1/chat/{session}").status_code == 404


@pytest.mark.parametrize("path, body, code", [
    ("/api/v1/chat/ok-id", {}, "invalid_request"),
    ("/api/v1/chat/ok-id", {"message": ""}, "invalid_request"),
    ("/api/v1/chat/ok-id", {"message": 5}, "invalid_request"),
    ("/api/v1/chat/ok-id", {"message": "hi", "extra": 1}, "invalid_request"),
    ("/api/v1/chat/ok-id", {"message": "hi", "params": {"max_tokens": 0}}, "invalid_params"),
    ("/api/v1/chat/bad%20id", {"message": "hi"}, "invalid_session_id"),
    ("/api/v1/chat/" + "x" * 129, {"message": "hi"}, "invalid_session_id"),
])
def test_bad_input_is_422_and_changes_nothing(api, path, body, code):
    response = api.post(path, body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"] == code
    assert api.get("/api/v1/chat/ok-id").status_code == 404  # no session was created


def test_unknown_model_and_reader_role(api, keys):
    assert api.post("/api/v1/chat/any-session", {"message": "hi", "model": "vader"}).status_code == 404
    reader = api.as_key(keys["reader"])
    assert reader.post("/api/v1/chat/any-session", {"message": "hi"}).status_code == 403


def test_health_langchain(api):
    body = api.get("/api/v1/health/langchain").get_json()
    assert body["status"] == "ok" and body["langchain_core"].startswith("1.")
    assert body["models"]["gpt-4o-mini"]["available"] is True
