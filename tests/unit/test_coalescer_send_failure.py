"""A job gathered while its group's messages were in flight is sent later by the coalescer's own thread;
when that send is refused (the broker away), the request that stopped waiting for its reply still learns
it: the failure is kept on the job, and the job is never written as queued with no message behind it
(cortex_web/coalescer.py, cortex_web/predictions.py)."""
from __future__ import annotations

import pytest

from cortex_tasks.core.jobs.store import NewJob
from cortex_web import coalescer as coalescing
from cortex_web.coalescer import Coalescer, Group, PendingJob
from cortex_web.replies import ReplyListener, _Pending

GROUP = Group(tenant="default", task="sentiment", model="m", params_json="{}", priority=4, queue="nlp",
              task_name="cortex.predict.nlp")


def test_a_refused_later_send_is_kept_on_the_job_after_its_request_stopped_waiting(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise ConnectionRefusedError("the broker is away")

    monkeypatch.setattr(coalescing.celery_app, "send_task", refuse)
    listener = ReplyListener("redis://127.0.0.1:1/0")  # never connected here
    coalescer = Coalescer(listener, max_inflight=1)
    with coalescer._condition:
        in_flight = coalescer._track(GROUP)  # the group's budget is taken: the next job is gathered
    job = PendingJob("job-1", ["text"], NewJob(owner="key", kind="predict", task="sentiment", model="m",
                                               priority=4, total=1, tenant="default"))
    listener._pending[job.job_id] = _Pending()  # expected, then given up: the request answered at once
    coalescer.submit(GROUP, job)
    assert listener.wait(job.job_id, 0) is None and not job.sent.is_set()
    coalescer._message_done(in_flight)  # a reply comes back: the gathered job leaves, and is refused
    assert job.sent.wait(10)
    assert job.send_failure is not None and job.send_failure["status"] == "failed"
    assert job.send_failure["error"]["code"] == "unavailable"


@pytest.mark.parametrize("refused", [False, True])
def test_a_job_not_answered_in_time_gets_a_row_only_when_its_message_left(monkeypatch, refused):
    from cortex_web import predictions

    written = []
    monkeypatch.setattr(predictions, "create_jobs", written.extend)
    hurried = []
    monkeypatch.setattr(predictions, "coalescer", lambda: type("Held", (), {"hurry": hurried.append})())
    job = PendingJob("job-2", ["text"], NewJob(owner="key", kind="predict", task="sentiment", model="m",
                                               priority=4, total=1, tenant="default"))
    failure = {"status": "failed", "error": {"code": "unavailable", "details": {"dependency": "broker"}}}
    job.send_failure = failure if refused else None
    job.sent.set()
    assert predictions.left_for_polling(job) == (failure if refused else None)
    assert hurried == [job]  # its wait is over: sent now if it was still held back (Coalescer.hurry)
    assert written == ([] if refused else [(job.job_id, job.record)])
