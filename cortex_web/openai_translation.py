"""OpenAI's API spoken by Cortex's own models (/v1/models, /v1/embeddings, /v1/chat/completions): requests
in OpenAI's shape are turned into Cortex predictions and run by the prediction service (predictions.py,
prediction_streams.py) exactly as /predict's are, through the same coalescer, queues, batchers, cache,
tenants, OpenAI integration and usage ledger; answers and errors are turned back into OpenAI's shapes,
which the official SDK and LangChain's OpenAI classes read.

What OpenAI's API offers and Cortex cannot do is refused with a 400 that names the parameter (tools, n > 1,
token arrays as embedding input, logprobs, JSON response formats), never ignored silently.
"""
from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from collections.abc import Generator, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cortex_tasks.core.auth.permissions import NotAllowed, check_allowed
from cortex_tasks.core.catalogue import MODELS
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.jobs.running import JobInputError
from cortex_tasks.core.openai.config import is_openai_model, openai_config
from cortex_tasks.core.registry.references import plain_model_name
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.validation.generation import MAX_MAX_TOKENS, generation_params
from cortex_web.auth import current_principal
from cortex_web.errors import ApiError
from cortex_web.prediction_streams import StreamEvent, token_events
from cortex_web.predictions import raise_for_failure, resolve, run_prediction, validate_inputs
from cortex_web.request_body import json_body

# The tasks whose models OpenAI's routes serve.
SERVED_TASKS = ("embed", "generate")
# OpenAI takes up to 2048 inputs per embeddings request; Cortex runs them as jobs of max_batch_size items.
MAX_EMBEDDING_INPUTS = 2048
# OpenAI's default is "until the context is full"; SmolLM2 on a CPU worker takes about a second per 20
# tokens, so an answer that names no max_tokens gets this many (finish_reason "length" says when it ran out).
DEFAULT_CHAT_MAX_TOKENS = 256
# OpenAI's clients wait for the answer (the SDK's default timeout is 600 s) and cannot poll a job as
# /predict's callers do after a 202, so these routes wait for as long as a long generation on a CPU worker
# takes: 512 tokens of SmolLM2 on a busy machine took over 30 s (/predict's longest wait).
ANSWER_WAIT_SECONDS = 300.0
MAX_CHAT_MESSAGES = 65  # the history's limit (validation/generation.py) and the last user message
CREATED = int(time.time())  # "created" of /v1/models: when this gateway started serving them
TOKEN_ARRAYS_REFUSED = (
    "Token arrays are not accepted: Cortex's embedding models read text with their own tokenizers, not "
    "OpenAI's (tiktoken), so the tokens cannot be turned back into the text they came from. Send strings; "
    "with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False.")


class OpenAIRequest(BaseModel):
    # Fields this API does not know (`user`, `seed`, new ones a newer SDK sends) are ignored, as parameters
    # that change nothing here; those that would change the answer and cannot be honoured are refused below.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200, description="A Cortex model name (GET /v1/models).")


