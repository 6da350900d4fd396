"""Every Celery task name, written once: `cortex.<domain>.<verb_noun>`.

The names are the wire contract with queued messages and running workers (a renamed task strands what
is already queued under the old name), so they are spelled here and only imported elsewhere: the
`@app.task(name=...)` decorators, the routes, the beat schedule and every `send_task`.
"""
from __future__ import annotations

# Inference: one task per queue, so that routing follows the hardware a model needs.
RUN_GPU_JOBS = "cortex.inference.run_gpu_jobs"
RUN_NLP_JOBS = "cortex.inference.run_nlp_jobs"
STREAM_GENERATION = "cortex.inference.stream_generation"

BATCH_RUN_CHUNK = "cortex.batch.run_chunk"
BATCH_FINISH = "cortex.batch.finish_batch"

TRAIN_MODEL = "cortex.training.train_model"

VECTORS_UPSERT_ITEMS = "cortex.vectors.upsert_items"
VECTORS_SEARCH_TEXT = "cortex.vectors.search_text"
VECTORS_BUILD_INDEX = "cortex.vectors.build_index"

DOCUMENTS_INDEX = "cortex.documents.index_documents"
DOCUMENTS_ANSWER = "cortex.documents.answer_question"

CHAT_REPLY = "cortex.chat.reply"

REGISTRY_ACTIVATE_VERSION = "cortex.registry.activate_version"

SWEEP_STALE_JOBS = "cortex.maintenance.sweep_stale_jobs"
EXPIRE_JOB_RECORDS = "cortex.maintenance.expire_job_records"
PURGE_AUDIT_EVENTS = "cortex.maintenance.purge_audit_events"
EXPIRE_RESULTS = "cortex.maintenance.expire_results"
EXPIRE_MEDIA = "cortex.maintenance.expire_media"
ROLL_UP_METRICS = "cortex.maintenance.roll_up_metrics"
WARM_CACHE = "cortex.maintenance.warm_cache"
RETRAIN_DUE_MODELS = "cortex.maintenance.retrain_due_models"
PROMOTE_AGED_JOBS = "cortex.maintenance.promote_aged_jobs"

# Real-time streams: the stream worker consumes the Redis Streams itself (runtime/streams/consumer.py);
# its Celery queue carries the clean-up of deleted streams.
STREAMS_PURGE_STREAM = "cortex.streams.purge_stream"
# Alerts (core/alerting, runtime/alerting) and stream reports: on the alerts queue, apart from
# housekeeping, so an alert never waits behind an hour-long expiry sweep.
ALERTS_PROCESS_ALERT = "cortex.alerts.process_alert"
ALERTS_DELIVER_NOTIFICATION = "cortex.alerts.deliver_notification"
ALERTS_CLOSE_GROUP = "cortex.alerts.close_group"
ALERTS_CLOSE_DUE_GROUPS = "cortex.alerts.close_due_groups"
ALERTS_EVALUATE_CORTEX_RULES = "cortex.alerts.evaluate_cortex_rules"
REPORTS_WRITE_REPORT = "cortex.reports.write_report"
REPORTS_WRITE_PERIODIC_REPORTS = "cortex.reports.write_periodic_reports"

ALL_TASK_NAMES: tuple[str, ...] = (
    RUN_GPU_JOBS, RUN_NLP_JOBS, STREAM_GENERATION, BATCH_RUN_CHUNK, BATCH_FINISH, TRAIN_MODEL,
    VECTORS_UPSERT_ITEMS, VECTORS_SEARCH_TEXT, VECTORS_BUILD_INDEX, DOCUMENTS_INDEX, DOCUMENTS_ANSWER, CHAT_REPLY,
    REGISTRY_ACTIVATE_VERSION, SWEEP_STALE_JOBS, EXPIRE_JOB_RECORDS, PURGE_AUDIT_EVENTS, EXPIRE_RESULTS,
    EXPIRE_MEDIA, ROLL_UP_METRICS, WARM_CACHE, RETRAIN_DUE_MODELS, PROMOTE_AGED_JOBS,
    STREAMS_PURGE_STREAM,
    ALERTS_PROCESS_ALERT, ALERTS_DELIVER_NOTIFICATION, ALERTS_CLOSE_GROUP, ALERTS_CLOSE_DUE_GROUPS,
    ALERTS_EVALUATE_CORTEX_RULES, REPORTS_WRITE_REPORT, REPORTS_WRITE_PERIODIC_REPORTS,
)


def every_task_of(domain: str) -> str:
    """The route pattern matching every task of `domain` ("batch" -> "cortex.batch.*")."""
    pattern = f"cortex.{domain}.*"
    if not any(name.startswith(pattern[:-1]) for name in ALL_TASK_NAMES):
        raise ValueError(f"no task in domain {domain!r}")  # a typo would route nothing, silently
    return pattern

# Agents: a run calls an OpenAI-compatible chat model and Cortex's own tools.
AGENTS_RUN_AGENT = "cortex.agents.run_agent"
ALL_TASK_NAMES += (AGENTS_RUN_AGENT,)

# Retention of alerts, stream reports, windows and verdicts (runtime/alerting/retention.py), on maintenance.
EXPIRE_STREAM_HISTORY = "cortex.maintenance.expire_stream_history"
ALL_TASK_NAMES += (EXPIRE_STREAM_HISTORY,)
