"""What `cortex flower` (and `cortex up`'s Flower) is told about the broker: with RabbitMQ, the management API
it reads queue lengths from, derived from CORTEX_BROKER_URL or CORTEX_FLOWER_BROKER_API; with Redis, nothing
(Flower reads the lists itself)."""
from __future__ import annotations

import pytest

from cortex_tasks.core.settings import reset_settings_cache
from cortex_tasks.stack.flower import broker_api, flower_environment


@pytest.mark.parametrize("url, api", [
    ("amqp://cortex:secret@rabbit.example:5672/cortex", "http://rabbit.example:15672/api/"),
    ("pyamqp://cortex:secret@rabbit.example/cortex", "http://rabbit.example:15672/api/"),
    ("amqps://cortex:secret@rabbit.example:5671/cortex", "https://rabbit.example:15671/api/"),
    ("amqp://cortex:secret@[::1]:5672/cortex", "http://[::1]:15672/api/"),
    ("amqp://", "http://localhost:15672/api/"),
])
def test_derived_from_a_rabbitmq_broker_url_without_its_password(url: str, api: str) -> None:
    assert broker_api(url) == api  # Flower signs in as the broker URL's user


@pytest.mark.parametrize("url", ["redis://cache.example:6379/0", "rediss://cache.example:6380/0",
                                 "sentinel://sentinel.example:26379"])
def test_none_for_redis(url: str) -> None:
    assert broker_api(url) is None
    assert broker_api(url, "http://rabbit.example:15672/api/") is None  # Flower would ignore it


def test_the_setting_wins() -> None:
    url = "amqp://cortex:secret@rabbit.example:5672/cortex"
    assert broker_api(url, "https://monitor:pw@mgmt.example:443/rabbit/api/") == \
        "https://monitor:pw@mgmt.example:443/rabbit/api/"
    # Flower joins `queues/<vhost>` to it: without the slash it would drop `api`.
    assert broker_api(url, "http://mgmt.example:15672/api") == "http://mgmt.example:15672/api/"
    with pytest.raises(ValueError, match="CORTEX_FLOWER_BROKER_API"):
        broker_api(url, "amqp://mgmt.example:15672/api/")


@pytest.fixture()
def environment(monkeypatch):
    def with_variables(**variables: str):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_settings_cache()
        return flower_environment("pw")

    yield with_variables
    monkeypatch.undo()
    reset_settings_cache()


def test_flower_environment_names_the_api_for_rabbitmq_only(environment) -> None:
    assert environment(CORTEX_BROKER_URL="") == {"FLOWER_BASIC_AUTH": "admin:pw"}
    assert environment(CORTEX_BROKER_URL="amqp://u:p@rabbit.example:5672/cortex") == {
        "FLOWER_BASIC_AUTH": "admin:pw", "FLOWER_BROKER_API": "http://rabbit.example:15672/api/"}
    assert environment(CORTEX_FLOWER_BROKER_API="http://monitor:pw@mgmt.example:15672/api/")[
        "FLOWER_BROKER_API"] == "http://monitor:pw@mgmt.example:15672/api/"
