"""Speech and images through OpenAI (transcribe with whisper-1, image_generate with gpt-image-1 and dall-e-3)
against the local OpenAI-compatible test server, and models of "another" OpenAI-compatible server named by
CORTEX_OPENAI_EXTRA_MODELS (the same test server: what vLLM, llama.cpp or Ollama would be). Everything else
is real: gateway, Redis, PostgreSQL, the object store, a gpu worker."""
from __future__ import annotations

import base64
import hashlib
import io
import math
import time
import uuid
import wave

import pytest
import redis
from sqlalchemy import text

from cortex_tasks.core.openai.config import image_cost_usd, transcription_cost_usd
from cortex_tasks.core.openai.rate_limit import KEY_PREFIX, WINDOW_SECONDS
from cortex_tasks.core.settings import get_settings, reset_settings_cache
from cortex_tasks.core.storage.db import session_scope
from tests.integration.conftest import Api
from tests.support.tenants import new_tenant, tenant_keys
from tests.support.waiting import finished

pytestmark = pytest.mark.usefixtures("workers", "in_default_tenant")
POLL_SECONDS = 120


def usage_rows(owner: str) -> list[dict]:
    with session_scope() as session:
        return [dict(row) for row in session.execute(text(
            "SELECT model, kind, cost_usd, cached, tenant FROM openai_usage WHERE owner = :owner ORDER BY id"),
            {"owner": owner}).mappings()]


