"""One delivery attempt of one notification to one channel, recorded in its alert_deliveries row."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.tables import AlertChannel, AlertDelivery
from cortex_tasks.runtime.alerting.channels import DeliveryFailed, Target, send

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True)
class Attempt:
    status: str  # delivered | failed | retry | skipped
    error: str | None = None


def _target(channel: str) -> Target | None:
    """The channel a delivery names: an operator channel of the settings, or one of the tenant's."""
    alerts = get_settings().alerts
    if channel.startswith("operator:webhook:"):
        index = int(channel.rsplit(":", 1)[1])
        return Target("webhook", url=alerts.operator_webhooks[index]) if index < len(alerts.operator_webhooks) else None
    if channel == "operator:email":
        return Target("email", recipients=alerts.operator_emails) if alerts.operator_emails else None
    with session_scope() as session:
        row = session.execute(select(AlertChannel).where(AlertChannel.name == channel)).scalar()
        if row is None:
            return None
        if row.kind == "webhook":
            return Target("webhook", url=row.target["url"])
        return Target("email", recipients=tuple(row.target["recipients"]))


def attempt(delivery_id: str) -> Attempt:
    """Send once. A pending delivery whose retries are used up, or whose failure retrying cannot mend,
    becomes failed; one that may still go through stays pending and says `retry`."""
    with session_scope() as session:
        row = session.execute(select(AlertDelivery).where(AlertDelivery.id == delivery_id)).scalar()
        if row is None or row.status != "pending":
            return Attempt("skipped")  # delivered or given up already (a redelivered message)
        channel, notice = row.channel, row.notification
    target = _target(channel)
    error: str | None = None
    permanent = False
    if target is None:
        error, permanent = "the channel no longer exists", True
    else:
        try:
            send(target, notice)
        except DeliveryFailed as exc:
            error, permanent = str(exc), exc.permanent
    retries = get_settings().alerts.delivery_retries
    with session_scope() as session:
        row = session.execute(select(AlertDelivery).where(AlertDelivery.id == delivery_id).with_for_update()).scalar_one()
        row.attempts += 1
        if error is None:
            row.status, row.delivered_at, row.last_error = "delivered", datetime.now(UTC), None
            return Attempt("delivered")
        row.last_error = error[:2000]
        if permanent or row.attempts > retries:
            row.status = "failed"
            log.warning("alert delivery %s to %s failed for good after %d attempts: %s",
                        delivery_id, channel, row.attempts, error)
            return Attempt("failed", error)
        log.info("alert delivery %s to %s failed (attempt %d), will retry: %s", delivery_id, channel,
                 row.attempts, error)
        return Attempt("retry", error)


def pending_deliveries(older_than: datetime) -> list[tuple[str, str]]:
    """(tenant, delivery id) of deliveries never attempted since before `older_than`: their message was
    lost between the commit that created them and the send (a worker killed in between)."""
    with session_scope() as session:
        return [(row.tenant, row.id) for row in session.execute(
            select(AlertDelivery.tenant, AlertDelivery.id).where(
                AlertDelivery.status == "pending", AlertDelivery.attempts == 0,
                AlertDelivery.created_at < older_than).limit(500))]
