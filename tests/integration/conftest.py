"""Integration fixtures: real workers (one per profile kind), the real Flask app, keys per role."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortex_tasks.stack.embedded import free_port
from tests.support.fake_openai import FakeOpenAI
from tests.support.processes import WorkerProcess
from workers import PROFILES

ZERO_SHOT_MODEL = "minilm-zero-shot"
ZERO_SHOT_BATCHING = {"max_batch_size": 3, "max_wait_ms": 7}


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    """A local OpenAI-compatible server (the only test double: OpenAI is an external paid API). Its URL
    and a key are in the environment before any worker starts, so workers and the gateway both use it."""
    from cortex_tasks.core.settings import reset_settings_cache

    server = FakeOpenAI().start()
    os.environ["CORTEX_OPENAI_API_KEY"] = "sk-test-fake"
    os.environ["CORTEX_OPENAI_BASE_URL"] = server.base_url
    # Models of "another" OpenAI-compatible server (the same fake): names OpenAI does not have.
    os.environ["CORTEX_OPENAI_EXTRA_MODELS"] = json.dumps({"local-llama-3": "generate", "local-whisper": "transcribe"})
    reset_settings_cache()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def workers(fake_openai: FakeOpenAI) -> Iterator[dict[str, WorkerProcess]]:
    """A gpu-profile worker (threads) and a prefork worker for every other queue, like `cortex up`."""
    # As workers/gpu.py, with one model batched its own way (test_gpu_tasks.py checks that it is).
    # Each exports its metrics on a free port (test_prometheus.py scrapes them), the prefork one through
    # prometheus_client's multiprocess files, as `cortex worker` starts them.
    gpu = WorkerProcess("gpu,batch", pool="threads", concurrency=8, name="gpu", env={
        "CORTEX_BATCHING_PER_MODEL": json.dumps({ZERO_SHOT_MODEL: ZERO_SHOT_BATCHING}),
        "CORTEX_WORKER_METRICS_PORT": str(free_port()), "CORTEX_WORKER_METRICS_ADDRESS": "127.0.0.1"})
    metrics_dir = Path(os.environ["CORTEX_DATA_DIR"]) / "cpu-worker-metrics"
    other = WorkerProcess("nlp,training,batch,maintenance", pool="prefork", concurrency=2, name="cpu", env={
        **PROFILES["nlp"].metrics_environment({"CORTEX_WORKER_METRICS_PORT": str(free_port())}, metrics_dir),
        "CORTEX_WORKER_METRICS_ADDRESS": "127.0.0.1"})
    gpu.start(wait_ready=False)
    other.start(wait_ready=False)
    try:
        gpu.wait_ready()
        other.wait_ready()
        yield {"gpu": gpu, "cpu": other}
    finally:
        gpu.stop()
        other.stop()


@pytest.fixture(scope="session")
def app():
    from cortex_web import create_app

    flask_app = create_app()
    flask_app.testing = True
    yield flask_app
    # Write the audit log's last events while the session's database still runs (atexit is too late).
    flask_app.extensions["cortex_audit"].flush()


@pytest.fixture()
def in_default_tenant() -> Iterator[None]:
    """For tests that read or write rows themselves (store.get_job, session_scope): they act for the
    default tenant, whose keys the `keys` fixture makes. The storage layer refuses statements on
    tenant-owned tables with no tenant in scope (cortex_tasks/core/tenancy.py)."""
    from cortex_tasks.core.tenancy import tenant_scope

    with tenant_scope("default"):
        yield


@pytest.fixture(scope="session")
def keys() -> dict[str, str]:
    from cortex_tasks.core.auth.keys import create_key

    # Unlimited: the suite sends many requests per key; tests/integration/test_rate_limits.py uses limited keys.
    return {role: create_key(role, name=f"test {role}", tier="unlimited").key
            for role in ("reader", "inference_user", "model_admin", "platform_admin")}


class Api:
    """The Flask test client with a key: `api.post("/api/v1/predict", {...})`."""

    def __init__(self, client, key: str | None) -> None:
        self.client, self.key = client, key

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return {**headers, **(extra or {})}

    def get(self, path: str, **kwargs: Any):
        return self.client.get(path, headers=self.headers(kwargs.pop("headers", None)), **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any):
        return self.client.post(path, json=body, headers=self.headers(kwargs.pop("headers", None)), **kwargs)

    def delete(self, path: str, **kwargs: Any):
        return self.client.delete(path, headers=self.headers(kwargs.pop("headers", None)), **kwargs)

    def as_key(self, key: str | None) -> Api:
        return Api(self.client, key)

    def predict(self, task: str, inputs: list[Any], poll_seconds: float = 300, **extra: Any) -> dict[str, Any]:
        """POST /predict and return the result, polling the job if it was not ready within the wait (a
        fresh worker process loads its model on first use, slowly on a busy machine)."""
        response = self.post("/api/v1/predict", {"task": task, "inputs": inputs, "wait": 30, **extra})
        if response.status_code == 202:
            status_url = response.get_json()["status_url"]
            deadline = time.monotonic() + poll_seconds
            while time.monotonic() < deadline:
                job = self.get(status_url).get_json()
                if job["status"] in ("succeeded", "failed"):
                    assert job["status"] == "succeeded", job
                    return job["result"]
                time.sleep(0.5)
            pytest.fail(f"{task} job not finished after {poll_seconds}s")
        assert response.status_code == 200, response.get_json()
        return response.get_json()


@pytest.fixture()
def api(app, keys) -> Api:
    return Api(app.test_client(), keys["inference_user"])


@pytest.fixture()
def admin_api(app, keys) -> Api:
    return Api(app.test_client(), keys["model_admin"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tails of the session workers' logs: CI keeps nothing else."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "workers" in getattr(item, "funcargs", {}):
        for name, worker in item.funcargs["workers"].items():
            report.sections.append((f"worker {name} log (tail)", worker.log_tail(40)))


# The broker the delivery and priority tests run against (tests/support/brokers.py): each such test runs
# once with the session's Redis and once with RabbitMQ, in a virtual host of the session's own.
@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    from tests.support.brokers import rabbitmq_missing, rabbitmq_vhost

    if (missing := rabbitmq_missing()) is not None:
        pytest.skip(missing)
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest):
    from tests.support.brokers import Broker

    if request.param == "redis":
        return Broker("redis")
    url = request.getfixturevalue("rabbitmq_url")
    return Broker("rabbitmq", url, {"CORTEX_BROKER_URL": url})
