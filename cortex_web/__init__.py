"""The Cortex gateway: `cortex_web.create_app()`. Validates, authorizes, enqueues, answers.

Never imports torch, transformers or spaCy (a test checks this in a fresh interpreter).
"""
from __future__ import annotations

import time

import redis
from flask import Flask, g, request
from werkzeug.wrappers import Response

from cortex_tasks import app as celery_app
from cortex_tasks.core import dependencies
from cortex_tasks.core.load_control.circuit import CircuitBreaker, CircuitPolicy
from cortex_tasks.core.load_control.shedding import LoadShedder, SheddingPolicy
from cortex_tasks.core.registry.references import plain
from cortex_tasks.core.settings import Settings, get_settings
from cortex_tasks.core.storage import db
from cortex_web import audit as audit_log
from cortex_web import auth, limits
from cortex_web.blueprints import (
    agents,
    alerts,
    audit,
    batch,
    chat,
    docs,
    documents,
    generated,
    health,
    jobs,
    keys,
    models,
    oauth,
    openai_compatible,
    predict,
    prompts,
    reports,
    stream,
    streams,
    training,
    usage,
    vectors,
)
from cortex_web.coalescer import Coalescer
from cortex_web.errors import register_error_handlers
from cortex_web.json_provider import OrjsonProvider
from cortex_web.metrics import HTTP_LATENCY, HTTP_REQUESTS, QueueCollector, register_shared_collector
from cortex_web.replies import ReplyListener
from cortex_web.request_body import apply_route_body_limit
from cortex_web.tracing import instrument as instrument_tracing

BLUEPRINTS = (health.bp, docs.bp, predict.bp, stream.bp, jobs.bp, keys.bp, vectors.bp, models.bp, batch.bp, training.bp,
              audit.bp, documents.bp, chat.bp, usage.bp, oauth.bp, prompts.bp, agents.bp,
              alerts.bp, reports.bp, streams.bp, generated.bp,
              openai_compatible.bp)  # /v1: OpenAI's API, for OpenAI's clients
PUBLIC_API_ENDPOINTS = {"docs.openapi_json", "docs.docs_page", "docs.docs_asset", "oauth.token", "oauth.jwks"}
_queue_collector_registered = False


def create_app() -> Flask:
    settings = get_settings()
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    _bound_dependency_waits(settings)
    client = dependencies.bounded_redis(settings.redis_url)
    app.extensions["cortex_redis"] = client
    listener = ReplyListener(settings.redis_url)
    app.extensions["cortex_replies"] = listener
    app.extensions["cortex_coalescer"] = Coalescer(
        listener, enabled=settings.batching_enabled, max_inflight=settings.coalesce_max_inflight_per_process,
        max_items_for=lambda model: settings.batching_for(plain(model)).max_batch_size,
        max_wait=settings.coalesce_max_wait_ms / 1000)
    app.extensions["cortex_shedder"] = LoadShedder(client, SheddingPolicy(
        max_depth=settings.shed_max_queue_depth, max_age_seconds=settings.shed_max_queue_age_seconds))
    app.extensions["cortex_circuits"] = CircuitBreaker(client, CircuitPolicy(
        error_threshold=settings.circuit_error_threshold, min_requests=settings.circuit_min_requests,
        reset_timeout_seconds=settings.circuit_reset_timeout_seconds))
    _register_queue_metrics(client)
    limits.init_app(app, client, settings)
    audit_log.init_app(app, client, settings)

    register_error_handlers(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)

    @app.before_request
    def _start_and_authenticate() -> None:
        g.started = time.perf_counter()
        apply_route_body_limit(app)
        if request.path.startswith("/api/v1/") and request.endpoint not in PUBLIC_API_ENDPOINTS:
            auth.authenticate()

    app.teardown_request(lambda _error: auth.leave_request_tenant())

    @app.after_request
    def _observe(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            HTTP_LATENCY.labels(route).observe(time.perf_counter() - g.started)
        return response

    instrument_tracing(app)  # when OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/logs-and-traces.md)
    return app


def _bound_dependency_waits(settings: Settings) -> None:
    """Every wait of a request on Redis or PostgreSQL is bounded, and a process that saw one of them fail
    answers 503 at once until a probe finds it back (cortex_tasks/core/dependencies.py)."""
    from cortex_tasks.core.storage.probes import database_probe

    db.use_answer_deadline(settings.database_timeout_seconds)
    dependencies.install_gate(dependencies.REDIS, dependencies.redis_probe(settings.redis_url),
                              settings.dependency_retry_seconds)
    dependencies.install_gate(dependencies.DATABASE, database_probe(),
                              settings.dependency_retry_seconds)
    # Publishing a job: each attempt waits at most half the Redis budget, and one retry (a connection
    # dropped by a Redis restart is then replaced) keeps the whole within it. The workers keep Celery's
    # defaults: their waits on the broker are not a client's.
    half = settings.redis_socket_timeout_seconds / 2
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options, "socket_timeout": half,
        "socket_connect_timeout": min(half, settings.redis_connect_timeout_seconds)}
    celery_app.conf.task_publish_retry_policy = {
        "max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


def _register_queue_metrics(client: redis.Redis) -> None:
    global _queue_collector_registered
    if not _queue_collector_registered:
        register_shared_collector(QueueCollector(client))
        _queue_collector_registered = True
