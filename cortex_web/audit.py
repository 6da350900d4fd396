"""The gateway's side of the audit log: events are buffered in process and written in bulk.

No request waits for the database. Handlers append to a buffer (model_access only bumps a counter per
key, model, action and minute); a background thread writes the buffer every `audit_flush_seconds`, or
sooner when it fills, and at process exit. A flush appends all its rows to the log's hash chain in one
transaction (one lock, one multi-row insert; core/audit/service.py); the log is append-only, so a
minute's model_access counts from several flushes or processes are several rows that readers sum. If the
database is down the events stay buffered and are retried; only past MAX_PENDING_EVENTS are the oldest
dropped, logged and counted (cortex_audit_events_dropped_total). A process killed with SIGKILL loses at most its last flush interval.

The same thread counts security violations into the shared alert windows (cortex_tasks.core.audit.alerts):
an alert is a WARNING log line, a metric and an `alerts` audit event.

What is recorded:
- security_violations: every 401 and 403, and every 429 of the rate limiter (after_request hook);
- model_access: successful calls of routes marked with `limits.limit_prediction` or `limit_model_work`;
- configuration_changes: routes marked with `@audited("key.create")` and the like, success or failure.
Every row names the actor's tenant, key and role, the action and the resource. Every state-changing
route is one or the other, or is listed with its reason in tests/unit/test_audited_routes.py.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import redis
from flask import Flask, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response

from cortex_tasks.core.audit.alerts import AlertTracker, FiredAlert
from cortex_tasks.core.audit.service import (
    ALERTS,
    CONFIGURATION_CHANGES,
    MODEL_ACCESS,
    SECURITY_VIOLATIONS,
    AuditRecord,
    ChainMissing,
    record_events,
)
from cortex_tasks.core.auth.keys import PREFIX
from cortex_tasks.core.errors import CortexError
from cortex_tasks.core.settings import Settings
from cortex_web.metrics import AUDIT_ALERTS, AUDIT_EVENTS_DROPPED

log = logging.getLogger("cortex.audit")
View = TypeVar("View", bound=Callable[..., Any])
FLUSH_AT_EVENTS = 1000  # wake the writer early when this many events wait
MAX_PENDING_EVENTS = 100_000
# Fields of a configuration change's request and response worth keeping (never the key secret itself).
DETAIL_FIELDS = ("key_id", "role", "tier", "name", "expires_in_days", "stage", "traffic", "traffic_percent",
                 "version", "to_version", "rolled_back_from", "action", "kind", "model", "job_id", "status",
                 "dimension", "metric", "collection", "deleted", "passages_deleted", "deleted_messages")
AccessKey = tuple[str | None, str, str | None, str, str, int]  # tenant, key id, role, model, action, minute
# What a view function carries to say how its calls are recorded (the route-coverage test reads it).
AUDIT_MARK = "cortex_audit"
MODEL_ACCESS_MARK = "model_access"


class AuditBuffer:
    def __init__(self, flush_seconds: float, alerts: AlertTracker | None = None,
                 log_level: int = logging.INFO) -> None:
        self._flush_seconds = flush_seconds
        self._alerts = alerts
        self._log_level = log_level
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time (the thread, a test, atexit)
        self._events: list[AuditRecord] = []
        self._access: Counter[AccessKey] = Counter()
        self._wake = threading.Event()
        self._owner_pid: int | None = None  # the process whose thread drains this buffer

    # --- the request side: cheap, no I/O ---

    def add(self, record: AuditRecord) -> None:
        self._ensure_writer()
        with self._lock:
            self._events.append(record)
            waiting = len(self._events)
        if waiting >= FLUSH_AT_EVENTS:
            self._wake.set()

    def count_access(self, tenant: str | None, key_id: str, role: str | None, models: list[str],
                     action: str) -> None:
        self._ensure_writer()
        minute = int(time.time() // 60)
        with self._lock:
            for model in models:
                self._access[(tenant, key_id, role, model, action, minute)] += 1

    def _ensure_writer(self) -> None:
        pid = os.getpid()
        if self._owner_pid == pid:
            return
        with self._lock:
            if self._owner_pid == pid:
                return
            if self._owner_pid is not None:  # forked: the parent's events are the parent's to write
                self._events, self._access = [], Counter()
            self._owner_pid = pid
            threading.Thread(target=self._run, name="audit-writer", daemon=True).start()

    # --- the writer side ---

    def _run(self) -> None:
        while True:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let the writer thread die
                log.exception("audit: flush failed")

    def _take(self) -> tuple[list[AuditRecord], Counter[AccessKey]]:
        with self._lock:
            events, access = self._events, self._access
            self._events, self._access = [], Counter()
        return events, access

    def _give_back(self, events: list[AuditRecord], access: Counter[AccessKey]) -> None:
        with self._lock:
            self._events = events + self._events
            self._access.update(access)
            overflow = len(self._events) - MAX_PENDING_EVENTS
            if overflow > 0:
                del self._events[:overflow]
        if overflow > 0:
            AUDIT_EVENTS_DROPPED.inc(overflow)
            log.error("audit: database unreachable; dropped the %d oldest buffered events", overflow)

    def flush(self) -> int:
        """Write what is buffered now; returns how many rows were written (0 if it failed)."""
        with self._flush_lock:
            events, access = self._take()
            if not events and not access:
                return 0
            events = _merge_repeated_violations(events)
            events += self._check_alerts(events)
            rows = events + [
                AuditRecord(MODEL_ACCESS, action, "success", actor_key_id=key_id, actor_role=role, resource=model,
                            at=datetime.fromtimestamp(minute * 60, UTC), count=count, tenant=tenant)
                for (tenant, key_id, role, model, action, minute), count in access.items()]
            try:
                written = record_events(rows)
            except (SQLAlchemyError, OSError, ChainMissing) as exc:
                log.warning("audit: could not write %d events, will retry: %s", len(rows), exc)
                self._give_back([event for event in events if event.event_type != ALERTS], access)
                return 0
            for event in events:
                log.log(self._log_level, "audit %s %s outcome=%s tenant=%s actor=%s resource=%s ip=%s count=%d",
                        event.event_type, event.action, event.outcome, event.tenant, event.actor_key_id,
                        event.resource, event.ip, event.count)
            return written

    def _check_alerts(self, events: list[AuditRecord]) -> list[AuditRecord]:
        if self._alerts is None:
            return []
        subjects: Counter[str] = Counter()
        for event in events:
            if event.event_type == SECURITY_VIOLATIONS:
                if event.actor_key_id:
                    subjects[f"key:{event.actor_key_id}"] += event.count
                if event.ip:
                    subjects[f"ip:{event.ip}"] += event.count
        try:
            fired = self._alerts.observe(subjects)
        except redis.RedisError as exc:
            log.warning("audit: alert windows unavailable: %s", exc)
            return []
        return [_alert_record(alert) for alert in fired]

    def close(self) -> None:
        """At exit: a last flush, retried briefly, so events accepted before shutdown are written."""
        if self._owner_pid != os.getpid():
            return
        for _ in range(3):
            self.flush()
            with self._lock:
                if not self._events and not self._access:
                    return
            time.sleep(0.5)
        log.error("audit: %d events could not be written before exit", len(self._events) + len(self._access))


def _merge_repeated_violations(events: list[AuditRecord]) -> list[AuditRecord]:
    """One row (with a count) for identical violations in one flush: a client hammering with a bad key
    or past its rate limit must not turn into thousands of rows a second."""
    merged: dict[tuple[Any, ...], AuditRecord] = {}
    out: list[AuditRecord] = []
    for event in events:
        if event.event_type != SECURITY_VIOLATIONS:
            out.append(event)
            continue
        same = (event.action, event.outcome, event.tenant, event.actor_key_id, event.actor_role, event.resource,
                event.ip)
        first = merged.get(same)
        if first is None:
            merged[same] = event
            out.append(event)
        else:
            first.count += event.count
            if first.details is not None:
                first.details["last_at"] = event.at.isoformat()
    return out


def _alert_record(alert: FiredAlert) -> AuditRecord:
    kind, _, value = alert.subject.partition(":")
    log.warning("audit alert %s: %s reached %d security violations within %ds (threshold %d)",
                alert.type, alert.subject, alert.count, int(alert.window_seconds), alert.threshold,
                extra={"alert_type": alert.type, "subject": alert.subject, "violations": alert.count})
    AUDIT_ALERTS.labels(alert.type).inc()
    return AuditRecord(ALERTS, alert.type, "fired", actor_key_id=value if kind == "key" else None,
                       ip=value if kind == "ip" else None, resource=alert.subject,
                       details={"violations": alert.count, "threshold": alert.threshold,
                                "window_seconds": alert.window_seconds})


def audit_buffer() -> AuditBuffer | None:
    return current_app.extensions.get("cortex_audit")


def _route() -> str:
    return f"{request.method} {request.url_rule.rule if request.url_rule else request.path}"


def _claimed_key_id() -> str | None:
    """The id part of a presented `ctx_<id>_<secret>` key (never the secret), or the client id a token
    request names (HTTP Basic or the client_id field), for 401s."""
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic " and request.authorization is not None:
        client_id = request.authorization.username or ""
        return client_id[:16] if client_id.isalnum() else None
    if request.mimetype == "application/x-www-form-urlencoded" and "client_id" in request.form:
        client_id = request.form["client_id"]
        return client_id[:16] if client_id.isalnum() else None
    presented = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("X-API-Key", "")
    parts = presented.split("_", 2)
    if len(parts) == 3 and parts[0] == PREFIX and parts[1].isalnum():
        return parts[1][:16]
    return None


def _error_code(response: Response) -> str | None:
    """The error code of an error answer: Cortex's `{"error": {"code"}}` or OAuth2's `{"error": "<code>"}`."""
    body = response.get_json(silent=True) if response.is_json else None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error.get("code")
    return error if isinstance(error, str) else None


def init_app(app: Flask, client: redis.Redis, settings: Settings) -> None:
    if not settings.audit_enabled:
        return
    buffer = AuditBuffer(settings.audit_flush_seconds, AlertTracker(client, settings.audit_alerts),
                         logging.getLevelName(settings.audit_log_level) if settings.audit_log_level in
                         ("DEBUG", "INFO", "WARNING", "ERROR") else logging.INFO)
    app.extensions["cortex_audit"] = buffer
    atexit.register(buffer.close)

    @app.after_request
    def _audit_request(response: Response) -> Response:
        status = response.status_code
        if status < 400:
            models = g.get("audit_models")
            if models:
                principal = g.principal
                buffer.count_access(principal.tenant, principal.key_id, principal.role, models,
                                    request.endpoint or "")
        elif status in (401, 403) or (status == 429 and g.get("rate_limited")):
            principal = g.get("principal")
            buffer.add(AuditRecord(
                SECURITY_VIOLATIONS, _error_code(response) or str(status), "denied",
                actor_key_id=principal.key_id if principal else _claimed_key_id(),
                actor_role=principal.role if principal else None, resource=_route(), ip=request.remote_addr,
                details={"status": status, "path": request.path[:300]},
                tenant=principal.tenant if principal else None))
        return response


def _details(source: Any) -> dict[str, Any]:
    if not isinstance(source, dict):
        return {}
    return {name: source[name] for name in DETAIL_FIELDS if name in source and not isinstance(source[name], dict)}


def audited(action: str) -> Callable[[View], View]:
    """Record a configuration change made through this route: who, what, from where, and whether it
    worked (a refused change is recorded too, with its error code). Place it below `require`."""
    def decorate(view: View) -> View:
        @wraps(view)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            try:
                response = current_app.make_response(view(*args, **kwargs))
            except CortexError as exc:  # every error a client can cause, as the error handler answers it
                _record_change(action, kwargs, "failure", {"status": exc.status, "code": exc.code})
                raise
            except Exception:
                _record_change(action, kwargs, "failure", {"status": 500, "code": "internal_error"})
                raise
            answer = _details(response.get_json(silent=True)) if response.is_json else {}
            _record_change(action, kwargs, "success" if response.status_code < 400 else "failure",
                           {"status": response.status_code, **answer})
            return response

        setattr(recorded, AUDIT_MARK, action)
        return recorded  # type: ignore[return-value]

    return decorate


def _record_change(action: str, view_args: dict[str, Any], outcome: str, details: dict[str, Any]) -> None:
    buffer = audit_buffer()
    if buffer is None:
        return
    principal = g.get("principal")
    asked = _details(request.get_json(silent=True)) if request.is_json else {}
    resource = "/".join(str(value) for value in view_args.values()) or details.get("key_id") or asked.get("model")
    buffer.add(AuditRecord(CONFIGURATION_CHANGES, action, outcome,
                           actor_key_id=principal.key_id if principal else None,
                           actor_role=principal.role if principal else None, resource=resource,
                           ip=request.remote_addr, details={"request": asked, **details},
                           tenant=principal.tenant if principal else None))
