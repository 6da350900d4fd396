"""A gateway whose reply channel was lost (Redis restarted) forgets the messages it counted in flight: their
replies will never come, and counting them held every new request of their groups until the in-flight
timeout (cortex_web/coalescer.py, cortex_web/replies.py)."""
from __future__ import annotations

from cortex_web.coalescer import Coalescer, Group
from cortex_web.replies import ReplyListener

GROUP = Group(tenant="default", task="sentiment", model="m", params_json="{}", priority=4, queue="nlp",
              task_name="cortex.predict.nlp")


def test_a_resubscribed_reply_channel_frees_the_in_flight_budget():
    listener = ReplyListener("redis://127.0.0.1:1/0")  # never connected here
    coalescer = Coalescer(listener, max_inflight=2)
    with coalescer._condition:
        sent = [coalescer._track(GROUP) for _ in range(2)]
    assert len(coalescer._inflight[GROUP]) == 2  # full: new jobs of the group would wait
    assert listener.on_resubscribed is not None
    listener.on_resubscribed()
    assert not coalescer._inflight[GROUP]
    # A late reply to a forgotten message changes nothing.
    coalescer._message_done(sent[0])
    assert not coalescer._inflight[GROUP]


def test_a_job_whose_wait_is_over_is_sent_past_the_in_flight_budget():
    from cortex_tasks.core.jobs.store import NewJob
    from cortex_web.coalescer import PendingJob

    coalescer = Coalescer(ReplyListener("redis://127.0.0.1:1/0"), max_inflight=1)
    sent: list[tuple[Group, list[str]]] = []
    coalescer._send = lambda group, jobs, message_id: sent.append((group, [job.job_id for job in jobs]))
    with coalescer._condition:
        coalescer._track(GROUP)  # the budget is full: new jobs of the group are held
    held = PendingJob("held", ["text"], NewJob(owner="o", kind="predict", task="sentiment", tenant="default"))
    coalescer.submit(GROUP, held)
    assert sent == [] and coalescer._pending[GROUP] == [held]
    coalescer.hurry(held)
    assert sent == [(GROUP, ["held"])] and coalescer._pending[GROUP] == []
    coalescer.hurry(held)  # already gone: nothing more is sent
    assert len(sent) == 1
