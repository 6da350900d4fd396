"""Structured logs (core/observability/logs.py): every line parses as JSON with the same fields, the work's
job, task, model, tenant and trace are bound without being passed, inputs and outputs and keys stay out.
Across real gateway and worker processes: tests/integration/test_traces_and_logs.py."""
from __future__ import annotations

import io
import json
import logging
from datetime import datetime
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from cortex_tasks.core import settings as settings_module
from cortex_tasks.core.observability import celery_signals, logs
from cortex_tasks.core.settings import Settings
from cortex_tasks.core.tenancy import tenant_scope


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(log_format: str, write: Any) -> list[str]:
    stream = io.StringIO()
    logger = logging.getLogger(f"cortex.test.{log_format}")
    logger.handlers, logger.propagate, logger.level = [logs.handler(log_format, stream)], False, logging.DEBUG
    write(logger)
    return stream.getvalue().splitlines()


def _records(write: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines("json", write)]


def test_a_json_line_has_time_level_component_logger_and_the_formatted_message(monkeypatch):
    monkeypatch.setattr(logs, "_component", "worker-gpu")
    record, = _records(lambda log: log.info("loaded %s in %.1f s", "minilm", 1.25))
    assert list(record)[:5] == ["time", "level", "component", "logger", "message"]
    assert record["level"] == "INFO" and record["component"] == "worker-gpu"
    assert record["logger"] == "cortex.test.json"
    assert record["message"] == "loaded minilm in 1.2 s"  # %-style arguments, filled in when written
    assert record["time"].endswith("Z")
    assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
    assert not {"job_id", "trace_id", "tenant"} & set(record)  # only where they apply


def test_bound_fields_tenant_and_trace_reach_every_line_written_inside():
    context = SpanContext(0x1234, 0x99, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def write(log: logging.Logger) -> None:
        with logs.bound(job_id="job-1", task="cortex.inference.run_gpu_jobs", model="minilm", ignored=None), \
                tenant_scope("acme"), trace.use_span(NonRecordingSpan(context)):
            log.warning("slow call")
        log.warning("after")

    inside, after = _records(write)
    assert inside["job_id"] == "job-1" and inside["task"] == "cortex.inference.run_gpu_jobs"
    assert inside["model"] == "minilm" and inside["tenant"] == "acme" and "ignored" not in inside
    assert inside["trace_id"] == f"{0x1234:032x}" and inside["span_id"] == f"{0x99:016x}"
    assert not {"job_id", "tenant", "trace_id"} & set(after)


def test_a_traceback_stays_in_its_line():
    def write(log: logging.Logger) -> None:
        try:
            raise ValueError("broken")
        except ValueError:
            log.exception("call failed")

    record, = _records(write)
    assert record["message"] == "call failed" and "ValueError: broken" in record["exc_info"]


def test_celerys_task_succeeded_line_shows_the_size_of_the_return_value_not_the_value():
    secret_output = "the patient's diagnosis is confidential"

    def write(_log: logging.Logger) -> None:
        celery_trace = logging.getLogger(logs.CELERY_TRACE_LOGGER)
        celery_trace.handlers, celery_trace.propagate = [_log.handlers[0]], False
        celery_trace.setLevel(logging.INFO)  # as a worker run with -l INFO
        try:
            context = {"name": "cortex.vectors.search_text", "id": "t1", "runtime": 0.1,
                       "return_value": repr({"results": [secret_output]})}
            # As celery.app.trace.info writes it: the mapping is the arguments and an extra field.
            celery_trace.info("Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s", context,
                              extra={"data": context})
        finally:
            celery_trace.handlers, celery_trace.propagate = [], True
            celery_trace.setLevel(logging.NOTSET)

    record, = _records(write)
    assert secret_output not in json.dumps(record)
    assert record["message"].startswith("Task cortex.vectors.search_text[t1] succeeded in 0.1s: <str ")
    assert record["data"]["return_value"].startswith("<str ")


def test_celerys_pool_at_debug_shows_the_size_of_the_message_not_its_inputs():
    secret_input = "my bank account number is 12345"

    def write(_log: logging.Logger) -> None:
        pool = logging.getLogger(logs.CELERY_POOL_LOGGER)
        pool.handlers, pool.propagate, pool.level = [_log.handlers[0]], False, logging.DEBUG
        try:  # as celery.concurrency.base.BasePool.apply_async writes it
            pool.debug("TaskPool: Apply %s (args:%s kwargs:%s)", "<function trace_task>",
                       repr(("task", "t1", {}, f'{{"inputs": ["{secret_input}"]}}')), "{}")
        finally:
            pool.handlers, pool.propagate, pool.level = [], True, logging.NOTSET

    record, = _records(write)
    assert secret_input not in json.dumps(record)
    assert record["message"].startswith("TaskPool: Apply <function trace_task> (args:<str ")


def test_api_keys_in_a_message_are_cut_to_their_id():
    record, = _records(lambda log: log.info("client sent %s", "/predict?api_key=ctx_0123456789ab_s3cretvalue"))
    assert "s3cretvalue" not in record["message"] and "ctx_0123456789ab_" in record["message"]


def test_text_lines_for_a_terminal_carry_the_same_context():
    def write(log: logging.Logger) -> None:
        with logs.bound(job_id="job-1"):
            log.info("hello %s", "there")

    line, = _lines("text", write)
    assert line.endswith("cortex.test.text: hello there [job_id=job-1]")


def test_auto_is_text_on_a_terminal_and_json_elsewhere():
    assert logs.resolved_format("auto", Terminal()) == "text"
    assert logs.resolved_format("auto", io.StringIO()) == "json"
    assert logs.resolved_format("json", Terminal()) == "json"
    assert logs.resolved_format("text", io.StringIO()) == "text"


def test_the_settings_default_and_refusals(monkeypatch):
    monkeypatch.delenv("CORTEX_LOG_FORMAT", raising=False)
    monkeypatch.delenv("CORTEX_LOG_LEVEL", raising=False)
    assert (Settings().log_format, Settings().log_level) == ("auto", "INFO")
    monkeypatch.setenv("CORTEX_LOG_FORMAT", "JSON")
    monkeypatch.setenv("CORTEX_LOG_LEVEL", "debug")
    assert (Settings().log_format, Settings().log_level) == ("json", "DEBUG")
    monkeypatch.setenv("CORTEX_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="CORTEX_LOG_FORMAT"):
        Settings()


def test_configure_logging_writes_every_record_once_at_the_configured_level(monkeypatch):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logs._component)
    stream = io.StringIO()
    monkeypatch.setenv("CORTEX_LOG_FORMAT", "json")
    monkeypatch.setenv("CORTEX_LOG_LEVEL", "WARNING")
    monkeypatch.setattr(settings_module, "get_settings", Settings)  # read afresh, not the session's cached one
    try:
        assert logs.configure_logging("beat", stream=stream) == "json"
        logging.getLogger("cortex.test.configured").info("not shown")
        logging.getLogger("cortex.test.configured").warning("shown")
        assert logs.configure_logging("beat", "DEBUG", stream=stream) == "json"  # a command's --loglevel debug
        logging.getLogger("cortex.test.configured").debug("asked for")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logs._component = saved[2]
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(record["message"], record["component"]) for record in records] == [("shown", "beat"),
                                                                               ("asked for", "beat")]


