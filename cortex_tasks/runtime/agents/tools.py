"""Cortex's own capabilities as LangChain tools, each bound to the key that runs the agent.

Every call is authorized as that key, with the same checks its own request would meet: its role must allow
predictions, and its model and task limits (core/auth/permissions.py) apply to the model the tool would
run. The worker acts in the caller's tenant (the job message names it), so another tenant's collections and
documents do not exist for a tool, exactly as for the caller's own requests. A refusal is a `ToolDenied`,
which the loop feeds back to the model as a tool error.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from cortex_tasks.core.agents.declarations import ToolSpec
from cortex_tasks.core.auth.keys import Principal
from cortex_tasks.core.auth.permissions import NotAllowed, check_allowed
from cortex_tasks.core.auth.roles import PREDICT, ROLE_PERMISSIONS
from cortex_tasks.core.catalogue import TASKS, model_entry
from cortex_tasks.core.documents.catalog import EMBEDDING_MODEL
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.registry.references import plain
from cortex_tasks.core.validation.items import max_text_chars

MAX_TEXTS = 16


class ToolDenied(CortexError):
    """The caller's key may not do what the tool call asks."""

    status = 403


def authorize(principal: Principal, task: str | None, model: str | None) -> None:
    if PREDICT not in ROLE_PERMISSIONS.get(principal.role, frozenset()):
        raise ToolDenied("forbidden", f"The role {principal.role!r} of the calling key does not allow tool calls "
                                      "(predict is needed).")
    try:
        check_allowed(principal, task, model)
    except NotAllowed as exc:
        raise ToolDenied(exc.code, exc.message, exc.details) from None


def _check_collection(spec: ToolSpec, collection: str) -> None:
    if spec.collections is not None and collection not in spec.collections:
        raise ToolDenied("collection_not_allowed", f"This agent may use the collections "
                         f"{', '.join(spec.collections)} only, not {collection!r}.",
                         {"allowed_collections": list(spec.collections)})


class VectorSearchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=80, description="The vector collection to search")
    query: str = Field(min_length=1, max_length=2000, description="The text to find similar items for")
    k: int = Field(default=5, ge=1, le=20, description="How many items to return")


class DocumentQAArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000, description="The question to answer")
    collection: str = Field(default="default", min_length=1, max_length=64,
                            description="The document collection to answer from")
    top_k: int = Field(default=3, ge=1, le=10, description="How many passages to read")


class PredictArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description="The texts to run the task on")


class ForecastArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    series: list[float] = Field(min_length=3, max_length=5000, description="Past values at evenly spaced steps")
    horizon: int = Field(ge=1, le=365, description="How many future steps to forecast")


def _vector_search(spec: ToolSpec, principal: Principal) -> Callable[..., Any]:
    def vector_search(collection: str, query: str, k: int = 5) -> dict[str, Any]:
        from cortex_tasks.core.vectors.service import embedding_model
        from cortex_tasks.runtime.vectors.service import search_text

        _check_collection(spec, collection)
        authorize(principal, None, embedding_model(collection))  # a missing collection is a 404 here
        found = search_text(collection, query, k)
        return {"collection": collection, "results": [
            {name: value for name, value in hit.items() if name != "vector"} for hit in found["results"]]}

    return vector_search


def _document_qa(spec: ToolSpec, principal: Principal) -> Callable[..., Any]:
    def document_qa(question: str, collection: str = "default", top_k: int = 3) -> dict[str, Any]:
        from cortex_tasks.runtime.documents.service import answer_question

        _check_collection(spec, collection)
        authorize(principal, None, EMBEDDING_MODEL)
        # Extractive: the agent's own model writes the answer from the passages.
        answered = answer_question(question, top_k, collection, None, generate=False)
        return {"answer": answered["answer"], "answer_source": answered["answer_source"],
                "sources": [{"document_id": source["document_id"], "passage": source["passage"],
                             "score": source["score"]} for source in answered["sources"]]}

    return document_qa


def _predict(spec: ToolSpec, principal: Principal) -> Callable[..., Any]:
    task = TASKS[spec.task or ""]
    model = model_entry(task, spec.model).name

    def predict(texts: list[str]) -> dict[str, Any]:
        from cortex_tasks.runtime.inference.service import predict as run_prediction

        authorize(principal, task.name, plain(model))  # a registered model: as its users name it
        limit = max_text_chars()
        too_long = [index for index, text in enumerate(texts) if len(text) > limit]
        if too_long:
            raise CortexError("text_too_long", f"texts longer than {limit} characters: {too_long}")
        answered = run_prediction(task.name, model, list(texts), {})
        return {"task": task.name, "model": answered["model"], "outputs": answered["outputs"]}

    return predict


def _forecast(spec: ToolSpec, principal: Principal) -> Callable[..., Any]:
    task = TASKS["forecast"]
    model = model_entry(task, spec.model).name

    def forecast(series: list[float], horizon: int) -> dict[str, Any]:
        from cortex_tasks.runtime.inference.service import predict as run_prediction

        authorize(principal, task.name, plain(model))  # a registered model: as its users name it
        answered = run_prediction(task.name, model, [list(series)], {"horizon": horizon})
        return {"model": answered["model"], "forecast": answered["outputs"][0]}

    return forecast


DEFAULT_DESCRIPTIONS = {
    "vector_search": "Find the items of a vector collection most similar to a text. Returns ids, scores and "
                     "metadata.",
    "document_qa": "Answer a question from indexed documents. Returns an extracted answer and the passages it "
                   "came from.",
    "forecast": "Forecast the next values of a numeric series. Returns predicted values with intervals.",
}
BUILDERS: dict[str, tuple[Callable[[ToolSpec, Principal], Callable[..., Any]], type[BaseModel]]] = {
    "vector_search": (_vector_search, VectorSearchArgs),
    "document_qa": (_document_qa, DocumentQAArgs),
    "predict": (_predict, PredictArgs),
    "forecast": (_forecast, ForecastArgs),
}


def build_tools(specs: list[dict[str, Any]], principal: Principal) -> dict[str, StructuredTool]:
    """The agent's tools by the names the model calls them, each acting as `principal`."""
    tools: dict[str, StructuredTool] = {}
    for raw in specs:
        spec = ToolSpec.model_validate(raw)
        build, schema = BUILDERS[spec.tool]
        description = spec.description or DEFAULT_DESCRIPTIONS.get(spec.tool) or (
            f"Run the `{spec.task}` task on texts: {TASKS[spec.task or ''].description}.")
        if spec.collections:
            description += f" Collections: {', '.join(spec.collections)}."
        tools[spec.name] = StructuredTool.from_function(func=build(spec, principal), name=spec.name,
                                                        description=description, args_schema=schema)
    return tools


def result_text(result: Any, limit: int) -> str:
    """A tool's result as the model reads it: JSON, cut at `limit` characters."""
    text = json.dumps(result, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"... (cut at {limit} characters)"
