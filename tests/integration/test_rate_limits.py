"""Rate limiting through the HTTP API with real Redis: token buckets per key and per (key, model), the
429 with its headers, refill, reads never limited, the unlimited tier, the in-flight bound, and the batch
CLI waiting out a 429. Keys here are of the `default` tier (60/min, burst 10; per model 30/min, burst 5)."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from cortex_tasks.cli import main
from cortex_tasks.core.auth.keys import create_key
from cortex_tasks.core.settings import RateTier
from cortex_web.limits import ConcurrencyGate, RateLimiter
from cortex_web.metrics import RATE_LIMITED

EMBED_MODEL = "all-MiniLM-L6-v2"


def limited_api(api, tier: str = "default"):
    return api.as_key(create_key("inference_user", name=f"limits {uuid.uuid4().hex[:6]}", tier=tier).key)


def rejected_predict(api, model: str = EMBED_MODEL):
    """A /predict the limiter counts but the view refuses (an empty text): no worker needed."""
    return api.post("/api/v1/predict", {"task": "embed", "model": model, "inputs": [""]})


def test_burst_then_429_with_headers_then_refill(api):
    caller = limited_api(api)
    remaining = []
    for _ in range(5):  # the per-model burst
        response = rejected_predict(caller)
        assert response.status_code == 422, response.get_json()
        assert response.headers["X-RateLimit-Limit"] == "5"
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    before = RATE_LIMITED.labels("default")._value.get()

    refused = rejected_predict(caller)
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert error["code"] == "rate_limited" and error["details"]["tier"] == "default"
    assert refused.headers["Retry-After"] == "2"  # one token at 30/min
    assert refused.headers["X-RateLimit-Limit"] == "5" and refused.headers["X-RateLimit-Remaining"] == "0"
    assert 8 <= int(refused.headers["X-RateLimit-Reset"]) <= 10  # five tokens at 0.5/s
    assert RATE_LIMITED.labels("default")._value.get() == before + 1

    time.sleep(int(refused.headers["Retry-After"]))
    assert rejected_predict(caller).status_code == 422  # refilled: through to the view again


@pytest.fixture()
def slow_refill(app, monkeypatch):
    """The default tier's bursts with a refill too slow to matter during a test (1 and 0.5 a minute), so
    that counting is exact however slow the machine is."""
    limiter = RateLimiter(app.extensions["cortex_redis"], {"default": RateTier(1, 10, 0.5, 5)})
    monkeypatch.setitem(app.extensions, "cortex_rate_limiter", limiter)


def test_models_have_separate_buckets_within_the_keys_budget(api, slow_refill):
    caller = limited_api(api)
    for _ in range(5):
        assert rejected_predict(caller).status_code == 422
    assert rejected_predict(caller).status_code == 429
    # Another model of the same key still has its own burst (the key's bucket has 5 of 10 left).
    for _ in range(4):
        assert rejected_predict(caller, model="vader").status_code == 404  # not an embedding model
    # The key's own bucket caps every model together, and calls without a model too.
    response = caller.post("/api/v1/vectors/no-such-collection/search", {"text": "x", "k": 1})
    assert response.status_code != 429 and response.headers["X-RateLimit-Remaining"] == "0"
    assert caller.post("/api/v1/vectors/no-such-collection/search", {"text": "x", "k": 1}).status_code == 429
    assert rejected_predict(caller, model="another-model").status_code == 429


def test_other_keys_and_reads_are_not_limited(api):
    caller = limited_api(api)
    for _ in range(5):
        rejected_predict(caller)
    assert rejected_predict(caller).status_code == 429
    assert rejected_predict(limited_api(api)).status_code == 422  # another key: its own buckets
    for _ in range(30):  # reads that clients poll
        for path in (f"/api/v1/jobs/{uuid.uuid4()}", f"/api/v1/batch/progress/{uuid.uuid4()}"):
            response = caller.get(path)
            assert response.status_code == 404 and "X-RateLimit-Limit" not in response.headers
    assert caller.get("/api/v1/models").status_code == 200


def test_unlimited_tier_and_premium_tier(api):
    unlimited = limited_api(api, tier="unlimited")
    for _ in range(40):
        response = rejected_predict(unlimited)
        assert response.status_code == 422 and "X-RateLimit-Limit" not in response.headers
    premium = limited_api(api, tier="premium")
    response = rejected_predict(premium)
    assert response.headers["X-RateLimit-Limit"] == "25" and response.headers["X-RateLimit-Remaining"] == "24"


def test_unknown_tier_is_refused_by_the_keys_api_and_the_cli(admin_api):
    response = admin_api.post("/api/v1/keys", {"role": "reader", "tier": "platinum"})
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "unknown_tier"
    created = admin_api.post("/api/v1/keys", {"role": "reader", "tier": "premium"})
    assert created.status_code == 201 and created.get_json()["tier"] == "premium"
    result = CliRunner().invoke(main, ["keys", "create", "--role", "reader", "--tier", "platinum"])
    assert result.exit_code != 0 and "is not a rate-limit tier" in result.output and "premium" in result.output
    result = CliRunner().invoke(main, ["keys", "create", "--role", "reader", "--tier", "premium"])
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1].startswith("ctx_")


def test_a_real_prediction_carries_the_headers(api, workers):
    caller = limited_api(api)
    response = caller.post("/api/v1/predict", {"task": "embed", "inputs": ["limits on a real job"], "wait": 30})
    assert response.status_code in (200, 202), response.get_json()
    assert response.headers["X-RateLimit-Remaining"] == "4"


def test_too_many_requests_in_flight_is_503(app, api, monkeypatch):
    gate = ConcurrencyGate(1, 0)
    monkeypatch.setitem(app.extensions, "cortex_concurrency", gate)
    assert gate.enter()  # another request holds the only slot
    response = rejected_predict(api)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "overloaded" and response.headers["Retry-After"] == "1"
    gate.leave()
    assert rejected_predict(api).status_code == 422
    assert gate.enter()  # the request gave its slot back, even though it failed
    gate.leave()


def test_batch_cli_waits_out_a_429(tmp_path, app, api, workers):
    caller_key = create_key("inference_user", name="cli limits", tier="default").key
    caller = api.as_key(caller_key)
    for _ in range(5):  # the key's bucket for the embedding model is empty now
        rejected_predict(caller)
    assert rejected_predict(caller).status_code == 429
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    source = tmp_path / "few.jsonl"
    source.write_text("\n".join(json.dumps(f"retry after {i}") for i in range(3)) + "\n")
    try:
        started = time.monotonic()
        result = CliRunner().invoke(main, ["batch", "submit", str(source), "--task", "embed", "--model", EMBED_MODEL,
                                           "--url", f"http://127.0.0.1:{server.server_port}", "--key", caller_key])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert "3 succeeded, 0 failed" in result.output
    assert time.monotonic() - started >= 1  # it waited for a token instead of failing


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_public_endpoints_are_not_limited(app, path):
    client = app.test_client()
    for _ in range(20):
        response = client.get(path)
        assert response.status_code == 200 and "X-RateLimit-Limit" not in response.headers
