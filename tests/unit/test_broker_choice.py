"""The broker setting: unset, Celery's broker is REDIS_URL's Redis with its transport options; an amqp://
CORTEX_BROKER_URL gets RabbitMQ's options, and priorities are sent in each broker's own order."""
from __future__ import annotations

import importlib

import pytest

import celeryconfig
from cortex_tasks import app
from cortex_tasks.core.broker import MAX_STEP, native_priority
from cortex_tasks.core.queues import PRIORITY_CLASSES, QUEUE_NAMES
from cortex_tasks.core.settings import reset_settings_cache


@pytest.fixture()
def config_with(monkeypatch):
    def load(**variables: str):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        reset_settings_cache()
        return importlib.reload(celeryconfig)

    yield load
    monkeypatch.undo()
    reset_settings_cache()
    importlib.reload(celeryconfig)


def test_unset_broker_is_the_redis_of_redis_url(config_with):
    config = config_with(REDIS_URL="redis://cache.example:6379/0", CORTEX_BROKER_URL="")
    assert config.broker_url == config.result_backend == "redis://cache.example:6379/0"
    assert config.broker_transport_options["queue_order_strategy"] == "priority"


def test_rabbitmq_broker_is_apart_from_redis_and_confirms_publishes(config_with):
    config = config_with(REDIS_URL="redis://cache.example:6379/0", CORTEX_BROKER_URL="amqp://u:p@rabbit:5672/cortex")
    assert config.broker_url == "amqp://u:p@rabbit:5672/cortex"
    assert config.result_backend == "redis://cache.example:6379/0"
    assert config.broker_transport_options == {"confirm_publish": True}
    # The same delivery guarantees whatever the broker.
    assert (config.task_acks_late, config.task_reject_on_worker_lost, config.worker_prefetch_multiplier) == (
        True, True, 1)


def test_every_queue_is_declared_with_x_max_priority():
    queues = app.amqp.queues
    assert all(queues[name].queue_arguments == {"x-max-priority": MAX_STEP} for name in QUEUE_NAMES)
    # A queue named only at send time (a test's private queue) is made with it too.
    try:
        assert queues["a-queue-made-on-demand"].queue_arguments == {"x-max-priority": MAX_STEP}
    finally:
        queues.pop("a-queue-made-on-demand", None)


def test_priorities_in_each_brokers_order():
    high, normal, low = (PRIORITY_CLASSES[c] for c in ("high", "normal", "low"))
    assert [native_priority(p, "redis", normal) for p in (high, normal, low)] == [high, normal, low]
    amqp = [native_priority(p, "amqp", normal) for p in (high, normal, low)]
    assert amqp == sorted(amqp, reverse=True) and amqp[0] == MAX_STEP  # RabbitMQ serves the highest first
    assert native_priority(None, "amqp", normal) == MAX_STEP - normal
    assert native_priority(42, "amqp", normal) == 0  # out of range: clamped, never refused by the broker
