"""Chat sessions and their messages in PostgreSQL. A session belongs to the key that created it, within
its tenant; to any other key it does not exist (callers answer 404, never 403, so session ids cannot be
probed). Session ids are the clients' own: two tenants may use the same one, independently (the storage
layer keeps every statement here within the tenant in scope, core/tenancy.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import ChatMessage, ChatSession
from cortex_tasks.core.tenancy import current_tenant

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


def _owner_of(session_id: str) -> Select[tuple[str]]:
    return select(ChatSession.owner).where(ChatSession.id == session_id)


def _messages_of(session_id: str) -> Select[tuple[str, str, str | None, datetime]]:
    return (select(ChatMessage.role, ChatMessage.content, ChatMessage.model, ChatMessage.created_at)
            .where(ChatMessage.session_id == session_id))


def claim_session(session_id: str, owner: str) -> bool:
    """Create the session for `owner`, or check that it is theirs. Returns True when it was created."""
    with session_scope() as session:
        # A Core insert names its tenant (the storage layer stamps ORM rows only).
        created = session.execute(
            pg_insert(ChatSession).values(tenant=current_tenant(), id=session_id, owner=owner)
            .on_conflict_do_nothing(index_elements=[ChatSession.tenant, ChatSession.id]).returning(ChatSession.id)
        ).scalar() is not None
        if created:
            return True
        existing = session.execute(_owner_of(session_id)).scalar()
    if existing != owner:
        raise SessionNotFound(session_id)
    return False


def check_owner(session_id: str, owner: str) -> None:
    with session_scope() as session:
        existing = session.execute(_owner_of(session_id)).scalar()
    if existing is None or existing != owner:
        raise SessionNotFound(session_id)


def recent_messages(session_id: str, limit: int) -> list[StoredMessage]:
    """The last `limit` messages, oldest first."""
    with session_scope() as session:
        rows = session.execute(_messages_of(session_id).order_by(ChatMessage.id.desc()).limit(limit)).all()
    return [StoredMessage(*row) for row in reversed(rows)]


def all_messages(session_id: str) -> list[StoredMessage]:
    with session_scope() as session:
        rows = session.execute(_messages_of(session_id).order_by(ChatMessage.id)).all()
    return [StoredMessage(*row) for row in rows]


def append_turn(session_id: str, owner: str, user_text: str, reply_text: str, model: str, job_id: str) -> bool:
    """Store a user message and its answer together. A redelivered job whose turn is already stored adds
    nothing (returns False), so at-least-once delivery never duplicates a turn."""
    with session_scope() as session:
        if session.execute(select(ChatSession.id).where(ChatSession.id == session_id)
                           .with_for_update()).first() is None:
            return False  # deleted while the reply was being written
        if session.execute(select(1).where(ChatMessage.job_id == job_id).limit(1)).first():
            return False
        # One statement with both rows (a multi-row VALUES), as the turn is one.
        turn = {"tenant": current_tenant(), "session_id": session_id, "owner": owner, "job_id": job_id}
        session.execute(insert(ChatMessage).values([
            {**turn, "role": "user", "content": user_text, "model": None},
            {**turn, "role": "assistant", "content": reply_text, "model": model}]))
        session.execute(update(ChatSession).where(ChatSession.id == session_id).values(updated_at=func.now())
                        .execution_options(synchronize_session=False))
    return True


def delete_session(session_id: str) -> int:
    """Delete a session and its messages; returns how many messages went."""
    with session_scope() as session:
        count = session.execute(select(func.count()).select_from(ChatMessage)
                                .where(ChatMessage.session_id == session_id)).scalar() or 0
        # The messages go by the foreign key's ON DELETE CASCADE, in the database.
        session.execute(delete(ChatSession).where(ChatSession.id == session_id)
                        .execution_options(synchronize_session=False))
    return int(count)
