"""Priority aging runs inside Beat's process (`celery -A cortex_tasks beat`), not as a task it sends every
5 s: an aged low-priority message climbs to the normal list, and the maintenance queue receives no aging
task. Beat runs against its own Redis database here, so no worker takes the message away while we look."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from urllib.parse import urlparse, urlunparse

import redis

from cortex_tasks.core.load_control.aging import _list_name
from cortex_tasks.core.queues import MAINTENANCE, NLP, PRIORITY_STEPS
from tests.support.processes import REPO_ROOT


def _other_database(url: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/7"))


def test_beat_ages_the_queues_itself_without_sending_tasks(tmp_path):
    url = _other_database(os.environ["REDIS_URL"])
    client = redis.Redis.from_url(url)
    client.flushdb()
    lowest, highest = _list_name(NLP, PRIORITY_STEPS[-1]), _list_name(NLP, PRIORITY_STEPS[0])
    marker = uuid.uuid4().hex
    message = {"body": "", "headers": {"enqueued_at": time.time() - 3600, "id": marker}, "properties": {}}
    client.rpush(lowest, json.dumps(message))

    with open(tmp_path / "beat.log", "wb") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "cortex_tasks", "beat", "-s", str(tmp_path / "schedule"),
             "-l", "INFO"],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "REDIS_URL": url}, cwd=REPO_ROOT, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # An hour old: past the threshold to normal and past twice it to the highest list, in one round.
        while time.monotonic() < deadline and not client.llen(highest):
            assert beat.poll() is None, (tmp_path / "beat.log").read_text()
            time.sleep(0.5)
        assert json.loads(client.lindex(highest, 0))["headers"]["id"] == marker
        assert client.llen(lowest) == 0
        sent = [json.loads(raw)["headers"]["task"] for name in client.scan_iter(match=f"{MAINTENANCE}*")
                if client.type(name) == b"list" for raw in client.lrange(name, 0, -1)]
        assert "cortex.maintenance.promote_aged_jobs" not in sent
    finally:
        beat.terminate()
        beat.wait(20)
        client.flushdb()
