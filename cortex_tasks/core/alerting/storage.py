"""Stored alerts and alert channels as the gateway reads and changes them (the alert worker writes them:
runtime/alerting/service.py). Every query runs in the caller's tenant (tables.TenantOwned)."""
from __future__ import annotations

import ipaddress
import re
import socket
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import get_settings
from cortex_tasks.core.storage.db import session_scope
from cortex_tasks.core.storage.storable import first_unstorable
from cortex_tasks.core.storage.tables import Alert, AlertChannel, AlertDelivery, AlertGroup

CORTEX_SOURCE = "cortex"
STATES = ("open", "acknowledged", "resolved")
CHANNEL_KINDS = ("webhook", "email")
CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A deliberately plain check (one @, a dotted domain, no spaces): the SMTP server is the real judge.
EMAIL = re.compile(r"[^@\s,;<>]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")
MAX_RECIPIENTS = 20
MAX_CHANNELS = 50


def operator_channel_ids() -> list[str]:
    """The operators' channels of Cortex's own alerts (CORTEX_ALERT_OPERATOR_WEBHOOKS / _EMAILS)."""
    alerts = get_settings().alerts
    ids = [f"operator:webhook:{index}" for index in range(len(alerts.operator_webhooks))]
    return ids + (["operator:email"] if alerts.operator_emails else [])


def alert_record(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "source": alert.source,
        "stream": alert.source.removeprefix("stream:") if alert.source.startswith("stream:") else None,
        "rule": alert.rule,
        "group_key": alert.group_key,
        "group_id": alert.group_id,
        "severity": alert.severity,
        "summary": alert.summary,
        "details": alert.details,
        "dedup_key": alert.dedup_key,
        "state": alert.state,
        "occurrences": alert.occurrences,
        "notified": alert.notified,
        "occurred_at": alert.occurred_at.isoformat(),
        "first_seen_at": alert.first_seen_at.isoformat(),
        "last_seen_at": alert.last_seen_at.isoformat(),
        "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
        "acknowledged_by": alert.acknowledged_by,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "resolved_by": alert.resolved_by,
    }


def _not_found(alert_id: str) -> CortexError:
    return CortexError("alert_not_found", f"No alert {alert_id!r}.", status=404)


def list_alerts(*, source: str | None = None, rule: str | None = None, state: str | None = None,
                page: int = 1, size: int = 50) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; one page and whether another follows."""
    statement = select(Alert)
    if source is not None:
        statement = statement.where(Alert.source == source)
    if rule is not None:
        statement = statement.where(Alert.rule == rule)
    if state is not None:
        statement = statement.where(Alert.state == state)
    statement = statement.order_by(Alert.first_seen_at.desc(), Alert.id).offset((page - 1) * size).limit(size + 1)
    with session_scope() as session:
        rows = session.execute(statement).scalars().all()
        return [alert_record(alert) for alert in rows[:size]], len(rows) > size


def get_alert(alert_id: str) -> dict[str, Any]:
    """One alert with its group (counts, notices) and the deliveries of its group's notices."""
    with session_scope() as session:
        alert = session.execute(select(Alert).where(Alert.id == alert_id)).scalar() if _is_uuid(alert_id) else None
        if alert is None:
            raise _not_found(alert_id)
        group = session.execute(select(AlertGroup).where(AlertGroup.id == alert.group_id)).scalar_one()
        deliveries = session.execute(select(AlertDelivery).where(AlertDelivery.group_id == group.id)
                                     .order_by(AlertDelivery.created_at)).scalars().all()
        return {**alert_record(alert), "group": {
            "id": group.id, "opened_at": group.opened_at.isoformat(), "closes_at": group.closes_at.isoformat(),
            "closed": group.closed, "alerts": group.alert_count, "folded": group.folded_count,
            "notified_at": group.notified_at.isoformat() if group.notified_at else None,
            "digest_at": group.digest_at.isoformat() if group.digest_at else None, "policy": group.policy,
        }, "deliveries": [{
            "channel": delivery.channel, "kind": delivery.kind, "status": delivery.status,
            "attempts": delivery.attempts, "last_error": delivery.last_error,
            "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
        } for delivery in deliveries]}


def change_state(alert_id: str, to: str, by: str | None, now: datetime | None = None) -> dict[str, Any]:
    """Acknowledge (open -> acknowledged) or resolve (open/acknowledged -> resolved). Doing it twice is
    harmless (the first time is kept); acknowledging a resolved alert is a 409."""
    now = now or datetime.now(UTC)
    with session_scope() as session:
        alert = session.execute(select(Alert).where(Alert.id == alert_id).with_for_update()).scalar() \
            if _is_uuid(alert_id) else None
        if alert is None:
            raise _not_found(alert_id)
        if to == "acknowledged":
            if alert.state == "resolved":
                raise CortexError("alert_resolved", f"Alert {alert_id!r} is resolved; there is nothing to "
                                  "acknowledge.", {"state": alert.state}, status=409)
            if alert.state == "open":
                alert.state, alert.acknowledged_at, alert.acknowledged_by = "acknowledged", now, by
        elif to == "resolved" and alert.state != "resolved":
            alert.state, alert.resolved_at, alert.resolved_by = "resolved", now, by
        session.flush()
        return alert_record(alert)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --- channels ---


