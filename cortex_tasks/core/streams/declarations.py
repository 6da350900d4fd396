"""A stream's declaration (POST /api/v1/streams), validated once by the gateway and read by the stream worker.

A declaration says what an event holds (its fields and their types), which field is the event time, which
fields form the key (windows, temporal features and behaviour baselines are kept per key), which numeric
field the detectors score, the sliding window, the detectors with their parameters and the alert rules.
The validated declaration is stored as JSON (`streams.spec`) and parsed again by the worker with the same
model, so the two never disagree on a default.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

STREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
FIELD_TYPES = ("number", "integer", "string", "boolean", "timestamp")
NUMERIC_TYPES = ("number", "integer")
KEY_TYPES = ("string", "integer", "boolean")
DETECTOR_KINDS = ("robust_zscore", "seasonal_residual", "isolation_forest", "key_baseline")
SEVERITIES = ("high", "medium", "low")
MAX_FIELDS = 64
MAX_DETECTORS = 8
MAX_RULES = 32

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def seconds_of(raw: Any) -> float:
    """Seconds from a number of seconds or `50ms`, `30s`, `5m`, `1h`, `7d`."""
    if isinstance(raw, bool):
        raise ValueError("a duration is a number of seconds or a string like 50ms, 30s, 5m, 1h")
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str) and (match := _DURATION.fullmatch(raw.lower())):
        value = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"{raw!r} is not a duration (a number of seconds, or like 50ms, 30s, 5m, 1h)")
    if not value > 0:
        raise ValueError("a duration must be positive")
    return value


DURATION_TEXT = r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h|d)?\s*$"
# A positive duration: seconds, or a string like 50ms, 30s, 5m, 1h, 7d (the documents say both).
Duration = Annotated[float, WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                                      {"type": "string", "pattern": DURATION_TEXT}]})]
# The same, where 0 is allowed (a window's overlap).
DurationOrZero = Annotated[float, WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                                                            {"type": "string", "pattern": DURATION_TEXT}]})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FieldSpec(_Strict):
    name: str
    type: Literal["number", "integer", "string", "boolean", "timestamp"]
    required: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not FIELD_NAME.fullmatch(name):
            raise ValueError("a field name is 1-64 letters, digits, _ . or -, not starting with a digit")
        return name


class WindowSpec(_Strict):
    """Sliding windows per key: `size` long, each starting `size - overlap` after the one before."""

    size: Duration = 300.0
    overlap: DurationOrZero = 30.0

    @field_validator("size", "overlap", mode="before")
    @classmethod
    def _duration(cls, raw: Any) -> Any:
        zero = (isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == 0) or (
            isinstance(raw, str) and (match := _DURATION.fullmatch(raw.lower())) is not None
            and float(match.group(1)) == 0)
        return 0.0 if zero else seconds_of(raw)  # no overlap: windows side by side

    @model_validator(mode="after")
    def _overlap_below_size(self) -> WindowSpec:
        if self.size > 7 * 86400:
            raise ValueError("size: a window is at most 7d")
        if self.overlap >= self.size:
            raise ValueError("overlap must be shorter than size")
        return self

    @property
    def hop(self) -> float:
        return self.size - self.overlap


class RobustZScore(_Strict):
    """|value - median| / (1.4826 x MAD) against the key's current window."""

    kind: Literal["robust_zscore"]
    threshold: float = Field(default=3.5, gt=0)
    min_points: int = Field(default=10, ge=3, le=100_000)


class SeasonalResidual(_Strict):
    """Residual from the key's seasonal profile (the mean of its phase over past periods), in standard
    deviations of that phase; or, with `model`, from a forecast model registered in Cortex."""

    kind: Literal["seasonal_residual"]
    threshold: float = Field(default=4.0, gt=0)
    period: Duration = 86400.0
    buckets: int = Field(default=24, ge=2, le=1440)
    min_points: int = Field(default=5, ge=2, le=100_000)  # per phase bucket
    model: str | None = Field(default=None, max_length=200)  # "name@version" of a registered forecaster
    horizon: int = Field(default=200, ge=1, le=10_000)  # forecast periods a model is asked for

    @field_validator("period", mode="before")
    @classmethod
    def _duration(cls, raw: Any) -> Any:
        return seconds_of(raw)

    @field_validator("model")
    @classmethod
    def _reference(cls, model: str | None) -> str | None:
        if model is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*@[0-9]+", model):
            raise ValueError("model is a registered forecast model's `name@version`")
        return model


class IsolationForestSpec(_Strict):
    """scikit-learn IsolationForest on each event's feature row, fitted per stream on recent rows."""

    kind: Literal["isolation_forest"]
    contamination: float = Field(default=0.01, gt=0, le=0.5)
    min_rows: int = Field(default=200, ge=20, le=100_000)
    refit_every: int = Field(default=1000, ge=10, le=1_000_000)  # events between refits
    max_rows: int = Field(default=5000, ge=50, le=100_000)  # recent rows a fit uses
    trees: int = Field(default=100, ge=10, le=500)


