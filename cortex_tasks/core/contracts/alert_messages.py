"""The messages of the alert tasks (task_names.ALERTS_*), with the conventions of job_messages.py (strict,
frozen, `version` 1 when absent, extra fields ignored, `to_kwargs()` to send, `read_message` to receive)."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from cortex_tasks.core.contracts.messages import VersionedMessage
from cortex_tasks.core.tenancy import TENANT_ID

SEVERITIES = ("high", "medium", "low")


class PolicyFields(VersionedMessage):
    grouping_window_s: float = Field(gt=0)
    max_per_group: int = Field(ge=1)
    cooldown_s: float = Field(ge=0)
    dedup_window_s: float = Field(ge=0)


class AlertMessage(VersionedMessage):
    """ALERTS_PROCESS_ALERT: one raised alert (core/alerting/intake.py), to be deduplicated, grouped, stored
    and, when the policy says so, notified. Times are ISO 8601 with a zone."""

    describes: ClassVar[str] = "alert message"

    version: Literal[1] = 1
    tenant: str = Field(pattern=TENANT_ID.pattern)
    source: str = Field(min_length=1, max_length=160)
    rule: str = Field(min_length=1, max_length=160)
    group_key: str = Field(max_length=512)
    severity: Literal["high", "medium", "low"]
    summary: str = Field(max_length=2000)
    details: dict[str, Any] = Field(default_factory=dict)
    occurred_at: str
    # When the intake accepted it: grouping, dedup and cooldown run on this clock (one clock for every
    # producer), occurred_at is the event's own time and only shown.
    raised_at: str
    dedup_key: str = Field(max_length=512)
    channels: list[str] = Field(default_factory=list)
    policy: PolicyFields | None = None


class GroupMessage(VersionedMessage):
    """ALERTS_CLOSE_GROUP: close one alert group whose grouping window has passed (its digest)."""

    describes: ClassVar[str] = "alert group message"

    version: Literal[1] = 1
    tenant: str = Field(pattern=TENANT_ID.pattern)
    group_id: str


class DeliveryMessage(VersionedMessage):
    """ALERTS_DELIVER_NOTIFICATION: one notification to one channel (an alert_deliveries row, which holds
    the channel and the notification), retried on its own so a dead channel delays nobody else."""

    describes: ClassVar[str] = "alert delivery message"

    version: Literal[1] = 1
    tenant: str = Field(pattern=TENANT_ID.pattern)
    delivery_id: str


class ReportMessage(VersionedMessage):
    """REPORTS_WRITE_REPORT: build and store one queued stream report (a stream_reports row)."""

    describes: ClassVar[str] = "report message"

    version: Literal[1] = 1
    tenant: str = Field(pattern=TENANT_ID.pattern)
    report_id: str
