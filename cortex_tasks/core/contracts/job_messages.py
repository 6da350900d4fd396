"""The messages of every task but prediction (messages.py): one model per task, with the same conventions
(strict, frozen, `version` 1 when absent, extra fields ignored, `to_kwargs()` to send, `read_message` to
receive). Each model's docstring starts with the task_names constant of the task it is sent to.

Version 1 of each is exactly the keyword arguments the task took before this contract, so a message
queued by the previous release reads as version 1. The gateway's single-job messages carry the job id
and the reply channel the gateway waits on (None: nobody waits, the outcome is read from the job row).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from cortex_tasks.core.contracts.messages import VersionedMessage
from cortex_tasks.core.tenancy import (
    ALL_TENANTS,
    DEFAULT_TENANT,
    TENANT_ID,
    TenantScopeMissing,
    current_scope,
)


def _tenant_of_sender() -> str:
    """A message names the tenant of the code that builds it, so no sender can forget it: the gateway's
    request's, a worker's job's. Code acting for all tenants (sweeps) must name the job's tenant itself. A
    message read without one was queued before tenants existed: it belongs, like all data of that time, to
    `default`."""
    scope = current_scope()
    if isinstance(scope, str):
        return scope
    if scope is ALL_TENANTS:
        raise TenantScopeMissing("a job message built while acting for all tenants must name its tenant")
    return DEFAULT_TENANT


class JobMessage(VersionedMessage):
    """A message that runs one job, whose row the sender created: a worker that cannot read it fails that
    row (core.jobs.running.refuse_message)."""

    version: Literal[1] = 1
    job_id: str
    # The tenant the job acts for: the worker runs it in that tenant's scope (core/tenancy.py).
    tenant: str = Field(default_factory=_tenant_of_sender, pattern=TENANT_ID.pattern)


class RepliedJobMessage(JobMessage):
    reply_to: str | None = None


class VectorUpsertMessage(RepliedJobMessage):
    """VECTORS_UPSERT_ITEMS: embed the items' texts and write them."""

    describes: ClassVar[str] = "vector upsert message"

    collection: str
    items: list[dict[str, Any]]
    created_by: str | None = None


class VectorSearchMessage(RepliedJobMessage):
    """VECTORS_SEARCH_TEXT: embed a text (or an image) and search for its nearest items."""

    describes: ClassVar[str] = "vector search message"

    collection: str
    text: str | None = None
    # A staged image (core/images/intake.py) for a collection of an image model, in place of text.
    image: dict[str, str] | None = None
    k: int = 10
    filter: dict[str, Any] | None = None


class VectorIndexMessage(RepliedJobMessage):
    """VECTORS_BUILD_INDEX: (re)build a collection's vector index."""

    describes: ClassVar[str] = "vector index message"

    collection: str


class DocumentIndexMessage(RepliedJobMessage):
    """DOCUMENTS_INDEX: split, embed and write documents."""

    describes: ClassVar[str] = "document index message"

    collection: str
    documents: list[dict[str, Any]]
    indexed_by: str | None = None


class QuestionMessage(RepliedJobMessage):
    """DOCUMENTS_ANSWER: retrieve passages and answer from them."""

    describes: ClassVar[str] = "question message"

    question: str
    top_k: int = 5
    collection: str = "default"
    filters: dict[str, Any] | None = None
    generate: bool = True
    max_tokens: int = 96


class ChatReplyMessage(RepliedJobMessage):
    """CHAT_REPLY: one turn of one session."""

    describes: ClassVar[str] = "chat message"

    session_id: str
    owner: str
    message: str
    model: str | None = None
    system: str | None = None
    params: dict[str, Any] | None = None
    # The prompt version `system` was rendered from, recorded in the result; None: no prompt.
    prompt: dict[str, Any] | None = None


class ActivationMessage(RepliedJobMessage):
    """REGISTRY_ACTIVATE_VERSION: check a pending deployment's version and switch traffic to it."""

    describes: ClassVar[str] = "activation message"

    deployment_id: int


class BatchChunkMessage(JobMessage):
    """BATCH_RUN_CHUNK: one chunk of a batch job (its inputs are in the chunk's row)."""

    describes: ClassVar[str] = "batch chunk message"

    chunk_index: int = Field(ge=0)


class BatchFinishMessage(JobMessage):
    """BATCH_FINISH: merge a batch job's chunk results and finish it."""

    describes: ClassVar[str] = "batch finish message"


class TrainingMessage(JobMessage):
    """TRAIN_MODEL: run a training job (its data and parameters are in its run's row)."""

    describes: ClassVar[str] = "training message"


class StreamGenerationMessage(JobMessage):
    """STREAM_GENERATION: generate for each input, publishing tokens on the job's stream
    channel (the gateway listens there, not on a reply channel)."""

    describes: ClassVar[str] = "stream generation message"

    model: str
    # The generate task's input schema checked them at the gateway; the contract only carries them.
    inputs: list[Any]
    params: dict[str, Any] | None = None
    # Its result is sealed (or not kept) in its row (core/storage/sealing.py).
    sensitive: bool = False


class MaintenanceMessage(VersionedMessage):
    """Every periodic task Beat sends (beat_schedule.py): no fields of its own, only the version, so that a
    future field can be added without an old worker misreading it. No job to fail: a refused one is logged
    and Beat sends the next one on schedule."""

    describes: ClassVar[str] = "maintenance message"

    version: Literal[1] = 1


class StreamPurgeMessage(VersionedMessage):
    """STREAMS_PURGE_STREAM: remove a deleted stream's stored windows, verdicts and per-key state. No job:
    the declaration is already gone when it is sent; a refused one is logged (the rows stay readable to
    nobody, since no stream of that declaration exists)."""

    describes: ClassVar[str] = "stream purge message"

    version: Literal[1] = 1
    tenant: str = Field(pattern=TENANT_ID.pattern)
    stream: str
    stream_id: str
    deleted_at: str  # ISO 8601
class AgentRunMessage(RepliedJobMessage):
    """AGENTS_RUN_AGENT: one run of a declared agent, as declared when the run was asked for."""

    describes: ClassVar[str] = "agent run message"

    agent: dict[str, Any]  # core/agents/service.agent_dict: model, tools, max_steps, token_budget, params
    system: str  # the system prompt, rendered at the gateway from `prompt`
    prompt: dict[str, Any]  # the exact version rendered: {"name", "version", "reference"}
    input: str
    # Who runs it: every tool call is authorized as this key (role, model and task limits), in `tenant`.
    caller: dict[str, Any]
    stream: bool = False  # publish each step on the job's stream channel
