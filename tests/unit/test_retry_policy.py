"""The retry helpers jobs call: outside a Celery task (a trainer run in-process, a maintenance function
called by hand) nothing retries, so a job counts no retries and none are ever used up. And how long a
message is kept while PostgreSQL is away: the shipped values, which the integration test runs with."""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy.exc

from cortex_tasks.core.contracts.messages import JobRecord
from cortex_tasks.core.jobs.store import NewJob
from cortex_tasks.core.retry_policy import (
    DATABASE_AWAY_KEEP_SECONDS,
    DATABASE_AWAY_RETRY_SECONDS,
    current_retries,
    kept_long_enough,
    retries_exhausted,
    run_kept_while_database_away,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def test_outside_a_task_nothing_has_retried_and_nothing_is_exhausted():
    assert current_retries() == 0
    assert retries_exhausted() is False


def test_outside_a_task_a_database_error_is_raised_as_it_is():
    away = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    def body() -> None:
        raise away

    with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
        run_kept_while_database_away(body)
    assert raised.value is away
    assert run_kept_while_database_away(lambda: "ran") == "ran"


def test_a_message_is_kept_every_30_seconds_for_a_jobs_deadline():
    """The shipped values, as docs/reliability.md states them: kept for as long as a job's deadline (the
    default every prediction and every single job is given), so the sweep, not the message, settles a job
    whose database stayed away longer."""
    assert DATABASE_AWAY_RETRY_SECONDS == 30
    assert DATABASE_AWAY_KEEP_SECONDS == NewJob(owner="o", kind="k", task="t").deadline_seconds
    assert DATABASE_AWAY_KEEP_SECONDS == JobRecord.model_fields["deadline_seconds"].default
    text = " ".join(DOCS.read_text().split())
    assert f"every {DATABASE_AWAY_RETRY_SECONDS} s" in text
    assert "for up to an hour (a job's deadline" in text and DATABASE_AWAY_KEEP_SECONDS == 3600


def test_a_message_is_given_up_only_once_its_kept_retries_span_the_deadline():
    needed = DATABASE_AWAY_KEEP_SECONDS // DATABASE_AWAY_RETRY_SECONDS
    assert not kept_long_enough(3, 3)  # the task's own retries just used up: keeping starts
    assert not kept_long_enough(3 + needed - 1, 3)
    assert kept_long_enough(3 + needed, 3)
    assert kept_long_enough(5 + needed, 5) and not kept_long_enough(3 + needed, 5)
