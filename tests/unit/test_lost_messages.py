"""Which jobs a message in the broker is for (runtime/maintenance/lost_messages.py), read from messages
Celery really published (through kombu's in-memory transport, which keeps each message as the Redis
transport stores it), and the relay the fault tests stall links with."""
from __future__ import annotations

import socket
import threading

import orjson
from kombu import Connection

from cortex_tasks import app
from cortex_tasks.core.contracts.job_messages import BatchChunkMessage
from cortex_tasks.runtime.maintenance.lost_messages import _message_job_ids
from tests.support.tcp_relay import TcpRelay


def published(name: str, kwargs: dict, task_id: str | None = None) -> dict:
    with Connection("memory://") as connection:
        app.send_task(name, kwargs=kwargs, task_id=task_id, queue="lost-test",
                      producer=connection.Producer())
        return connection.default_channel._get("lost-test")


def test_a_single_job_message_names_its_job():
    message = published("cortex.batch.run_chunk",
                        BatchChunkMessage(job_id="job-1", chunk_index=3, tenant="default").to_kwargs())
    assert "job-1" in _message_job_ids(message)
    # As Redis keeps it: the JSON text in a queue's list, and [message, exchange, key] in `unacked`.
    assert "job-1" in _message_job_ids(orjson.dumps(message))
    assert "job-1" in _message_job_ids(orjson.loads(orjson.dumps([message, "", "lost-test"]))[0])


def test_a_prediction_message_names_every_job_it_carries():
    message = published("cortex.predict.nlp", {"jobs": [{"job_id": "a"}, {"job_id": "b"}], "task": "sentiment"},
                        task_id="message-1")
    assert set(_message_job_ids(message)) == {"a", "b", "message-1"}


def test_what_is_not_a_message_names_no_job():
    for raw in (b"not json", b"[1, 2]", b'{"no": "headers"}', b"\x00\xff"):
        assert list(_message_job_ids(raw)) == []


def echo_server() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                while data := connection.recv(1024):
                    connection.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_the_relay_forwards_stalls_and_resumes():
    server = echo_server()
    relay = TcpRelay("127.0.0.1", server.getsockname()[1]).start()
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as client:
            client.sendall(b"one")
            assert client.recv(16) == b"one"
            relay.pause()
            client.sendall(b"two")
            client.settimeout(0.5)
            try:
                stalled = client.recv(16)
            except TimeoutError:
                stalled = b""
            assert stalled == b""  # nothing came back while the link was stalled
            relay.resume()
            client.settimeout(5)
            assert client.recv(16) == b"two"  # held, not dropped
        assert relay.url_for("redis://:secret@127.0.0.1:6379/2") == f"redis://:secret@127.0.0.1:{relay.port}/2"
    finally:
        relay.close()
        server.close()
