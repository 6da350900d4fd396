"""Task arguments as Flower and the logs show them (core/publishing.py): ids and sizes only."""
from __future__ import annotations

from cortex_tasks import app
from cortex_tasks.core.contracts.job_messages import ChatReplyMessage
from cortex_tasks.core.contracts.messages import JobRecord, PredictionJob, PredictionMessage
from cortex_tasks.core.publishing import ArgumentSummaryAMQP, shown_arguments

SECRET = "jane.roe@example.com said: my card is 4111 1111 1111 1111"


def test_the_app_publishes_through_the_summarising_amqp():
    assert isinstance(app.amqp, ArgumentSummaryAMQP)


def test_a_sender_s_own_repr_is_replaced_in_headers_and_sent_event():
    kwargs = ChatReplyMessage(job_id="j1", session_id="s1", owner="k", message=SECRET).to_kwargs()
    message = app.amqp.create_task_message("t1", "cortex.chat.reply", (), kwargs, kwargsrepr=repr(kwargs),
                                           create_sent_event=True)
    for shown in (message.headers["kwargsrepr"], message.sent_event["kwargs"]):
        assert SECRET not in shown and "'job_id': 'j1'" in shown and f"<str {len(SECRET)} chars>" in shown


def test_prediction_jobs_are_shown_by_id_and_input_count():
    jobs = [PredictionJob(job_id=f"job-{i}", inputs=[SECRET] * 2,
                          record=JobRecord(owner="k", kind="predict", task="ner", params={"system": SECRET}))
            for i in range(40)]
    kwargs = PredictionMessage(task="ner", model="m", params={"labels": [SECRET]}, jobs=jobs).to_kwargs()
    shown = shown_arguments(kwargs)
    assert SECRET not in shown and "{'job_id': 'job-0', 'inputs': 2}" in shown and "'model': 'm'" in shown
    assert "'<8 more>'" in shown  # a long list is counted, not shown whole


def test_positional_arguments_and_long_ids_are_sizes():
    assert shown_arguments((3, SECRET, {"a": SECRET}, [1, 2])) == (
        f"(3, '<str {len(SECRET)} chars>', '<dict 1 keys>', '<list 2 items>')")
    assert shown_arguments({"job_id": "x" * 500}) == "{'job_id': '<str 500 chars>'}"
