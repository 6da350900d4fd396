"""RabbitMQ as the broker (CORTEX_BROKER_URL), beside what the delivery, priority and many-hosts tests run
on it: queues are declared with x-max-priority, Cortex's priorities arrive in RabbitMQ's order, the
gateway reads queue depth with passive declares, and what cannot work on AMQP is off."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import amqp.exceptions
import pytest
from kombu import Connection

from cortex_tasks.core.broker import MAX_STEP, amqp_depths
from cortex_tasks.core.queues import PRIORITY_CLASSES, QUEUE_NAMES
from cortex_tasks.core.settings import reset_settings_cache
from tests.support.brokers import Broker, rabbitmq_vhost
from tests.support.fault_stack import Answer, FaultStack
from tests.support.tcp_relay import TcpRelay


@pytest.fixture()
def rabbitmq(rabbitmq_url: str, monkeypatch) -> Broker:
    monkeypatch.setenv("CORTEX_BROKER_URL", rabbitmq_url)
    reset_settings_cache()
    return Broker("rabbitmq", rabbitmq_url, {"CORTEX_BROKER_URL": rabbitmq_url})


def _drain(url: str, queue: str, count: int) -> list:
    with Connection(url) as connection:
        channel = connection.channel()
        messages = [channel.basic_get(queue, no_ack=True) for _ in range(count)]
        channel.close()
    return messages


def test_queues_are_priority_queues_and_priorities_arrive_in_rabbitmqs_order(rabbitmq):
    queue = f"rabbit-{uuid.uuid4().hex[:6]}"
    for priority_class in ("low", "high", "normal"):
        rabbitmq.send_task("cortex.testing.never_run", queue=queue, priority=PRIORITY_CLASSES[priority_class],
                           kwargs={"class": priority_class})
    with Connection(rabbitmq.url) as connection:
        channel = connection.channel()
        # Declaring it again with the same arguments is accepted; with others RabbitMQ refuses (406).
        channel.queue_declare(queue, durable=True, auto_delete=False, arguments={"x-max-priority": MAX_STEP})
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            connection.channel().queue_declare(queue, durable=True, auto_delete=False, arguments={})
        channel.close()
    messages = _drain(rabbitmq.url, queue, 3)
    # Sent low, high, normal: a priority queue hands them out high, normal, low.
    assert [message.properties["priority"] for message in messages] == [
        MAX_STEP - PRIORITY_CLASSES[c] for c in ("high", "normal", "low")]


def test_gateway_reads_queue_depth_by_passive_declare(rabbitmq):
    from cortex_web.dispatch import queue_depths

    queue = QUEUE_NAMES[0]
    before = queue_depths(None)
    assert set(before) == set(QUEUE_NAMES)
    for _ in range(3):
        rabbitmq.send_task("cortex.testing.never_run", queue=queue)
    assert queue_depths(None)[queue] == before[queue] + 3
    assert amqp_depths(rabbitmq.url).depth(f"never-declared-{uuid.uuid4().hex[:6]}") == 0
    _drain(rabbitmq.url, queue, 3)


def test_an_unreachable_broker_is_a_503_not_a_500(monkeypatch):
    from cortex_web.dispatch import queue_depths
    from cortex_web.errors import ApiError

    monkeypatch.setenv("CORTEX_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/nowhere")
    reset_settings_cache()
    with pytest.raises(ApiError) as refused:
        queue_depths(None)
    assert (refused.value.status, refused.value.code) == (503, "broker_unavailable")


def test_shedding_reads_depth_and_no_age_and_aging_is_off(rabbitmq):
    from cortex_tasks.core.load_control.aging import start_aging_in_beat
    from cortex_tasks.core.load_control.shedding import LoadShedder, SheddingPolicy

    queue = f"shed-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        rabbitmq.send_task("cortex.testing.never_run", queue=queue)
    load = LoadShedder(None, SheddingPolicy(refresh_seconds=0)).load(queue)  # type: ignore[arg-type]
    assert (load.depth, load.oldest_age) == (2, 0.0)
    aging_threads = lambda: sum(thread.name == "priority-aging" for thread in threading.enumerate())
    before = aging_threads()
    start_aging_in_beat()
    assert aging_threads() == before  # Beat starts no aging thread when the broker is not Redis
    _drain(rabbitmq.url, queue, 2)


def test_ready_checks_a_broker_apart_from_redis(app, keys, rabbitmq, monkeypatch):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {keys['reader']}"}
    assert client.get("/ready", headers=headers).get_json()["checks"]["broker"] == {"ok": True}
    monkeypatch.setenv("CORTEX_BROKER_URL", "amqp://guest:guest@127.0.0.1:1/nowhere")
    reset_settings_cache()
    answer = client.get("/ready", headers=headers)
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["broker"]["ok"] is False
    assert answer.get_json()["checks"]["broker"]["code"] == "broker_unreachable"


@pytest.fixture()
def gateway_through_relay(rabbitmq_url: str) -> Iterator[tuple[FaultStack, TcpRelay, str]]:
    """A gateway (its own Redis, PostgreSQL and gunicorn) whose CORTEX_BROKER_URL reaches this machine's
    RabbitMQ through a relay the test can stop: RabbitMQ goes away for this gateway only. A virtual host of
    its own: no other test's worker takes its messages. Yields the stack, the relay and RabbitMQ's own URL."""
    del rabbitmq_url  # asked for its skip where RabbitMQ is missing
    with rabbitmq_vhost() as url:
        broker = urlparse(url)
        relay = TcpRelay(broker.hostname or "127.0.0.1", broker.port or 5672).start()
        relayed = broker._replace(netloc=f"{broker.username}:{broker.password}@127.0.0.1:{relay.port}").geturl()
        stack = FaultStack(env={"CORTEX_BROKER_URL": relayed})
        try:
            stack.start_services()
            stack.start_gateway(workers=1, threads=4)
            yield stack, relay, url
        finally:
            relay.stop()
            stack.close()


def _predict(stack: FaultStack, text: str, wait: float) -> Answer:
    return stack.call("POST", "/api/v1/predict", {"task": "sentiment", "inputs": [text], "wait": wait})


def _names_the_broker(answer: Answer) -> None:
    assert answer.status == 503, answer
    error = answer.body["error"]
    assert error["code"] == "dependency_unavailable", answer
    assert error["details"]["dependency"] == "broker", answer  # not "redis": Redis is up
    assert "RabbitMQ" in error["message"], answer
    assert int(answer.headers["Retry-After"]) >= 1, answer.headers


def test_rabbitmq_away_is_a_503_that_names_the_broker(gateway_through_relay):
    stack, relay, rabbitmq_url = gateway_through_relay
    depth = amqp_depths(rabbitmq_url).depth  # straight to RabbitMQ, not through the relay
    collection = f"broker_away_{uuid.uuid4().hex[:6]}"
    assert stack.call("PUT", f"/api/v1/vectors/{collection}", {}).status == 201
    nlp, gpu = depth("nlp"), depth("gpu")

    # Both ways a job is published (the coalescer's predictions, and one message per job) reach RabbitMQ.
    assert _predict(stack, "Queued while RabbitMQ answers.", wait=0).status == 202
    upsert = {"wait": 0, "items": [{"id": "a", "text": "An item to embed."}]}
    assert stack.call("POST", f"/api/v1/vectors/{collection}", upsert).status == 202
    assert (depth("nlp"), depth("gpu")) == (nlp + 1, gpu + 1)

    relay.stop()
    _names_the_broker(_predict(stack, "Sent while RabbitMQ is away.", wait=5))
    # Not waited for either: on an idle gateway the request's own thread publishes, and hears the refusal.
    _names_the_broker(_predict(stack, "Not waited for, sent while RabbitMQ is away.", wait=0))
    _names_the_broker(stack.call("POST", f"/api/v1/vectors/{collection}", upsert))
    ready = stack.call("GET", "/ready")
    assert ready.status == 503, ready
    assert ready.body["checks"]["broker"]["ok"] is False, ready
    assert ready.body["checks"]["broker"]["code"] == "broker_unreachable", ready
    assert ready.body["checks"]["redis"] == {"ok": True}, ready
    # Nothing was queued while it was away: a refused job leaves no message behind.
    assert (depth("nlp"), depth("gpu")) == (nlp + 1, gpu + 1)

    relay.start()  # back on the same port: the gateway reconnects by itself
    again = _predict(stack, "Queued once RabbitMQ is back.", wait=0)
    assert again.status == 202, again
    assert depth("nlp") == nlp + 2
