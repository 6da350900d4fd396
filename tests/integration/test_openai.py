"""OpenAI models through the normal /predict path, against a local OpenAI-compatible server (the only test
double; everything else is real: gateway, Redis, PostgreSQL, a gpu worker, the bundled SmolLM2)."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from cortex_tasks.core.openai.config import cost_usd
from cortex_tasks.core.settings import reset_settings_cache
from cortex_tasks.core.storage.db import session_scope

# These tests also read rows themselves, as the default tenant (its keys are the fixtures').
pytestmark = pytest.mark.usefixtures("workers", "in_default_tenant")


def usage_rows(owner: str) -> list[dict]:
    with session_scope() as session:
        return [dict(row) for row in session.execute(text(
            "SELECT model, kind, prompt_tokens, completion_tokens, cost_usd, cached, tenant FROM openai_usage "
            "WHERE owner = :owner ORDER BY id"), {"owner": owner}).mappings()]


@pytest.fixture()
def own_key(admin_api):
    """A fresh inference_user key per test, so its usage rows are its own."""
    created = admin_api.post("/api/v1/keys", {"role": "inference_user", "name": "openai test"}).get_json()
    return created


@pytest.fixture(autouse=True)
def clean_fake(fake_openai):
    fake_openai.reset()
    yield
    fake_openai.reset()


def test_generate_with_openai_records_usage_and_cost(api, own_key, fake_openai):
    caller = api.as_key(own_key["key"])
    result = caller.predict("generate", ["Name a colour."], model="gpt-4o-mini",
                            params={"temperature": 0.7, "max_tokens": 20, "system": "Be terse."})
    output = result["outputs"][0]
    assert result["model"]["name"] == "gpt-4o-mini" and "fallback_from" not in result["model"]
    assert output["text"] == "You said: Name a colour. (I saw 2 messages)"
    sent = fake_openai.calls("/chat/completions")
    assert len(sent) == 1
    assert sent[0]["body"]["messages"] == [{"role": "system", "content": "Be terse."},
                                           {"role": "user", "content": "Name a colour."}]
    assert sent[0]["body"]["max_tokens"] == 20 and sent[0]["body"]["temperature"] == 0.7
    assert "billing_key" not in sent[0]["body"]
    expected_cost = cost_usd("gpt-4o-mini", output["usage"]["prompt_tokens"], output["usage"]["completion_tokens"])
    assert output["usage"]["cost_usd"] == pytest.approx(expected_cost) and expected_cost > 0
    rows = usage_rows(own_key["key_id"])
    assert [(r["model"], r["kind"], r["cached"]) for r in rows] == [("gpt-4o-mini", "chat", False)]
    assert rows[0]["prompt_tokens"] == output["usage"]["prompt_tokens"]
    assert rows[0]["tenant"] == "default"  # the calling key's tenant, though the call ran off the task's thread
    assert rows[0]["cost_usd"] == pytest.approx(expected_cost)

    mine = caller.get("/api/v1/usage/openai").get_json()
    assert mine["scope"] == "own_key"
    assert [(i["key_id"], i["model"], i["calls"]) for i in mine["items"]] == [(own_key["key_id"], "gpt-4o-mini", 1)]
    assert mine["total_cost_usd"] == pytest.approx(expected_cost)


def test_deterministic_request_is_cached_and_costs_nothing(api, own_key, fake_openai):
    caller = api.as_key(own_key["key"])
    body = {"model": "gpt-4o-mini", "params": {"temperature": 0, "max_tokens": 16}}
    first = caller.predict("generate", ["What is the capital of France?"], **body)
    second = caller.predict("generate", ["What is the capital of France?"], **body)
    assert len(fake_openai.calls("/chat/completions")) == 1  # the second answer made no API call
    assert first["outputs"][0]["cached"] is False and second["outputs"][0]["cached"] is True
    assert second["outputs"][0]["text"] == first["outputs"][0]["text"]
    assert second["outputs"][0]["usage"]["cost_usd"] == 0.0
    assert second["outputs"][0]["usage"]["saved_usd"] == first["outputs"][0]["usage"]["cost_usd"]
    assert [r["cached"] for r in usage_rows(own_key["key_id"])] == [False, True]


def test_429_is_retried_honouring_retry_after(api, fake_openai):
    fake_openai.fail_next(429, count=2, retry_after=0.5)
    result = api.predict("generate", ["Count to three."], model="gpt-4o-mini", params={"temperature": 0.5})
    calls = fake_openai.calls("/chat/completions")
    assert [c["status"] for c in calls] == [429, 429, 200]
    assert calls[1]["at"] - calls[0]["at"] >= 0.45 and calls[2]["at"] - calls[1]["at"] >= 0.45
    assert result["model"]["name"] == "gpt-4o-mini"
    assert result["outputs"][0]["text"].startswith("You said: Count to three.")


def test_api_failure_falls_back_to_local_smollm2(api, fake_openai):
    fake_openai.fail_next(500, count=10)
    result = api.predict("generate", ["Say hello."], model="gpt-4o-mini",
                         params={"temperature": 0.5, "max_tokens": 8})
    assert result["model"]["name"] == "SmolLM2-135M-Instruct"
    assert result["model"]["fallback_from"] == "gpt-4o-mini"
    assert "500" in result["model"]["fallback_reason"]
    assert isinstance(result["outputs"][0]["text"], str) and "usage" not in result["outputs"][0]
    assert [c["status"] for c in fake_openai.calls("/chat/completions")] == [500] * 4  # 1 try + 3 retries


def test_embeddings_api(api, own_key, fake_openai):
    caller = api.as_key(own_key["key"])
    result = caller.predict("embed", ["first text", "second text"], model="text-embedding-3-small")
    vectors = result["outputs"]
    assert [len(v) for v in vectors] == [1536, 1536]
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-6)
    assert fake_openai.calls("/embeddings")[0]["body"]["input"] == ["first text", "second text"]
    assert [(r["model"], r["kind"]) for r in usage_rows(own_key["key_id"])] == [("text-embedding-3-small", "embed")]
    again = caller.predict("embed", ["first text"], model="text-embedding-3-small")
    assert again["cached"] is True and len(fake_openai.calls("/embeddings")) == 1


def test_not_configured_is_a_clear_503(api, monkeypatch, fake_openai):
    monkeypatch.delenv("CORTEX_OPENAI_API_KEY")
    reset_settings_cache()
    try:
        response = api.post("/api/v1/predict", {"task": "generate", "inputs": ["hi"], "model": "gpt-4o-mini"})
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "openai_not_configured"
        assert fake_openai.calls() == []
    finally:
        monkeypatch.undo()
        reset_settings_cache()


def test_monthly_budget_refuses_new_calls(api, monkeypatch, fake_openai):
    api.predict("generate", ["Spend a little."], model="gpt-4o-mini", params={"temperature": 0.3})
    monkeypatch.setenv("CORTEX_OPENAI_MONTHLY_BUDGET", "0.0000001")
    reset_settings_cache()
    try:
        response = api.post("/api/v1/predict", {"task": "generate", "inputs": ["more"], "model": "gpt-4o-mini"})
        assert response.status_code == 402
        assert response.get_json()["error"]["code"] == "budget_exceeded"
        assert len(fake_openai.calls("/chat/completions")) == 1
    finally:
        monkeypatch.undo()
        reset_settings_cache()


def test_usage_endpoint_scope(api, admin_api, keys):
    # A model_admin sees every key of its tenant; the platform admin every tenant (test_tenant_isolation.py).
    assert admin_api.get("/api/v1/usage/openai").get_json()["scope"] == "tenant"
    reader = api.as_key(keys["reader"]).get("/api/v1/usage/openai")
    assert reader.status_code == 200 and reader.get_json()["scope"] == "own_key"
    assert api.get("/api/v1/usage/openai?since=yesterday").status_code == 422
