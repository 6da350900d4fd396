"""The Celery configuration as data: delivery guarantees, queues, routes, the schedule and the task names."""
from __future__ import annotations

import importlib

import celeryconfig
from beat_schedule import BEAT_SCHEDULE
from cortex_tasks import TASK_MODULES, app
from cortex_tasks.core.queues import QUEUE_NAMES


def registered_tasks() -> dict:
    for module in TASK_MODULES:
        importlib.import_module(module)
    return {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}


def test_visibility_timeout_is_longer_than_every_hard_time_limit():
    visibility = celeryconfig.broker_transport_options["visibility_timeout"]
    assert visibility == celeryconfig.result_backend_transport_options["visibility_timeout"]
    assert visibility == celeryconfig.visibility_timeout
    limits = {name: task.time_limit or celeryconfig.task_time_limit for name, task in registered_tasks().items()}
    assert limits, "no tasks registered"
    assert all(limit is not None for limit in limits.values())
    assert max(limits.values()) <= celeryconfig.LONGEST_HARD_TIME_LIMIT < visibility


def test_every_task_has_soft_and_hard_limits():
    for name, task in registered_tasks().items():
        soft, hard = task.soft_time_limit, task.time_limit
        assert soft and hard and soft < hard, name


def test_delivery_settings():
    assert celeryconfig.task_acks_late is True
    assert celeryconfig.task_reject_on_worker_lost is True
    assert celeryconfig.worker_prefetch_multiplier == 1
    assert celeryconfig.task_serializer == celeryconfig.result_serializer == "json"
    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.result_expires > 0
    options = celeryconfig.broker_transport_options
    assert options["queue_order_strategy"] == "priority"
    assert options["priority_steps"] == list(range(10))


def test_queues_declared_once_and_routes_point_at_them():
    assert [queue.name for queue in celeryconfig.task_queues] == list(QUEUE_NAMES)
    assert set(QUEUE_NAMES) == {"gpu", "nlp", "training", "batch", "maintenance", "streams", "alerts"}
    assert {route["queue"] for route in celeryconfig.task_routes.values()} <= set(QUEUE_NAMES)


def test_registered_task_names_are_pinned():
    assert sorted(registered_tasks()) == sorted([
        "cortex.inference.run_gpu_jobs",
        "cortex.inference.run_nlp_jobs",
        "cortex.inference.stream_generation",
        "cortex.maintenance.promote_aged_jobs",
        "cortex.batch.finish_batch",
        "cortex.batch.run_chunk",
        "cortex.maintenance.expire_job_records",
        "cortex.maintenance.expire_media",
        "cortex.maintenance.expire_results",
        "cortex.maintenance.purge_audit_events",
        "cortex.maintenance.retrain_due_models",
        "cortex.maintenance.roll_up_metrics",
        "cortex.maintenance.sweep_stale_jobs",
        "cortex.maintenance.warm_cache",
        "cortex.registry.activate_version",
        "cortex.vectors.build_index",
        "cortex.vectors.search_text",
        "cortex.training.train_model",
        "cortex.vectors.upsert_items",
        "cortex.documents.index_documents",
        "cortex.documents.answer_question",
        "cortex.chat.reply",
        "cortex.alerts.process_alert",
        "cortex.alerts.deliver_notification",
        "cortex.alerts.close_group",
        "cortex.alerts.close_due_groups",
        "cortex.alerts.evaluate_cortex_rules",
        "cortex.reports.write_report",
        "cortex.reports.write_periodic_reports",
        # real-time streams
        "cortex.streams.purge_stream",
        "cortex.agents.run_agent",
        "cortex.maintenance.expire_stream_history",
    ])


def test_beat_schedule_is_pinned():
    assert {name: (entry["task"], str(entry["schedule"])) for name, entry in BEAT_SCHEDULE.items()} == {
        "sweep-stale-jobs-every-5-minutes": ("cortex.maintenance.sweep_stale_jobs",
                                             "<crontab: */5 * * * * (m/h/dM/MY/d)>"),
        "expire-job-records-daily": ("cortex.maintenance.expire_job_records",
                                     "<crontab: 17 3 * * * (m/h/dM/MY/d)>"),
        "warm-cache-every-30-minutes": ("cortex.maintenance.warm_cache", "<crontab: */30 * * * * (m/h/dM/MY/d)>"),
        "retrain-due-models-every-minute": ("cortex.maintenance.retrain_due_models",
                                            "<crontab: * * * * * (m/h/dM/MY/d)>"),
        "expire-results-hourly": ("cortex.maintenance.expire_results", "<crontab: 41 * * * * (m/h/dM/MY/d)>"),
        "expire-media-hourly": ("cortex.maintenance.expire_media", "<crontab: 47 * * * * (m/h/dM/MY/d)>"),
        "purge-audit-events-daily": ("cortex.maintenance.purge_audit_events", "<crontab: 29 3 * * * (m/h/dM/MY/d)>"),
        "roll-up-metrics-every-5-minutes": ("cortex.maintenance.roll_up_metrics",
                                            "<crontab: */5 * * * * (m/h/dM/MY/d)>"),
        "close-due-alert-groups-every-minute": ("cortex.alerts.close_due_groups",
                                                "<crontab: * * * * * (m/h/dM/MY/d)>"),
        "evaluate-cortex-alert-rules-every-minute": ("cortex.alerts.evaluate_cortex_rules",
                                                     "<crontab: * * * * * (m/h/dM/MY/d)>"),
        "write-stream-reports-hourly": ("cortex.reports.write_periodic_reports", "<crontab: 7 * * * * (m/h/dM/MY/d)>"),
        "expire-stream-history-daily": ("cortex.maintenance.expire_stream_history",
                                        "<crontab: 53 3 * * * (m/h/dM/MY/d)>"),
    }
    # Housekeeping on maintenance; alerts and reports on their own queue, so they never wait behind it.
    assert all(entry.get("options", {}).get("queue") == ("alerts" if entry["task"].split(".")[1] in ("alerts", "reports")
                                                         else "maintenance") for entry in BEAT_SCHEDULE.values())
    assert all(entry["task"] in registered_tasks() for entry in BEAT_SCHEDULE.values())


def test_the_broker_connection_says_redis_so_flower_knows_it():
    from cortex_tasks.core.broker_transport import Transport

    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.as_uri().startswith("redis://")  # was "cortex_tasks.core.broker_transport:Transport://"


def test_the_broker_channel_keeps_one_redis_client():
    from cortex_tasks.core.broker_transport import Transport

    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.transport.create_channel(connection.connection)  # connects to no server yet
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        channel._disconnect_pools()  # as kombu does after a fork: a new pool, and a client on it
        with channel.conn_or_acquire() as after:
            assert after is not first and after.connection_pool is channel.pool
        channel.close()
