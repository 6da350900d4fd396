"""Reading a JSON body defensively: content type, size, depth, non-finite numbers, then a pydantic model."""
from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request
from pydantic import BaseModel, ValidationError

from cortex_tasks.core.catalogue import TASKS
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.validation.items import CONTROL_CHARACTERS
from cortex_web.errors import ApiError

__all__ = ["CONTROL_CHARACTERS", "MAX_QUERY_INT", "accepts_body_up_to", "accepts_images", "json_body",
           "parse_body", "positive_int_arg"]  # the rule's home: items.py

Model = TypeVar("Model", bound=BaseModel)
View = TypeVar("View", bound=Callable[..., Any])


def accepts_body_up_to(max_bytes: int) -> Callable[[View], View]:
    """A route whose bodies may be larger than the app's MAX_CONTENT_LENGTH (batch inputs, training rows).

    The limit is applied before the request is dispatched (`apply_route_body_limit`), not in the view: the
    decorators around it (rate limits, audit) read the body first, and refused a valid 3.2 MB batch with
    413 "larger than 2097152 bytes" when the view raised the limit itself."""
    def mark(view: View) -> View:
        view.max_body_bytes = max_bytes  # type: ignore[attr-defined]
        return view

    return mark


def apply_route_body_limit(app: Flask) -> None:
    """before_request: the body limit of the route about to run (accepts_body_up_to), if it has one."""
    view = app.view_functions.get(request.endpoint or "")
    limit = getattr(view, "max_body_bytes", None)
    if callable(limit):  # read from the settings per request (accepts_images)
        limit = limit()
    if limit is not None:
        request.max_content_length = limit


def accepts_images(at_least: int = 0) -> Callable[[View], View]:
    """A route that takes image inputs: its body may be as large as CORTEX_IMAGE_MAX_REQUEST_BYTES (or
    `at_least`), and it also takes a multipart/form-data upload (see `_multipart_body`)."""
    def mark(view: View) -> View:
        view.max_body_bytes = lambda: max(at_least, get_settings().image_max_request_bytes)  # type: ignore[attr-defined]
        view.takes_uploads = True  # type: ignore[attr-defined]
        return view

    return mark


# Form fields of an upload whose values are JSON (the others are plain strings).
JSON_FORM_FIELDS = ("params", "wait", "sensitive")


def _multipart_body() -> dict[str, Any]:
    """The JSON body a multipart upload stands for: a `request` field holding the JSON body (or fields
    `task`, `model`, `priority` as text and `params`, `wait`, `sensitive` as JSON), and each file of the
    field `inputs`, in order, an input after any inputs the JSON gave: {"image": <its base64>} (so that
    uploads pass the same checks as base64 images), or {"audio": <its base64>, "filename"} for transcribe."""
    form = request.form
    body: dict[str, Any] = {}
    if "request" in form:
        try:
            body = json.loads(form["request"], parse_constant=_reject_constant)
        except ValueError as exc:
            raise ApiError(400, "malformed_json", f"The form field 'request' is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_request", "The form field 'request' must hold a JSON object.")
    for name, value in form.items():
        if name == "request":
            continue
        if name in JSON_FORM_FIELDS:
            try:
                body[name] = json.loads(value, parse_constant=_reject_constant)
            except ValueError:
                raise ApiError(400, "malformed_json", f"The form field {name!r} is not valid JSON.") from None
        else:
            body[name] = value
    files = request.files.getlist("inputs")
    unexpected = sorted(set(request.files) - {"inputs"})
    if unexpected:
        raise ApiError(422, "invalid_request", f"Upload files in the field 'inputs', not {unexpected[0]!r}.")
    if files:
        given = body.get("inputs", [])
        if not isinstance(given, list):
            raise ApiError(422, "invalid_request", "inputs must be a list")
        task = TASKS.get(body["task"]) if isinstance(body.get("task"), str) else None
        if task is not None and task.input_kind == "audio":  # a recording keeps its name: it tells the format
            body["inputs"] = given + [{"audio": base64.b64encode(file.read()).decode("ascii"),
                                       **({"filename": file.filename} if file.filename else {})} for file in files]
        else:
            body["inputs"] = given + [{"image": base64.b64encode(file.read()).decode("ascii")} for file in files]
    return body


def _reject_constant(name: str) -> Any:
    raise ApiError(400, "non_finite_number", f"{name} is not a valid JSON number; use finite numbers only.")


def _depth(value: Any, limit: int) -> int:
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def json_body(max_depth: int) -> Any:
    """The request's JSON, decoded once per request: the rate limiter reads it before the view does.
    Raises the ApiError that says what is wrong with it (the same one each time it is asked)."""
    cached = g.get("json_body")
    if cached is None or cached[0] != max_depth:
        try:
            cached = (max_depth, _decode_json_body(max_depth), None)
        except ApiError as exc:
            cached = (max_depth, None, exc)
        g.json_body = cached
    _, body, error = cached
    if error is not None:
        raise error
    return body


def _decode_json_body(max_depth: int) -> Any:
    view = current_app.view_functions.get(request.endpoint or "")
    if request.mimetype == "multipart/form-data" and getattr(view, "takes_uploads", False):
        body = _multipart_body()
        if _depth(body, max_depth) > max_depth:
            raise ApiError(400, "too_deeply_nested", f"JSON nesting is limited to {max_depth} levels.")
        return body
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with Content-Type: application/json.")
    raw = request.get_data(cache=True)
    if not raw:
        raise ApiError(400, "empty_body", "The request body is empty; a JSON object was expected.")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except ApiError:
        raise
    except RecursionError:
        raise ApiError(400, "too_deeply_nested", f"JSON nesting is limited to {max_depth} levels.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from None
    if _depth(body, max_depth) > max_depth:
        raise ApiError(400, "too_deeply_nested", f"JSON nesting is limited to {max_depth} levels.")
    return body


def parse_body(model: type[Model], max_depth: int) -> Model:
    body = json_body(max_depth)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "The body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(part) for part in error["loc"]) or "(body)", "problem": error["msg"]}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise ApiError(422, "invalid_request", f"{first['field']}: {first['problem']}",
                       {"problems": problems}) from None


# The largest number a query argument takes: a page number becomes an SQL OFFSET (page x size), which must
# fit PostgreSQL's bigint (a page of 10^35 was a 500); no listing has a million pages.
MAX_QUERY_INT = 1_000_000


def positive_int_arg(name: str, default: int, maximum: int = MAX_QUERY_INT) -> int:
    """A positive integer query argument (?page=, ?size=), `default` when absent; 422 when malformed or above
    `maximum`."""
    raw = request.args.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses.
    digits = raw.lstrip("0")
    if not (raw.isascii() and raw.isdigit()) or not digits:
        raise ApiError(422, "invalid_query", f"?{name}= must be a positive integer.")
    value = int(digits) if len(digits) <= len(str(maximum)) else maximum + 1  # int() of 5,000 digits raises
    if value > maximum:
        raise ApiError(422, "invalid_query", f"?{name}= is at most {maximum}.", {"max": maximum})
    return value
