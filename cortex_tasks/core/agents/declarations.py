"""What an agent is: its chat model, its system prompt (a prompt of the registry), the tools it may use and
the limits of one run. Checked when it is declared, so a run never starts from a declaration that cannot
work.

Tools are Cortex's own capabilities, each acting with the key of whoever runs the agent:
- `vector_search`: nearest items of one of the caller's vector collections (optionally only `collections`);
- `document_qa`: an answer with sources from the caller's indexed documents (optionally only `collections`);
- `predict`: one prediction task on texts (`task`, optionally `model`), exposed as `predict_<task>`;
- `forecast`: the next `horizon` values of a series (optionally `model`: prophet or arima).
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cortex_tasks.core.catalogue import TASKS, UnknownName, model_entry
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.prompts.service import parse_reference
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.storable import first_unstorable

AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_STEPS_LIMIT = 50
TOKEN_BUDGET_LIMIT = 1_000_000
# The predict tool takes texts: the series tasks have a tool of their own (forecast) or none.
TEXT_TASKS = tuple(name for name, entry in TASKS.items() if entry.input_kind == "text")
TOOL_KINDS = ("vector_search", "document_qa", "predict", "forecast")


class DeclarationError(CortexError):
    status = 422


class ToolSpec(BaseModel):
    """One tool an agent may use."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tool: Literal["vector_search", "document_qa", "predict", "forecast"]
    task: str | None = Field(default=None, max_length=32, description="predict: the task it runs")
    model: str | None = Field(default=None, max_length=128, description="predict, forecast: the model")
    collections: list[str] | None = Field(default=None, max_length=50,
                                          description="vector_search, document_qa: only these collections")
    description: str | None = Field(default=None, max_length=1000,
                                    description="What the model is told the tool does (a default otherwise)")

    @model_validator(mode="after")
    def _fields_fit_the_tool(self) -> ToolSpec:
        if self.tool == "predict":
            if self.task not in TEXT_TASKS:
                raise ValueError(f"a predict tool names its task, one of: {', '.join(TEXT_TASKS)}")
        elif self.task is not None:
            raise ValueError(f"`task` is for predict tools, not {self.tool}")
        if self.tool in ("vector_search", "document_qa"):
            if self.model is not None:
                raise ValueError(f"{self.tool} uses each collection's own model: leave out `model`")
        elif self.collections is not None:
            raise ValueError(f"`collections` is for vector_search and document_qa, not {self.tool}")
        if self.tool in ("predict", "forecast"):
            task = TASKS[self.task if self.tool == "predict" else "forecast"]  # type: ignore[index]
            try:
                model_entry(task, self.model)
            except UnknownName as exc:
                raise ValueError(f"model {exc.name!r} does not serve {task.name}; valid: "
                                 f"{', '.join(exc.valid)}") from None
        return self

    @property
    def name(self) -> str:
        """The name the model calls it by."""
        return f"predict_{self.task}" if self.tool == "predict" else self.tool


class AgentDeclaration(BaseModel):
    """POST /api/v1/agents."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=128)
    description: str | None = Field(default=None, max_length=2000)
    model: str = Field(default="gpt-4o-mini", max_length=128)
    prompt: str = Field(min_length=1, max_length=160, description="The system prompt: `name@version` or `name`")
    tools: list[ToolSpec] = Field(min_length=1, max_length=20)
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS_LIMIT)
    token_budget: int | None = Field(default=None, ge=100, le=TOKEN_BUDGET_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1, le=4096, description="Completion tokens of one model call")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, body: Any) -> Any:
        where = first_unstorable(body) if isinstance(body, dict) else None
        if where is not None:  # PostgreSQL refuses NUL and unpaired surrogates: a 422, not a 500
            raise ValueError(f"{where} holds a NUL character or an unpaired surrogate, which cannot be stored")
        return body

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not AGENT_NAME.match(name) or ".." in name:
            raise ValueError("1-128 letters, digits, '.', '-', '_', starting with a letter or digit")
        return name

    @field_validator("temperature", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("tools")
    @classmethod
    def _distinct(cls, tools: list[ToolSpec]) -> list[ToolSpec]:
        names = [tool.name for tool in tools]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"each tool once: {', '.join(twice)} appear(s) twice")
        return tools


def check_declaration(declaration: AgentDeclaration) -> None:
    """What the body's own shape cannot say: the model is one the deployment offers for agents, and the
    prompt reference is well formed (that it exists is checked by the caller, in its tenant)."""
    models = get_settings().agent_models
    if declaration.model not in models:
        raise DeclarationError("unknown_model", f"Model {declaration.model!r} is not offered for agents "
                               "(CORTEX_AGENT_MODELS).", {"model": declaration.model, "valid": list(models)})
    parse_reference(declaration.prompt)


def limits_of(declaration: AgentDeclaration) -> tuple[int, int]:
    """(max_steps, token_budget): the declaration's, else the deployment's defaults."""
    settings = get_settings()
    return (declaration.max_steps or settings.agent_max_steps,
            declaration.token_budget or settings.agent_token_budget)