def _private_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast \
        or ip.is_unspecified


def check_webhook_url(url: str, *, resolve: bool = False) -> str:
    """A webhook URL a tenant may use: http(s), a host, no credentials in it, and (unless
    CORTEX_ALERT_PRIVATE_WEBHOOKS) not an address of Cortex's own network. `resolve` also checks every
    address the host name resolves to now (the delivery does, against DNS tricks)."""
    def refused(why: str) -> CortexError:
        return CortexError("invalid_channel", f"Webhook URL refused: {why}.", {"field": "url"})

    if len(url) > 2048:
        raise refused("longer than 2048 characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url) or first_unstorable(url) is not None:
        raise refused("it holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refused(str(exc)) from None
    if parts.scheme not in ("http", "https"):
        raise refused("the scheme must be http or https")
    host = parts.hostname
    if not host:
        raise refused("it names no host")
    if parts.username or parts.password:
        raise refused("credentials belong in the path or a header, not before the host")
    if get_settings().alerts.private_webhooks:
        return url
    if host == "localhost" or host.endswith(".localhost"):
        raise refused("loopback hosts are not allowed (CORTEX_ALERT_PRIVATE_WEBHOOKS allows them)")
    try:
        if _private_address(host):
            raise refused("private, loopback and link-local addresses are not allowed "
                          "(CORTEX_ALERT_PRIVATE_WEBHOOKS allows them)")
    except ValueError:
        pass  # a name, not an address
    if resolve:
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80))
        except OSError as exc:
            raise refused(f"{host} does not resolve ({exc})") from None
        if any(_private_address(str(info[4][0]).split("%")[0]) for info in infos):
            raise refused(f"{host} resolves to a private address")
    return url


def _check_recipients(recipients: list[str]) -> list[str]:
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise CortexError("invalid_channel", f"An e-mail channel has 1..{MAX_RECIPIENTS} recipients.",
                          {"field": "recipients"})
    for address in recipients:
        if not EMAIL.fullmatch(address) or first_unstorable(address) is not None \
                or any(ord(char) < 0x20 for char in address):
            raise CortexError("invalid_channel", f"Not an e-mail address: {address!r}.", {"field": "recipients"})
    return recipients


def masked_url(url: str) -> str:
    """A webhook URL as the API shows it: the host, and only the end of the path (a Slack webhook's
    path is its secret)."""
    parts = urlsplit(url)
    tail = parts.path[-4:] if len(parts.path) > 8 else ""
    return f"{parts.scheme}://{parts.netloc}/…{tail}"


def channel_record(channel: AlertChannel) -> dict[str, Any]:
    target = dict(channel.target)
    if "url" in target:
        target["url"] = masked_url(target["url"])
    return {"id": channel.id, "name": channel.name, "kind": channel.kind, "default": channel.is_default,
            **target, "created_by": channel.created_by, "created_at": channel.created_at.isoformat()}


def create_channel(name: str, kind: str, *, url: str | None, recipients: list[str] | None,
                   default: bool, created_by: str | None) -> dict[str, Any]:
    if kind == "webhook":
        if url is None or recipients is not None:
            raise CortexError("invalid_channel", "A webhook channel takes `url` (and no `recipients`).",
                              {"field": "url"})
        target: dict[str, Any] = {"url": check_webhook_url(url)}
    else:
        if recipients is None or url is not None:
            raise CortexError("invalid_channel", "An e-mail channel takes `recipients` (and no `url`).",
                              {"field": "recipients"})
        target = {"recipients": _check_recipients(recipients)}
    channel = AlertChannel(id=str(uuid.uuid4()), name=name, kind=kind, target=target, is_default=default,
                           created_by=created_by)
    try:
        with session_scope() as session:
            if session.execute(select(func.count()).select_from(AlertChannel)).scalar_one() >= MAX_CHANNELS:
                raise CortexError("too_many_channels", f"A tenant has at most {MAX_CHANNELS} alert channels.",
                                  status=409)
            session.add(channel)
            session.flush()
            return channel_record(channel)
    except IntegrityError:
        raise CortexError("channel_exists", f"An alert channel named {name!r} exists.", {"name": name},
                          status=409) from None


def list_channels() -> list[dict[str, Any]]:
    with session_scope() as session:
        rows = session.execute(select(AlertChannel).order_by(AlertChannel.name)).scalars().all()
        return [channel_record(channel) for channel in rows]


def delete_channel(name: str) -> None:
    if not CHANNEL_NAME.fullmatch(name):  # no such name can exist (and a NUL would not reach the database)
        raise CortexError("channel_not_found", f"No alert channel named {name!r}.", status=404)
    with session_scope() as session:
        channel = session.execute(select(AlertChannel).where(AlertChannel.name == name)).scalar()
        if channel is None:
            raise CortexError("channel_not_found", f"No alert channel named {name!r}.", status=404)
        session.delete(channel)
