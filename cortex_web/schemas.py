"""Request bodies (pydantic, strict: a string is not a number, a number is not a string)."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cortex_tasks.core.request_fields import WaitSeconds
from cortex_tasks.core.request_fields import storable
from cortex_tasks.core.tenancy import TENANT_ID
from cortex_tasks.core.validation import timeseries as timeseries_inputs

MAX_INPUTS = 32
# name or name@version: letters, digits, dot, dash, underscore. Nothing path-like.
MODEL_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[0-9A-Za-z._-]{1,32})?$")


# Task input kinds checked by check_numeric_inputs (catalogue TaskEntry.input_kind).
NUMERIC_INPUT_KINDS = ("series", "series_or_rows")


def check_numeric_inputs(task_name: str, model_name: str, model_loader: str, inputs: list[Any],
                         params: dict[str, Any] | None) -> None:
    """Time-series inputs and params, checked as the worker checks them, so a bad request is a 422
    before anything is queued (params None: the items' shapes only)."""
    timeseries_inputs.check_request(task_name, model_name, model_loader, inputs, params)  # JobInputError: a 422


def implied_model(task_name: str, params: dict[str, Any], inputs: list[Any]) -> str | None:
    """The model a time-series request that names none runs: params.method's, or isolation-forest for
    anomaly feature rows; None for the task's default (and for every other task)."""
    return timeseries_inputs.implied_model(task_name, params, inputs)


def check_model_reference(value: str | None) -> str | None:
    if value is None:
        return value
    if ".." in value or "/" in value or "\\" in value or not MODEL_REFERENCE.match(value):
        raise ValueError("must be a model name, optionally with @version (letters, digits, '.', '-', '_')")
    return value


def storable_params(params: dict[str, Any]) -> dict[str, Any]:
    """Params are kept with the job (PostgreSQL JSON), which refuses NUL and unpaired surrogates: such a
    request was a 500, or a broken event stream on /predict/stream."""
    return storable(params, "params")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=64)
    inputs: list[Any] = Field(min_length=1, max_length=MAX_INPUTS)
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Literal["high", "normal", "low"] = "normal"
    wait: WaitSeconds = Field(default=None, ge=0, le=30)
    # Personal data: never cached, and sealed (or not kept) at rest. Always so for pii_detect and pii_mask.
    sensitive: bool = False

    _check_model = field_validator("model")(classmethod(lambda cls, value: check_model_reference(value)))
    _storable = field_validator("params")(classmethod(lambda cls, value: storable_params(value)))


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["reader", "inference_user", "model_admin", "platform_admin"]
    # PostgreSQL text cannot hold U+0000: such a name was a 500 (and an audit event that could never be written).
    name: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00]*$")
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)
    tier: str = Field(default="default", min_length=1, max_length=32)  # checked against the configured tiers
    # The key's tenant: the caller's own when absent; another one only for the platform admin.
    tenant: str | None = Field(default=None, pattern=TENANT_ID.pattern.join("^$"))
    # The only model names / tasks the key may use (absent: any).
    models: list[Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00@]+$")]] | None = Field(
        default=None, max_length=100)
    tasks: list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]] | None = Field(
        default=None, max_length=100)


class CreateTenantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tenant: str = Field(pattern=TENANT_ID.pattern.join("^$"),
                        description="1-64 lower-case letters, digits, '-' or '_', starting with a letter or digit.")
    name: str | None = Field(default=None, max_length=200, pattern=r"^[^\x00]*$")


class PipelineStep(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=64)
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    _check_model = field_validator("model")(classmethod(lambda cls, value: check_model_reference(value)))
    _storable = field_validator("params")(classmethod(lambda cls, value: storable_params(value)))


class PipelineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    steps: list[PipelineStep] = Field(min_length=1, max_length=8)
    inputs: list[Any] = Field(min_length=1, max_length=MAX_INPUTS)
    priority: Literal["high", "normal", "low"] = "normal"
    wait: WaitSeconds = Field(default=None, ge=0, le=60)
    sensitive: bool = False
