"""How a notification is rendered and sent: a Slack-compatible webhook (JSON with `text`, `blocks` and
`attachments`; Slack, Mattermost, Rocket.Chat and most chat tools' incoming webhooks read it) or an e-mail
through the configured SMTP server (Python's smtplib). A send either returns or raises DeliveryFailed;
retrying is the delivery task's business (runtime/alerting/tasks.py)."""
from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import requests

from cortex_tasks.core.alerting.storage import check_webhook_url
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import get_settings

SEVERITY_COLOURS = {"high": "#d32f2f", "medium": "#f9a825", "low": "#1976d2"}
MAX_LISTED = 10  # Slack takes at most 50 blocks; max_per_group bounds what a notice holds anyway


class DeliveryFailed(Exception):
    """A send that did not go through. `permanent`: retrying cannot help (a 4xx other than 408/429, a
    refused URL, no SMTP server configured)."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Target:
    kind: str  # webhook | email
    url: str | None = None
    recipients: tuple[str, ...] = ()


def title(notice: dict[str, Any]) -> str:
    severity = notice["severity"].upper()
    where = f"{notice['source']} · {notice['rule']}" + (f" · {notice['group_key']}" if notice["group_key"] else "")
    alerts = notice["alerts"]
    if notice["kind"] == "first" and alerts:
        return f"[{severity}] {where}: {alerts[0]['summary']}"
    total = len(alerts) + notice["folded"]
    return f"[{severity}] {where}: {total} alert{'s' if total != 1 else ''} in the group's window"


def _footnotes(notice: dict[str, Any]) -> list[str]:
    notes = []
    if notice["folded"]:
        notes.append(f"{notice['folded']} more past the group's limit (counted, not listed)")
    if notice["held_back"]:
        notes.append(f"{notice['held_back']} held back by the cooldown since the last notice")
    notes.append(f"group {notice['group_id']} · tenant {notice['tenant']}")
    return notes


def _line(alert: dict[str, Any]) -> str:
    repeats = f" (×{alert['occurrences']})" if alert["occurrences"] > 1 else ""
    return f"• *{alert['severity']}* {alert['summary']}{repeats} — {alert['occurred_at']}"


def slack_payload(notice: dict[str, Any]) -> dict[str, Any]:
    heading = title(notice)
    listed = notice["alerts"][:MAX_LISTED]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": heading[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(_line(alert) for alert in listed)[:3000]
                                     or "(no alert listed)"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": note} for note in _footnotes(notice)]},
    ]
    fields = [{"title": "Source", "value": notice["source"], "short": True},
              {"title": "Rule", "value": notice["rule"], "short": True},
              {"title": "Key", "value": notice["group_key"] or "-", "short": True},
              {"title": "Alerts", "value": str(len(notice["alerts"]) + notice["folded"]), "short": True}]
    return {"text": heading, "blocks": blocks,
            "attachments": [{"color": SEVERITY_COLOURS.get(notice["severity"], "#757575"), "fallback": heading,
                             "fields": fields}]}


def email_message(notice: dict[str, Any], sender: str, recipients: tuple[str, ...]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = title(notice)[:200]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    lines = [title(notice), ""]
    for alert in notice["alerts"]:
        repeats = f" (x{alert['occurrences']})" if alert["occurrences"] > 1 else ""
        lines.append(f"- [{alert['severity']}] {alert['summary']}{repeats} at {alert['occurred_at']} (alert {alert['id']})")
    lines += ["", *_footnotes(notice)]
    message.set_content("\n".join(lines))
    return message


def send(target: Target, notice: dict[str, Any]) -> None:
    if target.kind == "webhook":
        assert target.url is not None
        _post(target.url, slack_payload(notice))
    elif target.kind == "email":
        _mail(target.recipients, notice)
    else:
        raise DeliveryFailed(f"unknown channel kind {target.kind!r}", permanent=True)


def _post(url: str, payload: dict[str, Any]) -> None:
    try:
        check_webhook_url(url, resolve=True)  # again at send time: a name may resolve elsewhere now
    except CortexError as exc:
        raise DeliveryFailed(exc.message, permanent=True) from None
    timeout = get_settings().alerts.delivery_timeout_seconds
    try:
        # No redirects: a redirect could lead a tenant's webhook to an address the URL check refused.
        response = requests.post(url, json=payload, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise DeliveryFailed(f"webhook unreachable: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 300:
        permanent = 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429)
        raise DeliveryFailed(f"webhook answered {response.status_code}: {response.text[:200]}", permanent=permanent)


def _mail(recipients: tuple[str, ...], notice: dict[str, Any]) -> None:
    alerts = get_settings().alerts
    if not alerts.smtp_configured:
        raise DeliveryFailed("no SMTP server is configured (CORTEX_SMTP_HOST)", permanent=True)
    assert alerts.smtp_host is not None
    message = email_message(notice, alerts.smtp_sender, recipients)
    timeout = alerts.delivery_timeout_seconds
    try:
        if alerts.smtp_security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(alerts.smtp_host, alerts.smtp_port, timeout=timeout,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(alerts.smtp_host, alerts.smtp_port, timeout=timeout)
        with client:
            if alerts.smtp_security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if alerts.smtp_user:
                client.login(alerts.smtp_user, alerts.smtp_password or "")
            client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryFailed(f"SMTP refused the recipients: {exc.recipients}", permanent=True) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryFailed(f"SMTP: {type(exc).__name__}: {exc}") from None
