"""Response bodies of the alert and report routes, for the OpenAPI document only (as responses.py)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from cortex_web.responses import _Response


class AlertRecord(_Response):
    id: str
    source: str = Field(description="cortex, or stream:<name>.")
    stream: str | None = Field(description="The stream's name for a stream alert.")
    rule: str
    group_key: str
    group_id: str
    severity: Literal["high", "medium", "low"]
    summary: str
    details: dict[str, Any]
    dedup_key: str = Field(description="Repeats with this key within the dedup window are folded into it.")
    state: Literal["open", "acknowledged", "resolved"]
    occurrences: int = Field(description="Repeats of this alert within the dedup window, folded in.")
    notified: bool = Field(description="Sent to the channels (at once, or in its group's digest).")
    occurred_at: str
    first_seen_at: str
    last_seen_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None
    resolved_at: str | None
    resolved_by: str | None


class AlertDetail(AlertRecord):
    group: dict[str, Any] = Field(description="Its group: window, alerts kept and folded, notices, policy.")
    deliveries: list[dict[str, Any]] = Field(description="Each notice of the group to each channel, and how it went.")


class AlertPage(_Response):
    alerts: list[AlertRecord]
    page: int
    size: int
    next_page: int | None = Field(description="The next page's number; null on the last page.")


class AlertChannelRecord(_Response):
    id: str
    name: str
    kind: Literal["webhook", "email"]
    default: bool
    url: str | None = Field(default=None, description="webhook: shortened (the path is a secret).")
    recipients: list[str] | None = Field(default=None, description="email: the addresses.")
    created_by: str | None
    created_at: str


class AlertChannelList(_Response):
    channels: list[AlertChannelRecord]


class AlertChannelDeleted(_Response):
    name: str
    deleted: bool


class ReportRecord(_Response):
    id: str
    stream: str
    from_: str = Field(alias="from")
    to: str
    trigger: Literal["schedule", "request"]
    status: Literal["queued", "running", "ready", "failed"]
    summary: dict[str, Any] | None
    error: str | None
    requested_by: str | None
    created_at: str
    finished_at: str | None
    links: dict[str, str | None] = Field(description="self, and html and data once ready.")


class ReportPage(_Response):
    reports: list[ReportRecord]
    page: int
    size: int
    next_page: int | None = Field(description="The next page's number; null on the last page.")
