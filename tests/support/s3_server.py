"""A real S3-protocol server for tests: moto's server, in a thread of the test process.

The official `minio` client talks to it over HTTP exactly as it talks to MinIO in production.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ACCESS_KEY = "cortex-test-access"
SECRET_KEY = "cortex-test-secret-key"


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str  # host:port
    access_key: str
    secret_key: str

    def new_bucket_name(self) -> str:
        return f"cortex-test-{uuid.uuid4().hex[:12]}"


@contextmanager
def running_s3_server() -> Iterator[S3Endpoint]:
    from moto.server import ThreadedMotoServer

    from cortex_tasks.stack.embedded import free_port

    # Werkzeug would log every request of the server thread into the test output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = S3Endpoint(f"127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY)
    _wait_listening(endpoint)
    try:
        yield endpoint
    finally:
        server.stop()


def _wait_listening(endpoint: S3Endpoint, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://{endpoint.endpoint}/", timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto S3 server on {endpoint.endpoint} did not start") from None
            time.sleep(0.1)
