"""Chat sessions and their messages in PostgreSQL. A session belongs to the key that created it; to any
other key it does not exist (callers answer 404, never 403, so session ids cannot be probed)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from cortex_tasks.core.storage.db import session_scope

# Letters, digits, '-', '_' (a UUID fits); nothing path-like, nothing that needs escaping in a URL.
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class SessionNotFound(LookupError):
    pass


@dataclass(frozen=True)
class StoredMessage:
    role: str  # user | assistant
    content: str
    model: str | None
    created_at: datetime


def valid_session_id(session_id: str) -> bool:
    return bool(SESSION_ID.match(session_id))


def claim_session(session_id: str, owner: str) -> bool:
    """Create the session for `owner`, or check that it is theirs. Returns True when it was created."""
    with session_scope() as session:
        created = session.execute(text(
            "INSERT INTO chat_sessions (id, owner) VALUES (:id, :owner) ON CONFLICT (id) DO NOTHING RETURNING id"
        ), {"id": session_id, "owner": owner}).scalar() is not None
        if created:
            return True
        existing = session.execute(text("SELECT owner FROM chat_sessions WHERE id = :id"),
                                   {"id": session_id}).scalar()
    if existing != owner:
        raise SessionNotFound(session_id)
    return False


def check_owner(session_id: str, owner: str) -> None:
    with session_scope() as session:
        existing = session.execute(text("SELECT owner FROM chat_sessions WHERE id = :id"),
                                   {"id": session_id}).scalar()
    if existing is None or existing != owner:
        raise SessionNotFound(session_id)


def recent_messages(session_id: str, limit: int) -> list[StoredMessage]:
    """The last `limit` messages, oldest first."""
    with session_scope() as session:
        rows = session.execute(text(
            "SELECT role, content, model, created_at FROM chat_messages WHERE session_id = :id "
            "ORDER BY id DESC LIMIT :limit"
        ), {"id": session_id, "limit": limit}).all()
    return [StoredMessage(*row) for row in reversed(rows)]


def all_messages(session_id: str) -> list[StoredMessage]:
    with session_scope() as session:
        rows = session.execute(text(
            "SELECT role, content, model, created_at FROM chat_messages WHERE session_id = :id ORDER BY id"
        ), {"id": session_id}).all()
    return [StoredMessage(*row) for row in rows]


def append_turn(session_id: str, owner: str, user_text: str, reply_text: str, model: str, job_id: str) -> bool:
    """Store a user message and its answer together. A redelivered job whose turn is already stored adds
    nothing (returns False), so at-least-once delivery never duplicates a turn."""
    with session_scope() as session:
        if session.execute(text("SELECT id FROM chat_sessions WHERE id = :id FOR UPDATE"),
                           {"id": session_id}).first() is None:
            return False  # deleted while the reply was being written
        if session.execute(text("SELECT 1 FROM chat_messages WHERE job_id = :job LIMIT 1"),
                           {"job": job_id}).first():
            return False
        session.execute(text(
            "INSERT INTO chat_messages (session_id, owner, role, content, model, job_id) VALUES "
            "(:id, :owner, 'user', :user_text, NULL, :job), (:id, :owner, 'assistant', :reply, :model, :job)"
        ), {"id": session_id, "owner": owner, "user_text": user_text, "reply": reply_text, "model": model,
            "job": job_id})
        session.execute(text("UPDATE chat_sessions SET updated_at = now() WHERE id = :id"), {"id": session_id})
    return True


def delete_session(session_id: str) -> int:
    """Delete a session and its messages; returns how many messages went."""
    with session_scope() as session:
        count = session.execute(text("SELECT count(*) FROM chat_messages WHERE session_id = :id"),
                                {"id": session_id}).scalar() or 0
        session.execute(text("DELETE FROM chat_sessions WHERE id = :id"), {"id": session_id})
    return int(count)
