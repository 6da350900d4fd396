"""The gateway's short memory of verified keys (cortex_web/auth.py)."""
from __future__ import annotations

import threading
import time

from cortex_tasks.core.auth.keys import Principal
from cortex_web import auth


def test_concurrent_requests_with_an_expired_key_make_one_lookup(monkeypatch):
    lookups: list[str] = []

    def slow_verify(key: str, admin_key: str | None = None) -> Principal | None:
        lookups.append(key)
        time.sleep(0.05)  # a database round trip, long enough for every request to arrive meanwhile
        return Principal("k1", "inference_user", "default") if key == "good" else None

    monkeypatch.setattr(auth, "verify_key", slow_verify)
    monkeypatch.setattr(auth, "_cache", {})
    monkeypatch.setattr(auth, "_lookups", {})
    found: list[Principal | None] = []
    threads = [threading.Thread(target=lambda: found.append(auth._principal_for("good"))) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert lookups == ["good"]
    assert len(found) == 32 and all(p is not None and p.key_id == "k1" for p in found)

    # A key that does not verify is not remembered: every request with it is looked up (and refused).
    assert auth._principal_for("bad") is None and auth._principal_for("bad") is None
    assert lookups == ["good", "bad", "bad"]
    assert auth._lookups == {}
