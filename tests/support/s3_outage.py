"""An S3 test server (moto's, tests/support/s3_server.py) that a fault test can stop and start again on the
same address, its objects kept: the object store down for a while, as a MinIO restart looks to clients.

moto keeps its buckets in the memory of this process, so a server started again serves what the last one
held; only the listening socket goes away while it is stopped (connections are refused)."""
from __future__ import annotations

import logging

from tests.support.s3_server import ACCESS_KEY, SECRET_KEY, S3Endpoint, _wait_listening


class StoppableS3:
    def __init__(self) -> None:
        from cortex_tasks.stack.embedded import free_port

        self.port = free_port()
        self.endpoint = S3Endpoint(f"127.0.0.1:{self.port}", ACCESS_KEY, SECRET_KEY)
        self._server = None

    def env(self, bucket: str) -> dict[str, str]:
        """The stack's settings for this server (the bucket is created on first use)."""
        return {"MINIO_ENDPOINT": self.endpoint.endpoint, "MINIO_ACCESS_KEY": ACCESS_KEY,
                "MINIO_SECRET_KEY": SECRET_KEY, "MINIO_BUCKET": bucket}

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        _wait_listening(self.endpoint)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