class KeyBaseline(_Strict):
    """The key's recent behaviour (mean over the current window) against its own longer history."""

    kind: Literal["key_baseline"]
    threshold: float = Field(default=4.0, gt=0)
    min_history: int = Field(default=30, ge=5, le=1_000_000)  # the key's events before the window
    min_recent: int = Field(default=3, ge=1, le=10_000)  # events in the window
    # The share of the window (its latest events and the event) compared with the trend of the rest of it.
    recent_share: float = Field(default=0.2, gt=0, lt=1)
    # The whole history is compared with only once it is this many windows long (in events).
    history_windows: float = Field(default=6.0, ge=0, le=100_000)


DetectorSpec = Annotated[RobustZScore | SeasonalResidual | IsolationForestSpec | KeyBaseline,
                         Field(discriminator="kind")]


class AlertRuleSpec(_Strict):
    """When a verdict matches (detector, |score| >= min_score), an alert goes to the alerting intake."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    detector: Literal["robust_zscore", "seasonal_residual", "isolation_forest", "key_baseline", "any"] = "any"
    min_score: float = Field(default=0.0, ge=0)
    severity: Literal["high", "medium", "low"] = "medium"
    channels: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list,
                                                                                max_length=16)
    fields: list[str] = Field(default_factory=list, max_length=16)  # event fields copied into the alert
    # Aggregation; all unset: the alerting settings' defaults.
    grouping_window: Duration | None = None
    max_per_group: int | None = Field(default=None, ge=1, le=10_000)
    cooldown: Duration | None = None
    dedup_window: Duration | None = None

    @field_validator("grouping_window", "cooldown", "dedup_window", mode="before")
    @classmethod
    def _duration(cls, raw: Any) -> Any:
        return None if raw is None else seconds_of(raw)


class StreamSpec(_Strict):
    """POST /api/v1/streams."""

    name: str
    fields: list[FieldSpec] = Field(min_length=2, max_length=MAX_FIELDS)
    timestamp_field: str
    key_fields: list[str] = Field(default_factory=list, max_length=4)
    value_field: str
    window: WindowSpec = Field(default_factory=WindowSpec)
    detectors: list[DetectorSpec] = Field(default_factory=lambda: [RobustZScore(kind="robust_zscore")],
                                          max_length=MAX_DETECTORS)
    alert_rules: list[AlertRuleSpec] = Field(default_factory=list, max_length=MAX_RULES)
    latency_threshold: Duration = 0.05  # seconds from the XADD to the stored verdict

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not STREAM_NAME.fullmatch(name):
            raise ValueError("a stream name is 1-63 lower-case letters, digits, _ or -")
        return name

    @field_validator("latency_threshold", mode="before")
    @classmethod
    def _duration(cls, raw: Any) -> Any:
        return seconds_of(raw)

    @model_validator(mode="after")
    def _consistent(self) -> StreamSpec:
        types = {}
        for field in self.fields:
            if field.name in types:
                raise ValueError(f"fields: {field.name!r} is declared twice")
            types[field.name] = field.type
        required = {field.name for field in self.fields if field.required}
        if types.get(self.timestamp_field) != "timestamp":
            raise ValueError(f"timestamp_field: {self.timestamp_field!r} must be a declared field of type timestamp")
        if self.timestamp_field not in required:
            raise ValueError("timestamp_field: the event time must be a required field")
        if types.get(self.value_field) not in NUMERIC_TYPES or self.value_field not in required:
            raise ValueError(f"value_field: {self.value_field!r} must be a required field of type number or integer")
        for name in self.key_fields:
            if types.get(name) not in KEY_TYPES or name not in required:
                raise ValueError(f"key_fields: {name!r} must be a required field of type string, integer or boolean")
        kinds = [detector.kind for detector in self.detectors]
        if len(set(kinds)) != len(kinds):
            raise ValueError("detectors: each kind at most once")
        rule_names = [rule.name for rule in self.alert_rules]
        if len(set(rule_names)) != len(rule_names):
            raise ValueError("alert_rules: rule names must be unique")
        for rule in self.alert_rules:
            if rule.detector != "any" and rule.detector not in kinds:
                raise ValueError(f"alert_rules: rule {rule.name!r} names detector {rule.detector!r}, "
                                 "which the stream does not run")
            for name in rule.fields:
                if name not in types:
                    raise ValueError(f"alert_rules: rule {rule.name!r} names field {name!r}, which is not declared")
        return self

    def field_types(self) -> dict[str, str]:
        return {field.name: field.type for field in self.fields}

    def detector(self, kind: str) -> Any | None:
        return next((detector for detector in self.detectors if detector.kind == kind), None)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
