"""A publish that fails names the broker that failed: Redis when Redis carries Celery's messages (REDIS_URL's
or a Redis of CORTEX_BROKER_URL), `broker` when CORTEX_BROKER_URL is RabbitMQ, in the 503's JSON error too."""
from __future__ import annotations

import kombu.exceptions
import pytest
import redis
from flask import Flask

from cortex_tasks.core.dependencies import BROKER, REDIS, DependencyUnavailable, failed_dependency
from cortex_tasks.core.settings import reset_settings_cache
from cortex_web.errors import register_error_handlers


@pytest.fixture()
def broker_url(monkeypatch):
    def use(url: str) -> None:
        monkeypatch.setenv("CORTEX_BROKER_URL", url)
        reset_settings_cache()

    yield use
    monkeypatch.undo()
    reset_settings_cache()


REFUSED = kombu.exceptions.OperationalError("[Errno 111] Connection refused")


@pytest.mark.parametrize("url, dependency", [
    ("", REDIS),  # unset: REDIS_URL's Redis
    ("redis://broker.example:6379/3", REDIS),
    ("sentinel://sentinel.example:26379", REDIS),
    ("amqp://u:p@rabbit.example:5672/cortex", BROKER),
    ("amqps://u:p@rabbit.example:5671/cortex", BROKER),
    ("pyamqp://u:p@rabbit.example/cortex", BROKER),
])
def test_a_failed_publish_names_the_broker_it_went_to(broker_url, url: str, dependency: str) -> None:
    broker_url(url)
    assert failed_dependency(REFUSED) == dependency


def test_redis_errors_name_redis_whatever_the_broker(broker_url) -> None:
    # Cache, limits, readiness and replies stay on REDIS_URL's Redis with a RabbitMQ broker.
    broker_url("amqp://u:p@rabbit.example:5672/cortex")
    assert failed_dependency(redis.ConnectionError("refused")) == REDIS
    assert failed_dependency(ValueError("x")) is None


def test_the_503_names_rabbitmq(broker_url) -> None:
    broker_url("amqp://u:p@rabbit.example:5672/cortex")
    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/publish")
    def publish():
        raise REFUSED

    answer = app.test_client().get("/publish")
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    error = answer.get_json()["error"]
    assert error["code"] == "dependency_unavailable"
    assert error["details"] == {"dependency": "broker"}
    assert "RabbitMQ" in error["message"] and "Redis" not in error["message"]
    assert DependencyUnavailable(BROKER).message == error["message"]


def test_the_503_of_a_redis_broker_names_redis(broker_url) -> None:
    broker_url("")
    app = Flask(__name__)
    register_error_handlers(app)

    @app.get("/publish")
    def publish():
        raise REFUSED

    error = app.test_client().get("/publish").get_json()["error"]
    assert (error["code"], error["details"]) == ("dependency_unavailable", {"dependency": "redis"})