def test_a_task_binds_the_ids_and_names_of_its_message_never_its_inputs():
    one = {"tenant": "acme", "task": "embed", "model": "minilm",
           "jobs": [{"job_id": "j1", "inputs": ["private text"]}]}
    assert celery_signals.job_fields(one) == {"job_id": "j1", "model": "minilm"}
    two = {**one, "jobs": [{"job_id": "j1", "inputs": ["a"]}, {"job_id": "j2", "inputs": ["b"]}]}
    assert celery_signals.job_fields(two) == {"job_ids": ["j1", "j2"], "model": "minilm"}
    assert celery_signals.job_fields({"job_id": "t1", "text": "private"}) == {"job_id": "t1"}
    assert celery_signals.job_fields(None) == {}


@pytest.mark.parametrize("argv, named", [
    (["celery", "-A", "cortex_tasks", "worker", "-l", "INFO"], True),
    (["celery", "worker", "--loglevel=debug"], True),
    (["celery", "worker", "-linfo"], True),
    (["celery", "worker", "--logfile=x.log"], False),
    (["celery", "-A", "cortex_tasks", "beat"], False),
])
def test_only_a_level_the_command_line_names_competes_with_the_setting(argv, named):
    assert celery_signals._names_a_level(argv) is named


def test_cortex_ups_supervisor_reports_a_restart_as_a_log_line(tmp_path, monkeypatch):
    """`cortex up`'s own lines (component `up`) are log records in the stack's format, not prints."""
    import sys

    from cortex_tasks.stack.supervisor import Supervisor

    monkeypatch.setattr(logs, "_component", "up")
    stream = io.StringIO()
    supervisor_log = logging.getLogger("cortex_tasks.stack.supervisor")
    monkeypatch.setattr(supervisor_log, "handlers", [logs.handler("json", stream)])
    monkeypatch.setattr(supervisor_log, "propagate", False)
    monkeypatch.setattr(supervisor_log, "level", logging.INFO)
    supervisor = Supervisor(tmp_path / "logs", {})
    managed = supervisor.add_and_start("quitter", [sys.executable, "-c", "raise SystemExit(3)"])
    managed.process.wait(30)
    supervisor.check_once()
    supervisor.stopping = True
    started, exited = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert started["message"].startswith("started quitter (pid ") and started["component"] == "up"
    assert exited["level"] == "WARNING" and exited["logger"] == "cortex_tasks.stack.supervisor"
    assert exited["message"].startswith("quitter exited with code 3; restarting in 1s")


def test_gunicorns_access_and_error_lines_are_the_gateways_json_lines(tmp_path, monkeypatch):
    import datetime as dates
    from types import SimpleNamespace

    from gunicorn.config import Config

    from gunicorn_conf import RedactingLogger

    monkeypatch.setattr(logs, "_component", logs._component)  # restored after the gateway's logger sets it
    config = Config()
    config.set("accesslog", str(tmp_path / "access.log"))
    config.set("errorlog", str(tmp_path / "error.log"))
    logger = RedactingLogger(config)
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": "/api/v1/predict?api_key=ctx_0123456789ab_S3cr3t",
               "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/api/v1/predict", "REMOTE_ADDR": "127.0.0.1",
               "QUERY_STRING": "api_key=ctx_0123456789ab_S3cr3t"}
    logger.access(SimpleNamespace(status="200 OK", headers=[], sent=17), SimpleNamespace(headers=[]), environ,
                  dates.timedelta(milliseconds=3))
    logger.error("Error handling request %s", "/api/v1/predict?token=S3cr3t")
    for handler in logger.access_log.handlers + logger.error_log.handlers:
        handler.flush()
    access, = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    error, = [json.loads(line) for line in (tmp_path / "error.log").read_text().splitlines()]
    assert (access["component"], access["logger"], error["logger"]) == ("gateway", "gunicorn.access", "gunicorn.error")
    assert '"POST /api/v1/predict?api_key=[redacted] HTTP/1.1" 200' in access["message"]
    assert error["message"] == "Error handling request /api/v1/predict?token=[redacted]"
    assert "S3cr3t" not in access["message"] + error["message"]
