"""Declared agents in PostgreSQL, per tenant: another tenant's agent is AgentNotFound (404), like a missing
one (the storage layer scopes every statement here, core/tenancy.py)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from cortex_tasks.core.agents.declarations import AGENT_NAME, AgentDeclaration, check_declaration, limits_of
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.prompts import service as prompts
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import Agent


class AgentNotFound(CortexError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__("agent_not_found", f"No agent named {name!r}.", {"agent": name})


class AgentExists(CortexError):
    status = 409


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def agent_dict(row: Agent) -> dict[str, Any]:
    return {"name": row.name, "description": row.description, "model": row.model, "prompt": row.prompt,
            "tools": list(row.tools or []), "max_steps": row.max_steps, "token_budget": row.token_budget,
            "temperature": (row.params or {}).get("temperature", 0.0),
            "max_tokens": (row.params or {}).get("max_tokens", 512),
            "created_by": row.created_by, "created_at": _iso(row.created_at)}


def declare(declaration: AgentDeclaration, actor: str | None) -> dict[str, Any]:
    check_declaration(declaration)
    prompts.resolve(declaration.prompt)  # the prompt exists in this tenant (and has a production version)
    max_steps, token_budget = limits_of(declaration)
    tools = [tool.model_dump(exclude_none=True) for tool in declaration.tools]
    try:
        with session_scope() as session:
            row = Agent(name=declaration.name, description=declaration.description, model=declaration.model,
                        prompt=declaration.prompt, tools=tools, max_steps=max_steps, token_budget=token_budget,
                        params={"temperature": declaration.temperature, "max_tokens": declaration.max_tokens},
                        created_by=actor)
            session.add(row)
            session.flush()
            session.refresh(row)
            return agent_dict(row)
    except IntegrityError:
        raise AgentExists("agent_exists", f"An agent named {declaration.name!r} exists: delete it first to "
                          "declare it anew.", {"agent": declaration.name}) from None


def _checked(name: str) -> str:
    """A name no agent can have (a NUL, which PostgreSQL refuses, a path) names no agent: a 404."""
    if not AGENT_NAME.match(name) or ".." in name:
        raise AgentNotFound(name[:200])
    return name


def get_agent(name: str) -> dict[str, Any]:
    _checked(name)
    with session_scope() as session:
        row = session.scalars(select(Agent).where(Agent.name == name)).one_or_none()
        if row is None:
            raise AgentNotFound(name)
        return agent_dict(row)


def list_agents() -> list[dict[str, Any]]:
    with session_scope() as session:
        return [agent_dict(row) for row in session.scalars(select(Agent).order_by(Agent.name)).all()]


def delete_agent(name: str) -> None:
    _checked(name)
    with session_scope() as session:
        deleted = session.execute(delete(Agent).where(Agent.name == name)
                                  .execution_options(synchronize_session=False)).rowcount
    if not deleted:
        raise AgentNotFound(name)