class EmbeddingsRequest(OpenAIRequest):
    input: str | list[Any] = Field(description="A text or a list of texts (token arrays are refused).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Only the model's own dimension is accepted.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[Any] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_MAX_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int | None = 1
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


def refused(message: str, param: str | None, code: str = "invalid_request", status: int = 400) -> ApiError:
    return ApiError(status, code, message, {"param": param} if param else None)


def parse_body(model: type[OpenAIRequest]) -> Any:
    """The body as `model`, or a 400 naming the parameter at fault."""
    body = json_body(get_settings().max_json_depth)
    if not isinstance(body, dict):
        raise refused("The body must be a JSON object.", None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(part) for part in first["loc"] if not str(part).startswith(("str", "list"))) or None
        raise refused(f"{param or 'body'}: {first['msg']}", param) from None


# --- /v1/models ---

def model_list() -> dict[str, Any]:
    """The catalogue's embedding and generation models this key may use (OpenAI's models only where an API
    key is configured: without one they would only answer 503)."""
    principal = current_principal()
    data = []
    for entry in MODELS.values():
        if entry.task not in SERVED_TASKS or (is_openai_model(entry.name) and not openai_config().configured):
            continue
        try:
            check_allowed(principal, entry.task, entry.name)
        except NotAllowed:
            continue
        data.append({"id": entry.name, "object": "model", "created": CREATED,
                     "owned_by": "openai" if is_openai_model(entry.name) else "cortex",
                     "task": entry.task, "version": entry.version, "description": entry.description})
    return {"object": "list", "data": data}


# --- /v1/embeddings ---

def embedding_texts(request: EmbeddingsRequest) -> list[str]:
    raw = request.input
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise refused("input must not be empty.", "input")
    if any(isinstance(item, int) and not isinstance(item, bool) or isinstance(item, list) for item in texts):
        raise refused(TOKEN_ARRAYS_REFUSED, "input", code="token_arrays_not_supported")
    if not all(isinstance(item, str) for item in texts):
        raise refused("input must be a string or a list of strings.", "input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise refused(f"input holds {len(texts)} texts; at most {MAX_EMBEDDING_INPUTS} per request.", "input")
    return texts


def embeddings(request: EmbeddingsRequest) -> dict[str, Any]:
    task, model = resolve("embed", request.model)
    texts = embedding_texts(request)
    settings = get_settings()
    try:
        validate_inputs(task, texts)
    except CortexError as exc:  # the item rules of /predict (ItemError), named as OpenAI names the field
        raise refused(exc.message.replace("inputs[", "input[", 1), "input", exc.code) from None
    vectors: list[Any] = []
    answered_by = plain_model_name(model.name)
    # In jobs of the most items a prediction takes; the coalescer batches them with everyone else's.
    for start in range(0, len(texts), settings.max_batch_size):
        prediction = run_prediction(task, model, texts[start:start + settings.max_batch_size], {}, "normal",
                                    ANSWER_WAIT_SECONDS)
        if prediction.outcome is None:
            raise ApiError(504, "timeout", f"The embedding job {prediction.job_id} did not finish within "
                           f"{ANSWER_WAIT_SECONDS:g} s; retry.")
        raise_for_failure(prediction)
        vectors.extend(prediction.outcome["result"]["outputs"])
        answered_by = prediction.outcome["result"]["model"]["name"]
    if request.dimensions is not None and vectors and request.dimensions != len(vectors[0]):
        raise refused(f"{plain_model_name(model.name)} answers {len(vectors[0])} dimensions; dimensions "
                      f"{request.dimensions} cannot be given.", "dimensions")
    tokens = sum(estimated_tokens(text) for text in texts)
    return {"object": "list", "model": answered_by,
            "data": [{"object": "embedding", "index": index,
                      "embedding": as_base64(vector) if request.encoding_format == "base64" else vector}
                     for index, vector in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def as_base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the vector as little-endian float32, which the SDK decodes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def estimated_tokens(text: str) -> int:
    """About four characters per token: the gateway loads no tokenizer (usage says so: `estimated`)."""
    return max(1, math.ceil(len(text) / 4))


# --- /v1/chat/completions ---

def _text_of(message: ChatMessage, index: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    if content is None:
        raise refused(f"messages[{index}].content is missing.", f"messages[{index}].content")
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise refused(f"messages[{index}].content: only text parts are supported, not {part.get('type')!r}.",
                          f"messages[{index}].content")
        texts.append(part["text"])
    return "\n".join(texts)


def generation_request(request: ChatCompletionRequest) -> tuple[str, dict[str, Any]]:
    """The conversation as a Cortex generation: the last user message is the input; the system and developer
    messages become params.system, the messages between them params.history."""
    if request.n not in (None, 1):
        raise refused("n: only one choice per request is supported.", "n")
    if request.tools or request.functions or request.tool_choice not in (None, "none"):
        raise refused("Tool and function calling is not supported by Cortex's chat completions.", "tools")
    if request.logprobs:
        raise refused("logprobs are not supported.", "logprobs")
    if request.response_format and request.response_format.get("type", "text") != "text":
        raise refused("Only the text response format is supported.", "response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise refused(f"{name} is not supported (only 0).", name)
    system, history = [], []
    for index, message in enumerate(request.messages):
        if message.role in ("tool", "function") or message.tool_calls:
            raise refused(f"messages[{index}]: tool messages and tool calls are not supported.",
                          f"messages[{index}]")
        text = _text_of(message, index)
        if message.role in ("system", "developer"):
            system.append(text)
        else:
            history.append({"role": message.role, "content": text})
    if not history or history[-1]["role"] != "user":
        raise refused("The last message (other than system messages) must be the user's.", "messages")
    params: dict[str, Any] = {
        "max_tokens": request.max_completion_tokens or request.max_tokens or DEFAULT_CHAT_MAX_TOKENS,
        # OpenAI's default temperature is 1; Cortex's is 0 (greedy): a small local model rambles when sampled.
        "temperature": request.temperature if request.temperature is not None else 0.0,
        "top_p": request.top_p if request.top_p is not None else 1.0,
    }
    if request.stop:
        params["stop"] = request.stop
    if system:
        params["system"] = "\n\n".join(system)
    if len(history) > 1:
        params["history"] = history[:-1]
    try:
        generation_params(params)  # the worker's own checks, before anything is queued
    except JobInputError as exc:
        name = str(exc).split(" ", 1)[0].removeprefix("params.")
        raise refused(str(exc), {"system": "messages", "history": "messages"}.get(name, name)) from None
    return history[-1]["content"], params


def _usage(output: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(output.get("prompt_tokens", 0)), int(output.get("generated_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(request: ChatCompletionRequest) -> dict[str, Any]:
    task, model = resolve("generate", request.model)
    text, params = generation_request(request)
    _check_text(task, text)
    prediction = run_prediction(task, model, [text], params, "normal", ANSWER_WAIT_SECONDS)
    if prediction.outcome is None:
        raise ApiError(504, "timeout", f"The generation job {prediction.job_id} did not finish within "
                       f"{ANSWER_WAIT_SECONDS:g} s; ask for fewer tokens or stream the answer.")
    raise_for_failure(prediction)
    result = prediction.outcome["result"]
    output = result["outputs"][0]
    return {"id": f"chatcmpl-{prediction.job_id or uuid.uuid4()}", "object": "chat.completion",
            "created": int(time.time()), "model": result["model"]["name"], "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": output["text"], "refusal": None},
                         "finish_reason": output.get("finish_reason", "stop"), "logprobs": None}],
            "usage": _usage(output)}


def _check_text(task: Any, text: str) -> None:
    try:
        validate_inputs(task, [text])
    except CortexError as exc:
        raise refused(f"The last user message: {exc.message.replace('inputs[0] ', '', 1)}", "messages",
                      exc.code) from None


def chat_completion_chunks(request: ChatCompletionRequest) -> Iterator[dict[str, Any]]:
    """The streamed answer as OpenAI's chunks (the route writes each as `data: {chunk}` and ends with
    `data: [DONE]`); an error after the stream started is a chunk holding only `error`."""
    task, model = resolve("generate", request.model)
    text, params = generation_request(request)
    _check_text(task, text)
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return _chunks(token_events(model.name, [text], params, "normal"), plain_model_name(model.name),
                   include_usage)


def _chunks(events: Generator[StreamEvent, None, None], model_name: str,
            include_usage: bool) -> Generator[dict[str, Any], None, None]:
    created = int(time.time())
    completion_id = f"chatcmpl-{uuid.uuid4()}"
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}

    try:
        for kind, data in events:
            if kind == "start":
                completion_id = f"chatcmpl-{data['job_id']}"
                yield chunk({"role": "assistant", "content": ""})
            elif kind == "token" and data.get("text"):
                yield chunk({"content": data["text"]})
            elif kind == "error" or (kind == "done" and data.get("status") != "succeeded"):
                error = data.get("error") or {"code": "job_failed", "message": f"the job ended {data.get('status')}"}
                yield {"error": {"message": error.get("message", "the job failed"), "type": "server_error",
                                 "param": None, "code": error.get("code", "job_failed")}}
                return
            elif kind == "done":
                outputs = (data.get("result") or {}).get("outputs") or [{}]
                yield chunk({}, outputs[0].get("finish_reason", "stop"))
                if include_usage:
                    yield {**chunk({}), "choices": [], "usage": _usage(outputs[0])}
                return
    finally:
        events.close()  # a client that went away stops the generation


# --- errors in OpenAI's shape ---

# Cortex's error codes that OpenAI names otherwise.
_OPENAI_CODES = {"unknown_model": "model_not_found", "unknown_model_version": "model_not_found",
                 "unknown_task": "model_not_found", "missing_api_key": "invalid_api_key",
                 "rate_limited": "rate_limit_exceeded", "budget_exceeded": "insufficient_quota"}


def openai_error(error: CortexError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """A Cortex error as OpenAI answers it: its body, status and headers (Retry-After kept)."""
    code = _OPENAI_CODES.get(error.code, error.code)
    status = error.status
    details = error.public_details() or {}
    param = details.get("param")
    if status == 401:
        kind = "invalid_request_error"
    elif code == "model_not_found":
        kind, param = "invalid_request_error", "model"
    elif code == "insufficient_quota":  # OpenAI answers a spent budget with 429 insufficient_quota
        kind, status = "insufficient_quota", 429
    elif status == 429:
        kind = "rate_limit_error"
    elif status == 403:
        kind = "permission_error"
    elif status >= 500:
        kind = "server_error"
    else:
        # Cortex answers a well-formed request it cannot run with 422; OpenAI with 400.
        kind, status = "invalid_request_error", 400 if status == 422 else status
    message = error.message
    valid = details.get("valid")
    if code == "model_not_found" and isinstance(valid, list) and valid:
        message = f"{message} Models: {', '.join(map(str, valid))}."
    return ({"error": {"message": message, "type": kind, "param": param, "code": code}}, status,
            dict(error.headers or {}))