def recording(seconds: float, frequency: int = 440) -> bytes:
    """A mono 16-bit 8 kHz WAV of a sine tone."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        frames = int(seconds * 8000)
        wav.writeframes(b"".join(int(8000 * math.sin(2 * math.pi * frequency * i / 8000)).to_bytes(2, "little", signed=True)
                                 for i in range(frames)))
    return out.getvalue()


@pytest.fixture()
def own_key(admin_api):
    """A fresh inference_user key per test, so its usage rows are its own."""
    return admin_api.post("/api/v1/keys", {"role": "inference_user", "name": "media test"}).get_json()


@pytest.fixture(autouse=True)
def clean_fake(fake_openai):
    fake_openai.reset()
    yield
    fake_openai.reset()


def run(api, body: dict) -> dict:
    return finished(api, api.post("/api/v1/predict", {"wait": 30, **body}), POLL_SECONDS)


# --- transcribe -----------------------------------------------------------------------------------------------

def test_transcribe_an_uploaded_recording(api, own_key, fake_openai):
    caller = api.as_key(own_key["key"])
    audio = recording(7.0, frequency=300 + uuid.uuid4().int % 400)
    response = caller.client.post("/api/v1/predict", headers=caller.headers(), content_type="multipart/form-data",
                                  data={"task": "transcribe", "wait": "30", "params": '{"language": "en"}',
                                        "inputs": (io.BytesIO(audio), "meeting notes.wav")})
    result = finished(caller, response, POLL_SECONDS)
    assert result["model"] == {"name": "whisper-1", "version": "1"}
    output = result["outputs"][0]
    digest = hashlib.sha256(audio).hexdigest()[:8]
    assert output["text"] == f"Transcript of meeting notes.wav ({digest}), 7 seconds."
    assert output["language"] == "english" and output["duration"] == pytest.approx(7.0)
    assert [(s["id"], s["start"], s["end"]) for s in output["segments"]] == [(0, 0.0, 5.0), (1, 5.0, 7.0)]
    assert all(s["text"].strip() for s in output["segments"])
    expected = transcription_cost_usd("whisper-1", 7.0)
    assert expected == pytest.approx(7 / 60 * 0.006)
    assert output["usage"] == {"audio_seconds": 7.0, "cost_usd": pytest.approx(expected)}
    sent = fake_openai.calls("/audio/transcriptions")
    assert len(sent) == 1
    assert sent[0]["body"]["model"] == "whisper-1" and sent[0]["body"]["response_format"] == "verbose_json"
    assert sent[0]["body"]["language"] == "en" and sent[0]["body"]["file"]["data"] == audio
    rows = usage_rows(own_key["key_id"])
    assert [(r["model"], r["kind"], r["cached"], r["tenant"]) for r in rows] == [("whisper-1", "transcribe", False,
                                                                                   "default")]
    assert rows[0]["cost_usd"] == pytest.approx(expected)

    # The same recording again (as base64 this time) is answered from the cache: no call, nothing billed.
    again = run(caller, {"task": "transcribe", "params": {"language": "en"},
                         "inputs": [{"audio": base64.b64encode(audio).decode(), "filename": "copy.wav"}]})
    assert again["outputs"][0]["cached"] is True and again["outputs"][0]["text"] == output["text"]
    assert again["outputs"][0]["usage"]["cost_usd"] == 0.0
    assert again["outputs"][0]["usage"]["saved_usd"] == pytest.approx(expected)
    assert len(fake_openai.calls("/audio/transcriptions")) == 1
    assert [r["cached"] for r in usage_rows(own_key["key_id"])] == [False, True]


def test_bad_recordings_and_params_are_refused_before_any_call(api, fake_openai):
    good = {"audio": base64.b64encode(recording(0.5)).decode()}
    cases = [
        ({"task": "transcribe", "inputs": [good, {"audio": base64.b64encode(b"just some text").decode()}]},
         "invalid_audio", "inputs[1]"),
        ({"task": "transcribe", "inputs": [good, {"audio": "%%%"}]}, "invalid_audio", "inputs[1]"),
        ({"task": "transcribe", "inputs": ["a text"]}, "invalid_audio", "inputs[0]"),
        ({"task": "transcribe", "inputs": [good], "params": {"language": "english"}}, "invalid_params", "language"),
        ({"task": "image_generate", "inputs": ["a cat"], "model": "dall-e-3", "params": {"n": 2}},
         "invalid_params", "params.n"),
        ({"task": "image_generate", "inputs": ["a cat"], "params": {"size": "999x999"}}, "invalid_params", "size"),
        ({"task": "image_generate", "inputs": ["  "]}, "invalid_input", "inputs[0]"),
    ]
    for body, code, words in cases:
        response = api.post("/api/v1/predict", body)
        assert response.status_code == 422, (body, response.get_json())
        error = response.get_json()["error"]
        assert error["code"] == code and words in error["message"], (body, error)
    assert fake_openai.calls() == []


# --- image_generate ----------------------------------------------------------------------------------------------

def test_generated_images_are_stored_and_readable_by_their_tenant_only(app, api, own_key, fake_openai):
    caller = api.as_key(own_key["key"])
    prompt = f"a lighthouse at dusk {uuid.uuid4().hex[:6]}"
    result = run(caller, {"task": "image_generate", "inputs": [prompt], "params": {"n": 2}})
    assert result["model"] == {"name": "gpt-image-1", "version": "1"}
    output = result["outputs"][0]
    assert output["size"] == "1024x1024" and output["quality"] == "medium" and output["cached"] is False
    assert len(output["images"]) == 2
    expected = image_cost_usd("gpt-image-1", "medium", "1024x1024", 2)
    assert expected == pytest.approx(2 * 0.042)
    assert output["usage"] == {"images": 2, "cost_usd": pytest.approx(expected)}
    sent = fake_openai.calls("/images/generations")
    assert len(sent) == 1 and sent[0]["body"]["prompt"] == prompt and sent[0]["body"]["n"] == 2
    assert "response_format" not in sent[0]["body"]  # gpt-image-1 refuses it
    for image in output["images"]:
        fetched = caller.get(image["url"])
        assert fetched.status_code == 200 and fetched.mimetype == "image/png"
        assert hashlib.sha256(fetched.data).hexdigest() == image["id"]
        assert image["width"] == image["height"] == 32  # what the test server draws
    # Another tenant's keys, even its admin's, cannot read them: 404, as for an image that never existed.
    stranger = Api(app.test_client(), tenant_keys(new_tenant("media"))["model_admin"])
    refused = stranger.get(output["images"][0]["url"])
    assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "image_not_found"
    assert caller.get("/api/v1/generated/" + "0" * 64).status_code == 404
    assert caller.get("/api/v1/generated/not-an-id").status_code == 404
    rows = usage_rows(own_key["key_id"])
    assert [(r["model"], r["kind"], r["cached"]) for r in rows] == [("gpt-image-1", "image", False)]
    assert rows[0]["cost_usd"] == pytest.approx(expected)

    # The same request again: the same stored images, free, no API call.
    again = run(caller, {"task": "image_generate", "inputs": [prompt], "params": {"n": 2}})
    assert again["outputs"][0]["cached"] is True and again["outputs"][0]["images"] == output["images"]
    assert again["outputs"][0]["usage"]["cost_usd"] == 0.0
    assert len(fake_openai.calls("/images/generations")) == 1


def test_dall_e_3_is_priced_by_quality_and_size(api, own_key, fake_openai):
    caller = api.as_key(own_key["key"])
    result = run(caller, {"task": "image_generate", "model": "dall-e-3", "inputs": [f"a red fox {uuid.uuid4().hex}"],
                          "params": {"quality": "hd", "size": "1792x1024", "style": "natural"}})
    output = result["outputs"][0]
    assert output["images"][0]["revised_prompt"].startswith("A picture of a red fox")
    assert output["usage"]["cost_usd"] == pytest.approx(0.12)
    body = fake_openai.calls("/images/generations")[0]["body"]
    assert body["response_format"] == "b64_json" and body["style"] == "natural" and body["quality"] == "hd"


def test_429_from_the_images_api_is_retried(api, fake_openai):
    fake_openai.fail_next(429, count=1, retry_after=0.3)
    result = run(api, {"task": "image_generate", "inputs": [f"a boat {uuid.uuid4().hex}"]})
    assert len(result["outputs"][0]["images"]) == 1
    assert [c["status"] for c in fake_openai.calls("/images/generations")] == [429, 200]


def test_the_shared_rate_limit_applies_to_speech(api, fake_openai):
    """The outbound limit every worker shares (Redis): with this minute's (and the next one's) requests
    used up, a transcription is refused with 429 instead of calling the API."""
    client = redis.Redis.from_url(get_settings().redis_url)
    window = int(time.time() // WINDOW_SECONDS)
    keys = [f"{KEY_PREFIX}{w}:requests" for w in (window, window + 1)]
    for key in keys:
        client.set(key, 10**6, ex=180)
    try:
        response = api.post("/api/v1/predict", {"task": "transcribe", "wait": 30,
                                                "inputs": [{"audio": base64.b64encode(recording(0.3, 500)).decode()}]})
        assert response.status_code == 429, response.get_json()
        assert response.get_json()["error"]["code"] == "rate_limited"
        assert fake_openai.calls("/audio/transcriptions") == []
    finally:
        client.delete(*keys)


def test_budget_refuses_image_generation(api, monkeypatch, fake_openai):
    run(api, {"task": "transcribe", "inputs": [{"audio": base64.b64encode(recording(0.4, 611)).decode()}]})
    monkeypatch.setenv("CORTEX_OPENAI_MONTHLY_BUDGET", "0.0000001")  # below what was just spent
    reset_settings_cache()
    try:
        response = api.post("/api/v1/predict", {"task": "image_generate", "inputs": ["a tree"]})
        assert response.status_code == 402 and response.get_json()["error"]["code"] == "budget_exceeded"
        assert fake_openai.calls("/images/generations") == []
    finally:
        monkeypatch.undo()
        reset_settings_cache()


# --- any OpenAI-compatible server ------------------------------------------------------------------------------

def test_models_of_another_openai_compatible_server(api, own_key, fake_openai):
    """CORTEX_OPENAI_BASE_URL points at the server, CORTEX_OPENAI_EXTRA_MODELS names its models (here
    local-llama-3 for generate and local-whisper for transcribe, see tests/integration/conftest.py)."""
    caller = api.as_key(own_key["key"])
    result = caller.predict("generate", ["Hello there."], model="local-llama-3", params={"temperature": 0.4})
    assert result["model"]["name"] == "local-llama-3" and "fallback_from" not in result["model"]
    assert result["outputs"][0]["text"] == "You said: Hello there. (I saw 1 messages)"
    assert fake_openai.calls("/chat/completions")[0]["body"]["model"] == "local-llama-3"
    heard = run(caller, {"task": "transcribe", "model": "local-whisper",
                         "inputs": [{"audio": base64.b64encode(recording(1.0, 700)).decode()}]})
    assert heard["outputs"][0]["text"].startswith("Transcript of audio.wav")
    assert fake_openai.calls("/audio/transcriptions")[0]["body"]["model"] == "local-whisper"
    assert [(r["model"], r["cost_usd"]) for r in usage_rows(own_key["key_id"])] == [
        ("local-llama-3", 0.0), ("local-whisper", 0.0)]  # no price configured for them
    listed = api.post("/api/v1/predict", {"task": "generate", "inputs": ["x"], "model": "no-such-model"})
    assert listed.status_code == 404 and "local-llama-3" in listed.get_json()["error"]["details"]["valid"]
