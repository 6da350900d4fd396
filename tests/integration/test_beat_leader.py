"""Two real Beats against one Redis: one sends the schedule, the other stands by and takes over within the
lock's TTL when the first is SIGKILLed. The TTL is shortened to 3 s here; tests/unit/test_beat_leader.py
checks the shipped default and its renewal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import redis

from cortex_tasks.runtime.maintenance.leader import LOCK_KEY, STANDBY_POLL_SECONDS
from tests.support.processes import REPO_ROOT

TTL_SECONDS = 3.0
MARKER_TASK = "cortex.tests.beat_marker"
# A Beat app with one fast entry, so that sends are seen in seconds (the shipped entries are minutes apart).
FAST_APP = f"""
from cortex_tasks import app

app.conf.beat_schedule = {{
    "marker": {{"task": "{MARKER_TASK}", "schedule": 0.5, "options": {{"queue": "maintenance"}}}},
}}
"""


def _own_database(url: str) -> str:
    # Beat's own Redis database (broker and lock): no worker of the session takes the marker messages.
    return urlunparse(urlparse(url)._replace(path="/6"))


class Beat:
    def __init__(self, folder: Path, name: str, url: str) -> None:
        self.log_path = folder / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "fast_beat", "beat", "-s", str(folder / f"{name}.schedule"),
                 "-l", "INFO"],
                env={**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{REPO_ROOT}", "REDIS_URL": url,
                     "CORTEX_BROKER_URL": "", "CORTEX_BEAT_LOCK_TTL": str(TTL_SECONDS)},
                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sent(self) -> int:
        return self.log().count(f"Sending due task marker ({MARKER_TASK})")

    def wait_for(self, text: str, timeout: float = 90.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return time.monotonic()
            assert self.process.poll() is None, self.log()
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in:\n{self.log()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        self.process.wait(30)


def _marker_messages(client: redis.Redis) -> int:
    return sum(1 for name in client.scan_iter(match="maintenance*") if client.type(name) == b"list"
               for raw in client.lrange(name, 0, -1) if json.loads(raw)["headers"]["task"] == MARKER_TASK)


def test_one_beat_sends_and_the_standby_takes_over_when_it_dies(tmp_path):
    (tmp_path / "fast_beat.py").write_text(FAST_APP)
    url = _own_database(os.environ["REDIS_URL"])
    client = redis.Redis.from_url(url)
    client.flushdb()
    first = Beat(tmp_path, "first", url)
    second = None
    try:
        first.wait_for("beat: leading")
        second = Beat(tmp_path, "second", url)
        second.wait_for("beat: standby")
        time.sleep(3)
        assert first.sent() >= 3
        assert second.sent() == 0, second.log()
        # Every marker message on the broker came from the leader.
        assert _marker_messages(client) == first.sent()

        first.kill()
        killed_at = time.monotonic()
        took_over_at = second.wait_for("beat: leading", timeout=30)
        # The lock lapses within its TTL and the standby looks every STANDBY_POLL_SECONDS (+ slack for a
        # loaded machine: the bound is what matters, not the speed).
        assert took_over_at - killed_at <= TTL_SECONDS + STANDBY_POLL_SECONDS + 3
        deadline = time.monotonic() + 20
        while second.sent() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert second.sent() >= 2
        assert "lost the leader lock" not in second.log()
    finally:
        first.kill()
        if second is not None:
            second.kill(signal.SIGTERM)
        client.flushdb()


def test_a_beat_stopped_cleanly_hands_over_at_once(tmp_path):
    (tmp_path / "fast_beat.py").write_text(FAST_APP)
    url = _own_database(os.environ["REDIS_URL"])
    client = redis.Redis.from_url(url)
    client.flushdb()
    first = Beat(tmp_path, "first", url)
    try:
        first.wait_for("beat: leading")
        assert client.pttl(LOCK_KEY) > 0
        first.kill(signal.SIGTERM)
        assert client.get(LOCK_KEY) is None  # released on the way out, not left to expire
    finally:
        first.kill()
        client.flushdb()


def test_a_leader_that_lost_its_lock_stops_sending_and_one_without_redis_never_sends(tmp_path, monkeypatch):
    from cortex_tasks import app
    from cortex_tasks.core.settings import reset_settings_cache
    from cortex_tasks.runtime.maintenance.leader import LeaderScheduler

    url = _own_database(os.environ["REDIS_URL"])
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("CORTEX_BEAT_LOCK_TTL", "30")
    reset_settings_cache()
    first = LeaderScheduler(app=app, schedule_filename=str(tmp_path / "first"), lazy=True)
    second = LeaderScheduler(app=app, schedule_filename=str(tmp_path / "second"), lazy=True)
    assert first.max_interval <= first.renew_every == 10
    assert first._hold_lock() and not second._hold_lock()
    # The first stalls past its TTL (here: its key is gone) and the second takes the lock meanwhile.
    client.delete(LOCK_KEY)
    assert second._hold_lock()
    first._renew_at = 0  # its next renewal is due
    assert not first._hold_lock() and not first.leading
    assert second._hold_lock() and second.leading

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    reset_settings_cache()
    cut_off = LeaderScheduler(app=app, schedule_filename=str(tmp_path / "third"), lazy=True)
    assert not cut_off._hold_lock() and not cut_off.leading
    assert cut_off.tick() == cut_off.standby_poll  # standing by: nothing is sent
    client.flushdb()
